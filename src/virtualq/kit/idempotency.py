"""Idempotency keys (PRODUCT §6): a POST with `Idempotency-Key` runs once; retries get the first answer.

The key belongs to the credential that sent it (a digest of the API key, the same digest `api_keys` stores),
so two callers never share keys, and a revoked key cannot replay anything. The flow:

1. Claim (owner, key) with an INSERT; the request's fingerprint (method, path, query, tenant, body) is kept.
2. The request runs; its own transaction marks the claim `committed` (db._write_transaction), so a crash after
   the commit can never lead to the work being done twice.
3. The answer is stored (2xx, or anything once the work committed); on another failure the claim is dropped
   so the request can be retried.

Concurrent retries of the same key wait for the first one and answer with its stored response. A retry with
a different body is 409 `idempotency_conflict`. Keys are kept 24 hours.

A self-join (`POST /v1/public/join/{token}`) has no API key: its keys belong to the link, and must be at
least 32 characters, since everyone at the door shares the link (a random key cannot be hit by someone else).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from typing import Any

import asyncpg
import orjson
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from virtualq.auth import keys
from virtualq.auth.principal import authenticate, presented_key
from virtualq.db import CONNECTION_ERRORS, acquire
from virtualq.errors import AppError, Unauthorized, Unavailable
from virtualq.kit.exception_handlers import handler_for
from virtualq.kit.middleware import header, replay_body, send_error
from virtualq.logging import get_logger

HEADER = b"idempotency-key"
KEEP = "24 hours"
LEASE_SECONDS = 60  # longer than any request may run (DB_COMMAND_TIMEOUT_SECONDS is 30 by default)
WAIT_SECONDS = 35.0
POLL_SECONDS = 0.02
STORED_HEADERS = (b"content-type", b"location", b"etag")
DATABASE_DOWN: tuple[type[Exception], ...] = (
    Unavailable,
    asyncpg.PostgresConnectionError,
    *CONNECTION_ERRORS,
)
log = get_logger("virtualq.idempotency")
_VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")

_CLAIM = f"""
INSERT INTO idempotency_keys (owner, key, fingerprint, lease_until, expires_at)
VALUES ($1, $2, $3, now() + interval '{LEASE_SECONDS} seconds', now() + interval '{KEEP}')
ON CONFLICT (owner, key) DO UPDATE
   SET fingerprint = EXCLUDED.fingerprint, state = 'running', lease_until = EXCLUDED.lease_until,
       response_status = NULL, response_headers = NULL, response_body = NULL,
       created_at = now(), expires_at = EXCLUDED.expires_at
 -- An expired key is free again; so is one whose request died before its work committed.
 WHERE idempotency_keys.expires_at < now()
    OR (idempotency_keys.state = 'running' AND idempotency_keys.lease_until < now())
RETURNING true
"""

_READ = """
SELECT fingerprint, state, lease_until < now() AS lapsed, response_status, response_headers, response_body,
       EXISTS (SELECT 1 FROM api_keys WHERE key_hash = $1 AND revoked_at IS NOT NULL) AS revoked
  FROM idempotency_keys
 WHERE owner = $1 AND key = $2 AND expires_at >= now()
"""


# Keyless POSTs whose link is the credential (web/join.py); their keys must be long enough not to collide.
PUBLIC_LINKS = "/v1/public/join/"
PUBLIC_KEY_MIN = 32


def _credential(scope: Scope) -> str | None:
    path: str = scope["path"]
    if path.startswith(PUBLIC_LINKS):
        return path  # the link: everyone using it shares its keys, so they must be random
    try:
        return presented_key(Headers(scope=scope))
    except Unauthorized:
        return None  # a malformed Authorization header: the request runs and is refused with 401


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        key = header(scope, HEADER)
        credential = None if key is None else _credential(scope)
        if key is None or credential is None:
            # No key or no credential: the request runs as usual (refused with 401 if unauthenticated).
            await self.app(scope, receive, send)
            return
        public = scope["path"].startswith(PUBLIC_LINKS)
        if not _VALID_KEY.fullmatch(key) or (public and len(key) < PUBLIC_KEY_MIN):
            await _send_error(
                scope,
                send,
                400,
                "validation_error",
                f"Idempotency-Key must be {PUBLIC_KEY_MIN} to 255 visible ASCII characters on a public link "
                "(a random UUID will do)"
                if public
                else "Idempotency-Key must be 1 to 255 visible ASCII characters",
                {"field": "Idempotency-Key"},
            )
            return
        try:
            body = await _read_body(receive)
        except StarletteHTTPException as exc:  # over the size limit: the outer middleware answers 413
            await _send_error(scope, send, exc.status_code, None, None, None)
            return

        owner = keys.hash_key(credential)
        tenant = (header(scope, b"x-tenant-id") or "").encode("latin-1")
        fingerprint = hashlib.sha256(
            b"\0".join((scope["path"].encode(), scope["query_string"], tenant, _canonical(body)))
        ).digest()
        pool = scope["app"].state.pool
        try:
            await self._run(scope, send, pool, owner, key, fingerprint, body)
        except DATABASE_DOWN:
            await _send_error(
                scope, send, 503, "unavailable", "The database is unavailable; retry shortly.", {}
            )

    async def _run(
        self, scope: Scope, send: Send, pool: Any, owner: bytes, key: str, fingerprint: bytes, body: bytes
    ) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            async with acquire(pool, transaction=False, unscoped=True) as conn:
                claimed = await conn.fetchval(_CLAIM, owner, key, fingerprint)
                row = None if claimed else await conn.fetchrow(_READ, owner, key)
            if claimed:
                await self._execute(scope, send, pool, owner, key, body)
                return
            if row is None:
                continue  # the holder gave its claim up (or it expired) just now: claim again
            if row["revoked"]:
                # Nothing is replayed to a revoked key: the request runs and is refused (401) as usual.
                await self.app(scope, replay_body(body), send)
                return
            late = time.monotonic() > deadline
            settled = row["state"] == "completed" or (row["state"] == "committed" and row["lapsed"])
            if not settled and not late:
                # The first request is still running: wait for its answer, whatever this one asks. One with
                # another body waits too: the first may yet fail and free the key (its refusal reaches the
                # client a moment before the key is freed, and the corrected retry must not hear a 409).
                await asyncio.sleep(POLL_SECONDS)
                continue
            # The answer comes from the store, or is a 409 about the key: the caller is authenticated first.
            if not await _admitted(scope, send):
                return
            if row["fingerprint"] != fingerprint:
                await _send_error(
                    scope,
                    send,
                    409,
                    "idempotency_conflict",
                    "this Idempotency-Key was used for a different request",
                    {"field": "Idempotency-Key"},
                )
                return
            if row["state"] == "completed":
                await _replay(send, row)
                return
            if row["state"] == "committed" and row["lapsed"]:
                await _send_error(
                    scope,
                    send,
                    409,
                    "idempotency_conflict",
                    "the request with this Idempotency-Key was carried out, but its answer was lost; "
                    "look the result up instead of retrying",
                    {"field": "Idempotency-Key"},
                )
                return
            await _send_error(
                scope,
                send,
                409,
                "idempotency_conflict",
                "a request with this Idempotency-Key is still in progress; retry later",
                {"field": "Idempotency-Key"},
            )
            return

    async def _execute(
        self, scope: Scope, send: Send, pool: Any, owner: bytes, key: str, body: bytes
    ) -> None:
        scope.setdefault("state", {})["idempotency"] = (owner, key)
        status = 500
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay_body(body), capture)
        finally:
            body = b"".join(chunks)
            redact = scope["state"].get("idempotency_redact")
            if redact is not None and 200 <= status < 300:
                body = _redacted(body, redact)
            try:
                await _settle(pool, owner, key, status, headers, body)
            except DATABASE_DOWN as exc:
                # The claim stays 'running' (or 'committed'); its lease decides what a retry may do.
                log.warning("could not record the answer of an idempotent request", error=type(exc).__name__)


REDACTED = (
    "(shown only in the first response; if it was lost, replace it: revoke the key and create another, or "
    "rotate the webhook's secret with POST /v1/webhooks/{id}/rotate-secret)"
)


def _redacted(body: bytes, field: str) -> bytes:
    """A secret shown once is not kept: the stored answer names the field without its value."""
    document = orjson.loads(body)
    document[field] = REDACTED
    return orjson.dumps(document)


async def _settle(
    pool: Any, owner: bytes, key: str, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    async with acquire(pool, transaction=False, unscoped=True) as conn:
        if 200 <= status < 300:
            await _store(conn, owner, key, status, headers, body)
            return
        # Keep another answer only if the work committed (state 'committed'); otherwise free the key.
        freed = await conn.fetchval(
            "DELETE FROM idempotency_keys WHERE owner = $1 AND key = $2 AND state = 'running' RETURNING true",
            owner,
            key,
        )
        if not freed:
            await _store(conn, owner, key, status, headers, body)


async def _store(
    conn: Any, owner: bytes, key: str, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    kept = {name.decode(): value.decode("latin-1") for name, value in headers if name in STORED_HEADERS}
    await conn.execute(
        """UPDATE idempotency_keys
              SET state = 'completed', response_status = $3, response_headers = $4, response_body = $5
            WHERE owner = $1 AND key = $2""",
        owner,
        key,
        status,
        kept,
        body,
    )


async def _admitted(scope: Scope, send: Send) -> bool:
    """Whether the caller may have an answer from the store (a replay, or a 409 about the key): its key is
    authenticated as the request itself would be, so the answer costs a rate-limit token and carries the
    X-RateLimit-* headers like any other (PRODUCT §6); otherwise the refusal (401, 403, 429) is sent."""
    request = Request(scope)
    try:
        if scope["path"].startswith(PUBLIC_LINKS):
            from virtualq.web.join import admit_replay  # the web layer imports this module's app

            # No key: the link is the permission. One replaced or switched off since answers nothing any
            # more, its stored answers included; an answer costs a token of the join's bucket.
            await admit_replay(request, scope["path"].removeprefix(PUBLIC_LINKS))
        else:
            await authenticate(request)
    except AppError as exc:
        answer = handler_for(scope["app"].exception_handlers, exc)
        if answer is None:  # pragma: no cover - every AppError has a handler (kit/exception_handlers.py)
            raise
        await (await answer(request, exc))(scope, _no_body, send)
        return False
    return True


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _replay(send: Send, row: Any) -> None:
    body = bytes(row["response_body"] or b"")
    headers = [
        (name.encode(), value.encode("latin-1")) for name, value in (row["response_headers"] or {}).items()
    ]
    headers += [(b"content-length", str(len(body)).encode()), (b"idempotent-replayed", b"true")]
    await send({"type": "http.response.start", "status": row["response_status"], "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)
        elif message["type"] == "http.disconnect":
            return b"".join(chunks)


async def _send_error(
    scope: Scope,
    send: Send,
    status: int,
    code: str | None,
    message: str | None,
    details: dict[str, Any] | None,
) -> None:
    await send_error(send, status, scope.get("state", {}).get("request_id"), code, message, details)


def _canonical(body: bytes) -> bytes:
    """A JSON body as its meaning: keys sorted, no spacing, so that a retry serialised another way (a client
    library's key order, pretty-printed) is the same request. What does not parse is compared as sent."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return body
    # ensure_ascii: a lone surrogate escape ("\\ud800") is valid JSON but no UTF-8 text; kept as an escape.
    return json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()
