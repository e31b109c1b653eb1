"""Route conventions: the documented error responses and query-filter dependencies."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query
from pydantic import BaseModel

from virtualq.kit.schemas import CommonFilters, Instant


class ErrorBody(BaseModel):
    error: str
    message: str
    details: dict[str, Any]
    request_id: str | None


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Malformed request, schema violation or missing tenant (validation_error).",
        401: "Missing, unknown or revoked API key (unauthorized).",
        403: "The key's role or scope does not allow this (forbidden).",
        404: "No such resource in the caller's scope (not_found).",
        409: "Conflicts with existing data (conflict).",
        412: "If-Match names another version of the ticket (precondition_failed); details.etag is current.",
        413: "Request body too large (payload_too_large).",
    }
    return {status: {"model": ErrorBody, "description": descriptions[status]} for status in statuses}


READ_ERRORS = error_responses(400, 401, 403, 404)
WRITE_ERRORS = error_responses(400, 401, 403, 404, 409, 413)


async def _common_filters(
    is_active: Annotated[bool | None, Query(description="Only active (true) or deactivated (false).")] = None,
    created_after: Annotated[Instant | None, Query(description="RFC 3339 timestamp, exclusive.")] = None,
    created_before: Annotated[Instant | None, Query(description="RFC 3339 timestamp, exclusive.")] = None,
) -> CommonFilters:
    return CommonFilters(is_active=is_active, created_after=created_after, created_before=created_before)


CommonFilterQuery = Annotated[CommonFilters, Depends(_common_filters)]
