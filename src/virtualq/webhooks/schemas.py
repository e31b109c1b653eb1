from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StrictStr, StringConstraints

from virtualq.events.schemas import EVENT_TYPES, EventTypeName
from virtualq.kit.schemas import Flag, InputModel, LongText, OutputModel, PatchModel

Url = Annotated[StrictStr, StringConstraints(min_length=8, max_length=2000)]
EventTypes = Annotated[list[EventTypeName], Field(max_length=len(EVENT_TYPES))]


class WebhookCreate(InputModel):
    url: Url = Field(examples=["https://example.com/hooks/virtualq"])
    event_types: EventTypes = Field(default_factory=list, description="Empty: every event type.")
    description: LongText | None = None
    is_active: Flag = True


class WebhookUpdate(PatchModel):
    not_nullable = frozenset({"url", "event_types", "is_active"})

    url: Url | None = None
    event_types: EventTypes | None = None
    description: LongText | None = None
    is_active: Flag | None = None


class Webhook(OutputModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    url: str
    event_types: list[str]
    description: str | None
    is_active: bool
    created_at: datetime
    updated_at: datetime
    previous_secret_expires_at: datetime | None = Field(
        description="After a rotation: until when deliveries are also signed with the previous secret."
    )


class WebhookCreated(Webhook):
    secret: str = Field(description="Signs every delivery. Shown only in this response; store it now.")


class Attempt(OutputModel):
    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: int
    created_at: datetime


class Delivery(OutputModel):
    id: uuid.UUID = Field(description="Stable per event and subscription: the X-VirtualQ-Delivery header.")
    webhook_id: uuid.UUID
    event_type: str
    event_id: str | None = Field(description="The event's id (null for test deliveries).")
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    last_duration_ms: int | None
    created_at: datetime
    updated_at: datetime
    payload: dict[str, Any]
    attempt_log: list[Attempt] = Field(description="Every attempt, oldest first.")


class SecretRotation(InputModel):
    previous_secret_minutes: int = Field(
        default=1440,
        ge=0,
        le=10080,
        strict=True,
        description="How long deliveries stay signed with the old secret too (minutes, at most a week; 0: "
        "from now on only the new one). Default: a day.",
    )
