"""Optimistic concurrency for tickets (PRODUCT §6): every ticket answer carries `ETag: "<version>"`; a
mutation sent with `If-Match` runs only if the ticket is still at that version (else 412 precondition_failed).

The version counts the ticket's stored changes (state, line position, data, assignment). Computed fields of
the answer (position, estimate) move without it, so the ETag identifies the stored revision to write against.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

from fastapi import Header, Response

from virtualq.auth.principal import TenantContext
from virtualq.db import Connection
from virtualq.errors import PreconditionFailed, ValidationFailed, not_found

IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        max_length=1024,
        description='Apply only if the ticket\'s ETag is still this one (e.g. `"7"`); 412 otherwise.',
    ),
]
_ENTITY_TAG = re.compile(r'\s*(W/)?"[\x21\x23-\x7e]*"\s*')


def etag(version: int) -> str:
    return f'"{version}"'


def tag(response: Response, ticket: Any) -> Any:
    """Put the ticket's ETag on the answer and hand the ticket back."""
    response.headers["ETag"] = etag(ticket["version"])
    return ticket


def _matches(if_match: str, version: int) -> bool:
    if if_match.strip() == "*":
        return True
    candidates = if_match.split(",")
    if not all(_ENTITY_TAG.fullmatch(candidate) for candidate in candidates):
        raise ValidationFailed(
            'If-Match must be "*" or a list of entity tags such as "7"', {"field": "If-Match"}
        )
    # Strong comparison (RFC 9110 §13.1.1): a weak tag never matches.
    return etag(version) in (candidate.strip() for candidate in candidates)


async def check_if_match(
    conn: Connection, ctx: TenantContext, ticket_id: uuid.UUID, if_match: str | None
) -> None:
    """With If-Match, lock the ticket and compare versions; the lock holds until the change commits, so no
    other change can slip in between the check and the write."""
    if if_match is None:
        return
    version = await conn.fetchval(
        "SELECT version FROM tickets WHERE tenant_id = $1 AND id = $2 FOR UPDATE", ctx.tenant_id, ticket_id
    )
    if version is None:
        raise not_found("ticket")
    check_version(if_match, version)


def check_version(if_match: str | None, version: int) -> None:
    """412 precondition_failed unless If-Match is absent or names `version`."""
    if if_match is not None and not _matches(if_match, version):
        raise PreconditionFailed(
            "the ticket changed since it was read; read it again and retry", {"etag": etag(version)}
        )
