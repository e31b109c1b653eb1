from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, StrictFloat, StrictInt, field_validator

from virtualq.kit.schemas import (
    Flag,
    InputModel,
    JsonObject,
    LongText,
    Name,
    OutputModel,
    PatchModel,
    ShortText,
    Timezone,
)

MAX_CONFIG_BYTES = 16_384


class Coordinates(InputModel):
    latitude: Annotated[StrictFloat | StrictInt, Field(ge=-90, le=90)]
    longitude: Annotated[StrictFloat | StrictInt, Field(ge=-180, le=180)]


def _check_config_size(value: dict[str, Any] | None) -> dict[str, Any] | None:
    import orjson

    if value is not None and len(orjson.dumps(value)) > MAX_CONFIG_BYTES:
        raise ValueError(f"config must be at most {MAX_CONFIG_BYTES} bytes of JSON")
    return value


class TenantCreate(InputModel):
    account_id: uuid.UUID | None = Field(
        default=None, description="Required for platform keys; defaults to the key's account."
    )
    name: Name = Field(examples=["Downtown Seattle Coffee"])
    description: LongText | None = None
    location_name: ShortText | None = None
    location_address: LongText | None = None
    location_coordinates: Coordinates | None = None
    timezone: Timezone = Field(default="UTC", examples=["America/Los_Angeles"])
    config: JsonObject = Field(default_factory=dict)

    _config_size = field_validator("config")(_check_config_size)


class TenantUpdate(PatchModel):
    not_nullable = frozenset({"name", "timezone", "config", "is_active"})

    name: Name | None = None
    description: LongText | None = None
    location_name: ShortText | None = None
    location_address: LongText | None = None
    location_coordinates: Coordinates | None = None
    timezone: Timezone | None = None
    config: JsonObject | None = None
    is_active: Flag | None = None

    _config_size = field_validator("config")(_check_config_size)


class CoordinatesOut(BaseModel):
    latitude: float
    longitude: float


class Tenant(OutputModel):
    id: uuid.UUID
    account_id: uuid.UUID
    name: str
    description: str | None
    location_name: str | None
    location_address: str | None
    location_coordinates: CoordinatesOut | None
    timezone: str
    config: dict[str, Any]
    is_active: bool
    created_at: datetime
    updated_at: datetime
