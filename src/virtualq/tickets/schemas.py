from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, Field, StrictInt, StrictStr, StringConstraints

from virtualq.fsm import Category
from virtualq.kit.schemas import InputModel, Instant, JsonObject, OutputModel, PatchModel

TransitionName = Annotated[StrictStr, StringConstraints(min_length=1, max_length=32)]
Notes = Annotated[StrictStr, StringConstraints(max_length=2000)]
# Where a called customer goes: "Desk 2", "Window B".
CounterName = Annotated[StrictStr, StringConstraints(min_length=1, max_length=50)]
WaitMinutes = Annotated[StrictInt, Field(ge=0, le=10_080)]
TtlMinutes = Annotated[StrictInt, Field(ge=1, le=525_600)]
ExternalText = Annotated[StrictStr, StringConstraints(min_length=1, max_length=200)]


class TicketCreate(InputModel):
    tenant_id: uuid.UUID | None = Field(default=None, description="Must match the tenant context if given.")
    queue_id: uuid.UUID
    type_definition_id: uuid.UUID
    customer_id: uuid.UUID | None = None
    references_ticket_id: uuid.UUID | None = Field(default=None, description="Another ticket of the tenant.")
    custom_data: JsonObject = Field(default_factory=dict, description="Validated against the type's schema.")
    estimated_wait_minutes: WaitMinutes | None = Field(default=None, description="Your own estimate, if any.")
    ttl_minutes: TtlMinutes | None = Field(default=None, description="Sets expires_at = created_at + ttl.")


class TicketUpdate(PatchModel):
    not_nullable = frozenset({"custom_data"})

    custom_data: JsonObject | None = None
    estimated_wait_minutes: WaitMinutes | None = None
    ttl_minutes: TtlMinutes | None = None


class TransitionRequest(InputModel):
    transition: TransitionName = Field(examples=["start_preparation"])
    employee_id: uuid.UUID | None = Field(default=None, description="Assign (and attribute) the change.")
    notes: Notes | None = None
    counter: CounterName | None = Field(
        default=None,
        description="Where the customer should go from now on (kept when not given; cleared when the ticket "
        "goes back to the line).",
    )


class TicketFilters(InputModel):
    queue_id: uuid.UUID | None = None
    current_state: TransitionName | None = None
    state_category: Category | None = None
    customer_id: uuid.UUID | None = None
    employee_id: uuid.UUID | None = None
    type_definition_id: uuid.UUID | None = None
    created_after: Instant | None = None
    created_before: Instant | None = None
    expires_before: Instant | None = None


class Ticket(OutputModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    queue_id: uuid.UUID
    type_definition_id: uuid.UUID
    number: int
    display_code: str = Field(examples=["A042"])
    current_state: str
    state_category: Category
    customer_id: uuid.UUID | None
    employee_id: uuid.UUID | None
    references_ticket_id: uuid.UUID | None
    position: int | None = Field(
        description="1-based place among the queue's waiting tickets; null if not waiting."
    )
    estimated_wait_minutes: int | None
    original_estimated_wait_minutes: int | None
    actual_wait_minutes: int | None
    ttl_minutes: int | None
    expires_at: datetime | None
    escalated_at: datetime | None
    custom_data: dict[str, Any]
    started_at: datetime | None
    ready_at: datetime | None
    completed_at: datetime | None
    cancelled_at: datetime | None
    counter: str | None = Field(
        description="Where the customer should go: the counter that called the ticket (call-next or a "
        "transition naming one); null while in line."
    )
    version: int
    created_at: datetime
    updated_at: datetime
    customer_page: str | None = Field(
        description="The customer's own live ticket page, with its secret token: a path on this server, or "
        "the whole link when the server has PUBLIC_BASE_URL; give it to the customer. Null for display-role "
        "keys."
    )


class TransitionedTicket(Ticket):
    previous_state: str


class TicketCount(BaseModel):
    count: int


class HistoryEntry(OutputModel):
    id: uuid.UUID
    ticket_id: uuid.UUID | None = None
    item_id: uuid.UUID | None = None
    previous_state: str | None
    new_state: str | None
    transition: str | None
    employee_id: uuid.UUID | None
    notes: str | None
    created_at: datetime


class ItemCreate(InputModel):
    item_type_definition_id: uuid.UUID
    external_item_id: ExternalText | None = Field(default=None, examples=["sku-latte-16oz"])
    external_item_name: ExternalText | None = Field(default=None, examples=["Latte (16 oz)"])
    quantity: Annotated[StrictInt, Field(ge=1, le=10_000)] = 1
    unit_price: Annotated[Decimal, Field(ge=0, le=Decimal("9999999999.99"), decimal_places=2)] | None = None
    custom_data: JsonObject = Field(default_factory=dict)


class ItemUpdate(PatchModel):
    not_nullable = frozenset({"quantity", "custom_data"})

    external_item_id: ExternalText | None = None
    external_item_name: ExternalText | None = None
    quantity: Annotated[StrictInt, Field(ge=1, le=10_000)] | None = None
    unit_price: Annotated[Decimal, Field(ge=0, le=Decimal("9999999999.99"), decimal_places=2)] | None = None
    custom_data: JsonObject | None = None


class Item(OutputModel):
    id: uuid.UUID
    ticket_id: uuid.UUID
    item_type_definition_id: uuid.UUID
    current_state: str | None
    external_item_id: str | None
    external_item_name: str | None
    quantity: int
    unit_price: Decimal | None
    custom_data: dict[str, Any]
    started_at: datetime | None
    completed_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime


class TransitionedItem(Item):
    previous_state: str | None


Reason = Annotated[StrictStr, StringConstraints(max_length=500)]
LinePosition = Annotated[StrictInt, Field(ge=1, le=1_000_000)]


class CallNextRequest(InputModel):
    employee_id: uuid.UUID | None = Field(
        default=None, description="Who calls; defaults to the employee the API key is bound to."
    )
    transition: TransitionName | None = Field(
        default=None,
        description=(
            "Defaults to the first transition from the waiting state into service (else ready, else done)."
        ),
    )
    notes: Notes | None = None
    counter: CounterName | None = Field(
        default=None,
        description="The counter (desk, window) calling: shown with the call on the wall display and the "
        "customer's page.",
        examples=["Desk 2"],
    )


class RecallRequest(InputModel):
    counter: CounterName | None = Field(
        default=None,
        description="Where to go now, if it changed; default the counter of the first call.",
        examples=["Desk 3"],
    )


class ReorderRequest(InputModel):
    position: LinePosition = Field(description="1-based; past the end means the end of the line.")
    reason: Reason | None = None


class ForwardRequest(InputModel):
    target_queue_id: uuid.UUID
    reason: Reason | None = None
    position: LinePosition | None = Field(
        default=None, description="Place in the target line (waiting tickets); default the end."
    )


class AssignRequest(InputModel):
    employee_id: uuid.UUID


class ReorderedTicket(Ticket):
    previous_position: int


class ForwardedTicket(Ticket):
    previous_queue_id: uuid.UUID
