"""Rendering of the error envelope, shared by exception handlers and ASGI middleware."""

from __future__ import annotations

from typing import Any

import orjson

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
