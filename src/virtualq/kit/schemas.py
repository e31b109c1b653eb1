"""Shared Pydantic building blocks: strict inputs, common field types, list envelopes."""

from __future__ import annotations

import math
import re
import uuid
import zoneinfo
from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Any, ClassVar, Generic, TypeVar

import asyncpg
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StrictBool,
    StrictStr,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

T = TypeVar("T")


MAX_INPUT_DEPTH = 64
# What the JSON codec (orjson) can write: a signed or unsigned 64-bit integer.
MIN_INTEGER, MAX_INTEGER = -(2**63), 2**64 - 1


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_text(value: str, what: str) -> None:
    if "\x00" in value:
        raise ValueError(f"{what} may not contain NUL characters")
    # JSON's \ud800-\udfff escapes alone (not in a pair) are no Unicode text: nothing can store or write them.
    if not value.isascii() and _SURROGATE.search(value):
        raise ValueError(f"{what} may not contain unpaired surrogates (\\ud800 to \\udfff)")


def _check_raw(value: Any, depth: int = 0) -> None:
    """NUL characters and unpaired surrogates (PostgreSQL text and jsonb cannot hold them) and absurd
    nesting, anywhere in a body."""
    if depth > MAX_INPUT_DEPTH:
        raise ValueError(f"the body is nested more than {MAX_INPUT_DEPTH} levels deep")
    if isinstance(value, str):
        _check_text(value, "text")
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                _check_text(key, "keys")
            _check_raw(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_raw(item, depth + 1)


def _check_numbers(value: Any) -> None:
    """Numbers the JSON codec cannot write: integers beyond 64 bits, and NaN and infinities (Python's JSON
    parser reads them; written, they would come back as null)."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not MIN_INTEGER <= value <= MAX_INTEGER:
            raise ValueError("integers must fit in 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite")
    elif isinstance(value, dict):
        for item in value.values():
            _check_numbers(item)
    elif isinstance(value, list):
        for item in value:
            _check_numbers(item)


# Free-form JSON objects from clients (custom_data, config, schemas): stored exactly as sent. Without this the
# models' str_strip_whitespace would strip their top-level keys (" a" became "a", and could collide with "a").
JsonObject = dict[Annotated[str, StringConstraints(strip_whitespace=False)], Any]


class InputModel(BaseModel):
    """Request bodies: unknown fields are errors, not dropped; no NUL characters, no numbers that cannot be
    stored; bounded nesting."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _reject_unstorable(cls, value: Any) -> Any:
        _check_raw(value, depth=1)
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _reject_unwritable_numbers(cls, value: Any) -> Any:
        # After each field's own validation, so typed fields report their own bounds, and before the
        # subclasses' validators, which may serialise free-form values (sizes, schemas).
        _check_numbers(value)
        return value


def _not_nullable_in_schema(schema: dict[str, Any], cls: type) -> None:
    """A `not_nullable` field is typed `X | None` (absent means unchanged) but takes no null: the schema
    says so, so that generated clients do not offer it."""
    for name in getattr(cls, "not_nullable", ()):
        field = schema.get("properties", {}).get(name)
        if field is None or "anyOf" not in field:
            continue
        kept = [option for option in field["anyOf"] if option.get("type") != "null"]
        if len(kept) == 1:
            del field["anyOf"]
            field.update(kept[0])
        else:
            field["anyOf"] = kept


class PatchModel(InputModel):
    """Partial updates: only fields present in the body change; `not_nullable` ones may not be set to null."""

    model_config = ConfigDict(json_schema_extra=_not_nullable_in_schema)
    not_nullable: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="after")
    @classmethod
    def _reject_nulls(cls, value: Any, info: ValidationInfo) -> Any:
        # Runs only for fields the body gives (defaults are not validated): a null one names its field.
        if value is None and info.field_name in cls.not_nullable:
            raise ValueError("may not be null (leave the field out to keep it as it is)")
        return value

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class OutputModel(BaseModel):
    """Responses, built straight from database records."""

    @model_validator(mode="before")
    @classmethod
    def _from_record(cls, value: Any) -> Any:
        return dict(value) if isinstance(value, asyncpg.Record) else value


def _check_timezone(value: str) -> str:
    if value not in _timezones():
        raise ValueError("must be an IANA time zone name such as 'Europe/Tallinn' or 'UTC'")
    return value


# Files of a system's zoneinfo directory that are not zones a place can be in: the machine's own setting
# (PostgreSQL does not know the first two), and "Factory" ("local time zone must be set").
NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})


@cache
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) - NOT_ZONES


Name = Annotated[StrictStr, StringConstraints(min_length=1, max_length=100)]
ShortText = Annotated[StrictStr, StringConstraints(max_length=200)]
LongText = Annotated[StrictStr, StringConstraints(max_length=2000)]
Email = Annotated[EmailStr, StringConstraints(max_length=254)]
Phone = Annotated[StrictStr, StringConstraints(pattern=r"^\+?[0-9 ().-]{3,32}$")]
Timezone = Annotated[StrictStr, AfterValidator(_check_timezone)]
Flag = StrictBool


class Pagination(BaseModel):
    page: int
    limit: int
    total: int
    total_pages: int


class Page(BaseModel, Generic[T]):
    data: list[T]
    pagination: Pagination


def _storable_instant(value: datetime) -> datetime:
    """A time PostgreSQL can be sent: in UTC it must still fall within years 1 to 9999 (0001-01-01T00:00+01:00
    is in year 0 in UTC)."""
    if value.tzinfo is not None:
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise ValueError("the time in UTC must fall within the years 1 to 9999") from None
    return value


# A timestamp a client sends (filters): RFC 3339, within what can be stored.
Instant = Annotated[datetime, AfterValidator(_storable_instant)]


class CommonFilters(BaseModel):
    is_active: bool | None = None
    created_after: Instant | None = None
    created_before: Instant | None = None


IdList = Annotated[list[uuid.UUID], Field(max_length=100)]
