from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field, StrictInt, StrictStr, StringConstraints

from virtualq.kit.schemas import Flag, IdList, InputModel, LongText, Name, OutputModel, PatchModel


class WaitEstimationMethod(StrEnum):
    AVERAGE_RECENT_3 = "average_recent_3"
    AVERAGE_RECENT_5 = "average_recent_5"
    ROLLING_AVERAGE = "rolling_average"
    MANUAL = "manual"
    CUSTOM = "custom"
    NONE = "none"


TicketPrefix = Annotated[StrictStr, StringConstraints(pattern=r"^[A-Za-z0-9-]{0,8}$")]
Minutes = Annotated[StrictInt, Field(ge=1, le=10_080)]
ManualMinutes = Annotated[StrictInt, Field(ge=0, le=1_440)]
DisplayOrder = Annotated[StrictInt, Field(ge=-1_000_000, le=1_000_000)]


class QueueCreate(InputModel):
    tenant_id: uuid.UUID | None = Field(default=None, description="Must match the tenant context if given.")
    name: Name = Field(examples=["Main line"])
    description: LongText | None = None
    allowed_type_definition_ids: IdList | None = Field(
        default=None, description="Types allowed in this queue; empty or null allows every active type."
    )
    wait_estimation_method: WaitEstimationMethod = WaitEstimationMethod.AVERAGE_RECENT_3
    show_wait_time: Flag = True
    max_wait_minutes: Minutes | None = None
    manual_wait_minutes: ManualMinutes | None = None
    ticket_prefix: TicketPrefix = Field(default="", examples=["A"])
    display_order: DisplayOrder = 0
    self_join_type_definition_id: uuid.UUID | None = Field(
        default=None,
        description="Customers may join this queue themselves through its `join_page` (a QR code, a kiosk) "
        "and get tickets of this type; null: they may not (docs/workflows.md, Self-service join).",
    )


class QueueUpdate(PatchModel):
    not_nullable = frozenset(
        {"name", "wait_estimation_method", "show_wait_time", "ticket_prefix", "display_order", "is_active"}
    )

    name: Name | None = None
    description: LongText | None = None
    allowed_type_definition_ids: IdList | None = None
    wait_estimation_method: WaitEstimationMethod | None = None
    show_wait_time: Flag | None = None
    max_wait_minutes: Minutes | None = None
    manual_wait_minutes: ManualMinutes | None = None
    ticket_prefix: TicketPrefix | None = None
    display_order: DisplayOrder | None = None
    is_active: Flag | None = None
    self_join_type_definition_id: uuid.UUID | None = Field(
        default=None, description="The type of self-joined tickets; null turns self-join off."
    )


class Queue(OutputModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    description: str | None
    allowed_type_definition_ids: list[uuid.UUID] | None
    wait_estimation_method: WaitEstimationMethod
    show_wait_time: bool
    max_wait_minutes: int | None
    manual_wait_minutes: int | None
    ticket_prefix: str
    display_order: int
    is_active: bool
    self_join_type_definition_id: uuid.UUID | None
    join_page: str | None = Field(
        description="Where customers join by themselves (`/join/{token}`; the whole link when the server "
        "has PUBLIC_BASE_URL); its QR code is `{join_page}/qr.svg`. Null while self-join is off.",
        examples=["/join/8kVxqz3u0mWcTgQ1rX2bLw"],
    )
    created_at: datetime
    updated_at: datetime


class MonitorItem(OutputModel):
    name: str
    quantity: int


class MonitorTicket(OutputModel):
    id: uuid.UUID
    display_code: str = Field(examples=["A042"])
    display_name: str = Field(examples=["John S."], description='First name and last initial, or "Guest".')
    state: str
    state_category: str
    position: int | None
    counter: str | None = Field(description="Where a called customer goes; null while in line.")
    estimated_wait_minutes: int | None = Field(
        default=None, description="Present only when the queue shows wait times."
    )
    items: list[MonitorItem]
    item_count: int


class MonitorGroups(OutputModel):
    waiting: list[MonitorTicket]
    in_service: list[MonitorTicket]
    ready: list[MonitorTicket]


class MonitorCounts(OutputModel):
    waiting: int
    in_service: int
    ready: int


class Monitor(OutputModel):
    queue_id: uuid.UUID
    queue_name: str
    is_active: bool = Field(
        description="False: the queue takes no new tickets; those already in it are still shown and served."
    )
    show_wait_time: bool
    generated_at: datetime
    groups: MonitorGroups
    counts: MonitorCounts


class EstimationStats(OutputModel):
    method: WaitEstimationMethod
    basis: str = Field(description="history, fallback, manual, custom or none (docs/estimates.md).")
    minutes_per_ticket: float | None
    fallback_minutes_per_ticket: float
    current_estimate_minutes: int | None = Field(description="For a ticket joining the line now.")


class AccuracyStats(OutputModel):
    sample_size: int = Field(description="Recent tickets (at most 50) with an original estimate and a wait.")
    mean_absolute_error_minutes: float | None
    mean_error_minutes: float | None = Field(description="Positive: estimates were too long on average.")


class QueueStats(OutputModel):
    queue_id: uuid.UUID
    generated_at: datetime
    counts_by_state: dict[str, int] = Field(description="Active tickets, and today's finished ones.")
    counts_by_category: dict[str, int]
    waiting: int
    estimation: EstimationStats
    accuracy: AccuracyStats
