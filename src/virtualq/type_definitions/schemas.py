from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, StrictStr, StringConstraints

from virtualq.kit.schemas import Flag, IdList, InputModel, JsonObject, LongText, Name, OutputModel, PatchModel

TypeCode = Annotated[StrictStr, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
Markdown = Annotated[StrictStr, StringConstraints(max_length=20_000)]

FSM_EXAMPLE = {
    "init": "received",
    "states": ["received", "in_progress", "ready", "picked_up", "cancelled"],
    "transitions": [
        {"name": "start_preparation", "from": "received", "to": "in_progress"},
        {"name": "mark_ready", "from": "in_progress", "to": "ready"},
        {"name": "pickup", "from": "ready", "to": "picked_up"},
        {"name": "cancel", "from": ["received", "in_progress"], "to": "cancelled"},
    ],
    "categories": {"ready": "ready"},
}


class TypeDefinitionCreate(InputModel):
    is_system_defined: Flag = Field(
        default=False, description="Create a system type visible to every tenant (platform admins only)."
    )
    tenant_id: uuid.UUID | None = Field(default=None, description="Must match the tenant context if given.")
    type_code: TypeCode = Field(examples=["food_order"])
    type_name: Name = Field(examples=["Food order"])
    description: LongText | None = None
    doc: Markdown | None = None
    custom_fields_schema: JsonObject | None = Field(
        default=None, description="A JSON Schema (Draft 2020-12) that custom_data must satisfy."
    )
    fsm_schema: JsonObject | None = Field(
        default=None,
        description="The state machine (javascript-state-machine shape + categories). Required for ticket "
        "types; item types may omit it.",
        examples=[FSM_EXAMPLE],
    )
    item_definition_ids: IdList = Field(default_factory=list)


class TypeDefinitionUpdate(PatchModel):
    not_nullable = frozenset({"type_name", "item_definition_ids", "is_active"})

    type_name: Name | None = None
    description: LongText | None = None
    doc: Markdown | None = None
    custom_fields_schema: JsonObject | None = None
    fsm_schema: JsonObject | None = None
    item_definition_ids: IdList | None = None
    is_active: Flag | None = None


class TypeDefinition(OutputModel):
    id: uuid.UUID
    tenant_id: uuid.UUID | None
    type_code: str
    type_name: str
    description: str | None
    doc: str | None
    custom_fields_schema: dict[str, Any] | None
    fsm_schema: dict[str, Any] | None
    state_categories: dict[str, str] | None = Field(
        default=None, description="The category of every state, declared or inferred."
    )
    item_definition_ids: list[uuid.UUID]
    is_system_defined: bool
    is_active: bool
    version: int
    created_at: datetime
    updated_at: datetime
