"""Rendering of the error envelope, shared by exception handlers and ASGI middleware."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson
from pydantic import BaseModel
from starlette.responses import Response

from virtualq.errors import ERROR_CODES


def error_body(
    status: int, code: str | None, message: str | None, details: dict[str, Any] | None, request_id: str | None
) -> bytes:
    default_code, default_message = ERROR_CODES.get(status, ("error", "Request failed."))
    return orjson.dumps(
        {
            "error": code or default_code,
            "message": message or default_message,
            "details": details or {},
            "request_id": request_id,
        }
    )


def _default(value: Any) -> str:
    """What orjson does not know natively (asyncpg's UUID type, Decimal) is written as its text."""
    return str(value)


def fields_of(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(model.model_fields)


class _JsonBytes(Response):
    """JSON already serialised, with its headers written out as bytes: Response's own initialiser works
    them out field by field, and a header added later goes through MutableHeaders' search."""

    media_type = "application/json"

    def __init__(self, body: bytes, status_code: int, etag: str | None) -> None:
        self.status_code = status_code
        self.background = None
        self.body = body
        self.raw_headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
        if etag is not None:
            self.raw_headers.append((b"etag", etag.encode("latin-1")))


def trusted_json(payload: Any, status_code: int = 200, etag: str | None = None) -> Response:
    """A JSON response for data that already has the response model's shape and types (rows this code built
    from the database): serialised directly, without validating it again. Datetimes come out as Pydantic
    writes them (RFC 3339, `Z` for UTC). `etag`, when given, is the answer's ETag header."""
    return _JsonBytes(orjson.dumps(payload, default=_default, option=orjson.OPT_UTC_Z), status_code, etag)


def record_dict(row: Any) -> dict[str, Any]:
    """A row as a new dict. `dict(record)` reads an asyncpg Record as a mapping: its keys, then each value
    looked up by name among the columns (2.7 µs for 32 columns, timed); paired with the keys in order, 1.6."""
    if isinstance(row, asyncpg.Record):
        return dict(zip(row.keys(), row, strict=True))
    return dict(row)


def project(row: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    """Only the model's fields, in its order (database rows carry helper columns too)."""
    return {name: row[name] for name in fields}


def project_rows(rows: Sequence[Any], fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """`project` for the rows of one query. Records are read by position, worked out once from the first
    row's columns: looked up by name, a record searches its columns for each field (a page of 100 tickets
    took twice as long)."""
    if len(fields) < 2 or not rows or not isinstance(rows[0], asyncpg.Record):
        return [project(row, fields) for row in rows]
    columns = list(rows[0].keys())
    take = operator.itemgetter(*(columns.index(name) for name in fields))  # a tuple for two or more
    return [dict(zip(fields, take(row), strict=True)) for row in rows]
