from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from virtualq.auth.principal import Role, TenantAnyRole, TenantStaff, stream_key
from virtualq.db import ReadConn, acquire, get_pool
from virtualq.events import repository
from virtualq.events.cursor import START, Cursor, format_cursor, parse
from virtualq.events.envelope import display_safe, envelope, sse_gap, sse_message
from virtualq.events.hub import EventHub, Subscriber
from virtualq.events.schemas import EventPage, EventTypeName
from virtualq.kit.routing import READ_ERRORS
from virtualq.kit.transport import end_on_stop

router = APIRouter(tags=["events"])
REPLAY_BATCH = 500


@router.get("/v1/events", response_model=EventPage, responses=READ_ERRORS)
async def list_events(
    ctx: TenantStaff,
    conn: ReadConn,
    after: Annotated[str | None, Query(description="An event id; events after it are returned.")] = None,
    type: Annotated[
        list[EventTypeName], Query(max_length=20, description="Repeatable: events of any of these types.")
    ] = [],  # noqa: B006
    queue_id: uuid.UUID | None = None,
    ticket_id: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    """Page through the tenant's event log in order. Keep the last `id` and pass it as `after` next time;
    the log never inserts an event before a cursor you have seen. Kept for the retention period (7 days):
    `gap` says when events after your `after` are gone (or the id is not from this log)."""
    given = parse(after)
    rows = await repository.read(
        conn,
        tenant_id=ctx.tenant_id,
        after=given or (0, 0),
        types=type,
        queue_id=queue_id,
        ticket_id=ticket_id,
        limit=limit,
    )
    # Asked after the read: a prune deletes its events and moves the mark in one statement, so one that
    # committed before the read shows in the mark now.
    gap = await repository.gap(conn, ctx.tenant_id, given) if given is not None else None
    if gap == "unknown_cursor":  # nothing to read after it: go on from the tenant's newest event
        newest = await repository.horizon(conn, ctx.tenant_id)
        return {"data": [], "next_cursor": format_cursor(newest) if newest != START else None, "gap": gap}
    events = [envelope(row) for row in rows]
    return {"data": events, "next_cursor": events[-1]["id"] if events else (after or None), "gap": gap}


@router.get(
    "/v1/events/stream",
    responses={**READ_ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "An SSE stream."}},
    response_class=StreamingResponse,
)
async def stream_events(
    request: Request,
    ctx: TenantAnyRole,
    after: Annotated[str | None, Query(description="Resume after this event id.")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", include_in_schema=False)] = None,
    last_event_id_query: Annotated[
        str | None,
        Query(
            alias="lastEventId",
            description="As `Last-Event-ID` (EventSource polyfills send it this way when they reconnect).",
        ),
    ] = None,
    type: Annotated[
        list[EventTypeName], Query(max_length=20, description="Repeatable: events of any of these types.")
    ] = [],  # noqa: B006
    queue_id: uuid.UUID | None = None,
    ticket_id: uuid.UUID | None = None,
) -> StreamingResponse:
    """Server-Sent Events: `id: <event id>`, `event: <type>`, `data: <envelope>`.

    A new connection receives events committed after it connected; with `Last-Event-ID` (browsers send it
    when they reconnect) or `after=`, everything after that event first — no gap, no duplicate. A comment
    line every 15 s keeps proxies from closing the connection. A client that falls 1,000 events behind is
    disconnected and resumes from its last id. Display-role keys receive codes, states and counters only. When
    events after the resumed id are gone (older than the retention) or the id is not from this log, a
    `stream.gap` message says so first: reload your state from the API.
    """
    if last_event_id:
        resume = parse(last_event_id, "Last-Event-ID")
    elif last_event_id_query:
        resume = parse(last_event_id_query, "lastEventId")
    else:
        resume = parse(after)
    hub: EventHub = request.app.state.event_hub
    asked, notice = resume, None
    if resume is not None:  # an id from another database: this stream starts from now, as a new one
        async with acquire(get_pool(request), transaction=False) as conn:
            if await repository.gap(conn, ctx.tenant_id, resume) == "unknown_cursor":
                resume = None
    subscriber = hub.subscribe(
        ctx.tenant_id,
        display=ctx.principal.role is Role.DISPLAY,
        queue_id=queue_id,
        ticket_id=ticket_id,
        types=frozenset(type),
        after=resume,
        key=stream_key(request),
    )
    end_on_stop(request.scope, lambda: hub.end(subscriber))
    if asked is not None and resume is None:
        notice = sse_gap("unknown_cursor", asked, subscriber.start)
    return StreamingResponse(
        _stream(request, hub, subscriber, resume, notice),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(
    request: Request, hub: EventHub, subscriber: Subscriber, resume: Cursor | None, notice: bytes | None
) -> AsyncIterator[bytes]:
    try:
        yield b": connected\n\n"
        if notice is not None:
            yield notice
        if resume is not None and resume < subscriber.start:
            async for message in _replay(request, subscriber, resume):
                yield message
        async for message in hub.messages(subscriber):
            yield message
    finally:
        hub.unsubscribe(subscriber)  # also when the client leaves during the replay


async def _replay(request: Request, subscriber: Subscriber, resume: Cursor) -> AsyncIterator[bytes]:
    """The events between the client's cursor and the moment it subscribed, from the log; first, a notice
    when some of them were pruned (asked after the first read, as list_events does)."""
    position = resume
    while not subscriber.dropped:  # ended (the server is stopping) or fallen behind: the client resumes
        async with acquire(get_pool(request), transaction=False) as conn:
            rows = await repository.read(
                conn,
                tenant_id=subscriber.tenant_id,
                after=position,
                until=subscriber.start,
                types=sorted(subscriber.types),
                queue_id=subscriber.queue_id,
                ticket_id=subscriber.ticket_id,
                limit=REPLAY_BATCH,
            )
            expired = (
                position == resume and await repository.gap(conn, subscriber.tenant_id, resume) == "expired"
            )
        if expired:  # sent with the connection back in the pool: a client leaving here cannot hold it
            yield sse_gap("expired", resume, None)
        for row in rows:
            if subscriber.dropped:
                return
            event = envelope(row)
            yield sse_message(display_safe(event) if subscriber.display else event)
        if len(rows) < REPLAY_BATCH:
            return
        position = (rows[-1]["tx"], rows[-1]["id"])
