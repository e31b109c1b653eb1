"""The event envelope (PRODUCT §5) and its display-safe form."""

from __future__ import annotations

from typing import Any

import orjson

from virtualq.db import Record
from virtualq.events.cursor import Cursor, format_cursor

# What a display-role key may see of an event's data: codes, states and positions, nothing about a person.
DISPLAY_SAFE_DATA = frozenset(
    {
        "display_code",
        "number",
        "current_state",
        "state_category",
        "previous_state",
        "transition",
        "type_definition_id",
        "version",
        "position",
        "previous_position",
        "queue_id",
        "previous_queue_id",
        "outcome",
        "max_wait_minutes",
        "waiting_minutes",
        "counter",
    }
)


def cursor_of(row: Record) -> Cursor:
    return (row["tx"], row["id"])


def envelope(row: Record) -> dict[str, Any]:
    return {
        "id": format_cursor(cursor_of(row)),
        "type": row["type"],
        "tenant_id": str(row["tenant_id"]),
        "queue_id": _text(row["queue_id"]),
        "ticket_id": _text(row["ticket_id"]),
        "occurred_at": row["occurred_at"],
        "data": row["data"],
    }


def concerns_queue(event: dict[str, Any], queue_id: str) -> bool:
    """Whether `event` belongs to the queue: it is the event's queue, or the queue a forwarded ticket left
    (a forward is filed under the queue the ticket joined; the one it left hears of it too)."""
    if event["queue_id"] == queue_id:
        return True
    return bool(event["type"] == "ticket.forwarded" and event["data"].get("previous_queue_id") == queue_id)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def display_safe(event: dict[str, Any]) -> dict[str, Any]:
    data = {key: value for key, value in event["data"].items() if key in DISPLAY_SAFE_DATA}
    return {**event, "data": data}


def sse_message(event: dict[str, Any]) -> bytes:
    """One Server-Sent Events message: id, event type, and the envelope as JSON on one line."""
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        event["id"].encode(),
        event["type"].encode(),
        orjson.dumps(event, option=orjson.OPT_UTC_Z),  # times as every other answer writes them
    )


def sse_gap(reason: str, after: Cursor, resume: Cursor | None) -> bytes:
    """The stream's notice that events after the client's cursor can no longer be sent (`reason`: "expired"
    or "unknown_cursor"; docs/events.md "Gaps"). With `resume`, it also moves the client's last event id
    there (an unknown cursor is replaced by a position of this log)."""
    body = orjson.dumps({"type": "stream.gap", "reason": reason, "after": format_cursor(after)})
    head = b"id: %s\n" % format_cursor(resume).encode() if resume is not None else b""
    return head + b"event: stream.gap\ndata: %s\n\n" % body
