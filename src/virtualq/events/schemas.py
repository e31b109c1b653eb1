from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field

from virtualq.kit.schemas import OutputModel

# Every type of event the log holds (PRODUCT §5).
EventTypeName = Literal[
    "ticket.created",
    "ticket.state_changed",
    "ticket.assigned",
    "ticket.unassigned",
    "ticket.forwarded",
    "ticket.reordered",
    "ticket.updated",
    "ticket.completed",
    "ticket.cancelled",
    "ticket.expired",
    "ticket.wait_exceeded",
    "ticket.recalled",
    "item.created",
    "item.state_changed",
    "item.deleted",
    "queue.enabled",
    "queue.disabled",
    "queue.updated",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventTypeName)


class Event(OutputModel):
    id: str = Field(
        description="Ordered cursor: pass it back as `after` or `Last-Event-ID`.", examples=["812-33"]
    )
    type: str = Field(examples=["ticket.state_changed"])
    tenant_id: uuid.UUID
    queue_id: uuid.UUID | None
    ticket_id: uuid.UUID | None
    occurred_at: datetime
    data: dict[str, Any]


class EventPage(BaseModel):
    data: list[Event]
    next_cursor: str | None = Field(
        description="Pass as `after` to continue; equal to the last event's id, or your `after` if none came "
        "(after an `unknown_cursor` gap: the tenant's newest event's id)."
    )
    gap: Literal["expired", "unknown_cursor"] | None = Field(
        None,
        description="Set when events after your `after` can no longer be read: `expired` (deleted after "
        "the retention period; `data` goes on from the oldest kept event) or `unknown_cursor` (the id is not "
        "from this database's log; `data` is empty and `next_cursor` is the newest event's id). Reload the "
        "state you keep from the API, then go on from `next_cursor`. Null when nothing is missing.",
    )
