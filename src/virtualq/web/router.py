"""Pages, the customer's ticket API (token-protected, no API key), and static assets."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]  # no type information upstream

from virtualq.auth.principal import act_by_link
from virtualq.db import SystemReadConn, acquire, get_pool, writing_statement
from virtualq.errors import NotFound, not_found
from virtualq.events.envelope import concerns_queue
from virtualq.events.hub import EventHub
from virtualq.fsm import Machine
from virtualq.kit.routing import error_responses
from virtualq.kit.transport import end_on_stop
from virtualq.queues.estimates import Estimator
from virtualq.tickets import service
from virtualq.type_definitions.compiled import cached

PAGES = Path(__file__).parent / "pages"
STATIC = Path(__file__).parent / "static"
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the ticket token and keys never leak through Referer
    "X-Content-Type-Options": "nosniff",
    # Content-Security-Policy: the middleware's, on every HTML answer (kit/middleware.PAGE_POLICY).
}

pages = APIRouter(include_in_schema=False)
public = APIRouter(tags=["customer"])

Token = Annotated[
    str | None, Query(max_length=128, description="The token from the ticket's customer_page link.")
]
TokenHeader = Annotated[str | None, Header(alias="X-Ticket-Token", max_length=128, include_in_schema=False)]


def _page(name: str) -> FileResponse:
    return FileResponse(PAGES / name, media_type="text/html", headers=PAGE_HEADERS)


@pages.get("/display/queues/{queue_id}")
async def display_page(queue_id: uuid.UUID) -> FileResponse:
    return _page("display.html")


@pages.get("/console/queues/{queue_id}")
async def console_page(queue_id: uuid.UUID) -> FileResponse:
    return _page("console.html")


@pages.get("/t/{ticket_id}")
async def ticket_page(ticket_id: str) -> FileResponse:
    # Any id: a link cut short in a text message gets the page, which says the link is not valid, rather
    # than a JSON error.
    return _page("ticket.html")


# Swagger UI's files come from a package, not a CDN: /docs works where the browser has no internet.
SWAGGER_UI = Path(str(swagger_ui_path))
SWAGGER_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}


@pages.get("/docs")
async def api_docs() -> FileResponse:
    return _page("docs.html")


@pages.get("/docs/{name}")
async def api_docs_asset(name: str) -> FileResponse:
    media = SWAGGER_ASSETS.get(name)
    if media is None:
        raise not_found("file")
    return FileResponse(
        SWAGGER_UI / name,
        media_type=media,
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


@pages.get("/static/{name}")
async def static_file(name: str) -> FileResponse:
    path = STATIC / name
    try:
        found = "/" not in name and not name.startswith(".") and path.is_file()
    except OSError:  # a name too long for the file system, say: no such file either
        found = False
    if not found:
        raise not_found("file")
    media = {"js": "text/javascript", "css": "text/css"}.get(
        name.rsplit(".", 1)[-1], "application/octet-stream"
    )
    return FileResponse(
        path, media_type=media, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    )


class PublicTicket(BaseModel):
    id: uuid.UUID
    display_code: str
    queue_id: uuid.UUID
    queue_name: str
    current_state: str
    state_category: str
    position: int | None = Field(description="1 = next; null once called.")
    counter: str | None = Field(description="Where to go once called (a desk, a window); null until then.")
    estimated_wait_minutes: int | None = Field(description="Null when the queue hides wait times.")
    show_wait_time: bool
    can_leave: bool = Field(
        description="The customer may leave the line themselves (`POST .../leave`): the ticket waits and its "
        "type has a way to a cancelled state."
    )
    updated_at: Any


PUBLIC_SQL = """
SELECT t.id, t.tenant_id, t.queue_id, t.type_definition_id, t.display_code, t.current_state, t.state_category,
       t.estimated_wait_minutes, t.counter, t.public_token, t.updated_at, q.name AS queue_name,
       q.show_wait_time, q.wait_estimation_method, q.manual_wait_minutes, q.id AS q_id,
       te.account_id, te.is_active AND a.is_active AS tenant_active, td.version AS type_version,
       td.fsm_schema,
       CASE WHEN t.state_category = 'waiting' THEN
         tickets_waiting_ahead(t.tenant_id, t.queue_id, t.sort_key) + 1 END AS position
  FROM tickets t JOIN queues q ON q.tenant_id = t.tenant_id AND q.id = t.queue_id
  JOIN tenants te ON te.id = t.tenant_id JOIN accounts a ON a.id = te.account_id
  JOIN type_definitions td ON td.id = t.type_definition_id
 WHERE t.id = $1
"""


async def _ticket_by_token(conn: Any, ticket_id: uuid.UUID, token: str | None) -> Any:
    row = await conn.fetchrow(PUBLIC_SQL, ticket_id)
    # The same answer for a wrong token as for no ticket: nothing to probe.
    if row is None or not token or not hmac.compare_digest(row["public_token"].encode(), token.encode()):
        raise NotFound(
            "no ticket matches this id and token (the token is in the ticket's customer_page link)"
        )
    return row


@public.get(
    "/v1/public/tickets/{ticket_id}", response_model=PublicTicket, responses=error_responses(400, 404)
)
async def public_ticket(
    ticket_id: uuid.UUID, conn: SystemReadConn, token: Token = None, x_ticket_token: TokenHeader = None
) -> Any:
    """A customer's own ticket, by the token in its link (no API key): code, state, place, estimate."""
    return await _public_view(conn, await _ticket_by_token(conn, ticket_id, x_ticket_token or token))


@public.post(
    "/v1/public/tickets/{ticket_id}/leave",
    response_model=PublicTicket,
    responses=error_responses(400, 404, 409),
)
async def leave_line(
    ticket_id: uuid.UUID, request: Request, token: Token = None, x_ticket_token: TokenHeader = None
) -> Any:
    """The customer leaves the line from their own page (no API key: the token in its link). Applies the
    type's cancel transition (`ticket.cancelled`, noted in the history) while the ticket is waiting; 409
    once it has been called or finished, or when its type has no way to a cancelled state."""
    pool = get_pool(request)
    async with acquire(pool, transaction=False, system=True) as conn:
        row = await _ticket_by_token(conn, ticket_id, x_ticket_token or token)
    if not row["tenant_active"]:  # a deactivated business changes nothing (as its join links are gone)
        raise NotFound(
            "no ticket matches this id and token (the token is in the ticket's customer_page link)"
        )
    ctx = act_by_link(request, row["tenant_id"], row["account_id"])
    async with writing_statement(request) as conn:
        await service.leave_line(conn, ctx, row["id"])
    async with acquire(pool, transaction=False, system=True) as conn:
        return await _public_view(conn, await _ticket_by_token(conn, ticket_id, x_ticket_token or token))


async def _public_view(conn: Any, row: Any) -> dict[str, Any]:
    estimator = Estimator(conn, row["tenant_id"])
    estimator.remember_queue(
        {
            "id": row["q_id"],
            "wait_estimation_method": row["wait_estimation_method"],
            "manual_wait_minutes": row["manual_wait_minutes"],
            "show_wait_time": row["show_wait_time"],
        }
    )
    (live,) = await estimator.annotate([row])
    return {
        **{key: live[key] for key in ("id", "display_code", "queue_id", "queue_name", "current_state")},
        "state_category": live["state_category"],
        "position": live["position"],
        "counter": row["counter"],
        "estimated_wait_minutes": live["estimated_wait_minutes"] if row["show_wait_time"] else None,
        "show_wait_time": row["show_wait_time"],
        "can_leave": _can_leave(row),
        "updated_at": live["updated_at"],
    }


def _can_leave(row: Any) -> bool:
    if row["state_category"] != "waiting" or not row["tenant_active"]:
        return False
    found = cached(row["type_definition_id"], row["type_version"])
    if found is not None:
        machine = found.machine
    else:  # not into the shared cache: that one holds the type's custom-data validator too
        machine = Machine.from_schema(row["fsm_schema"]) if row["fsm_schema"] is not None else None
    return machine is not None and machine.cancel_transition(row["current_state"]) is not None


@public.get(
    "/v1/public/tickets/{ticket_id}/stream",
    response_class=StreamingResponse,
    responses={**error_responses(400, 404), 200: {"content": {"text/event-stream": {}}}},
)
async def public_ticket_stream(
    ticket_id: uuid.UUID, request: Request, token: Token = None, x_ticket_token: TokenHeader = None
) -> StreamingResponse:
    """`event: changed` whenever something that can move this ticket happens (its own changes, or any
    change in its queue): the page then reads `/v1/public/tickets/{id}` again; `event: recalled` when staff
    call this ticket again (`POST /v1/tickets/{id}/recall`). Nothing about other tickets is sent."""
    async with acquire(get_pool(request), transaction=False, system=True) as conn:
        row = await _ticket_by_token(conn, ticket_id, x_ticket_token or token)
    hub: EventHub = request.app.state.event_hub
    ticket, queue = str(row["id"]), str(row["queue_id"])
    subscriber = hub.subscribe(
        row["tenant_id"],
        display=True,
        ticket_id=row["id"],  # its own recall is told as `event: recalled`
        match=lambda event: event["ticket_id"] == ticket or concerns_queue(event, queue),
        ping_only=True,
    )
    end_on_stop(request.scope, lambda: hub.end(subscriber))

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield b": connected\n\n"
            async for message in hub.messages(subscriber):
                yield message
        finally:
            hub.unsubscribe(subscriber)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
