"""One error type, one JSON envelope (PRODUCT §6)."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """A failure the client can act on. Rendered as {"error", "message", "details", "request_id"}."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class ValidationFailed(AppError):
    status_code = 400
    code = "validation_error"


class InvalidTransition(AppError):
    status_code = 400
    code = "invalid_transition"


class TypeNotAllowed(AppError):
    status_code = 400
    code = "type_not_allowed"


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"


class NotFound(AppError):
    status_code = 404
    code = "not_found"


class QueueEmpty(AppError):
    status_code = 404
    code = "queue_empty"


class Conflict(AppError):
    status_code = 409
    code = "conflict"


class QueueDisabled(AppError):
    status_code = 409
    code = "queue_disabled"


class IdempotencyConflict(AppError):
    status_code = 409
    code = "idempotency_conflict"


class PreconditionFailed(AppError):
    status_code = 412
    code = "precondition_failed"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"


class RateLimited(AppError):
    status_code = 429
    code = "rate_limited"


class Unavailable(AppError):
    status_code = 503
    code = "unavailable"


ERROR_CODES: dict[int, tuple[str, str]] = {
    400: ("validation_error", "The request is malformed or violates the schema."),
    401: ("unauthorized", "A valid API key is required."),
    403: ("forbidden", "The API key may not do this."),
    404: ("not_found", "No such resource."),
    405: ("method_not_allowed", "This method is not allowed on this resource."),
    409: ("conflict", "The request conflicts with the current state."),
    412: ("precondition_failed", "The resource changed since it was read."),
    413: ("payload_too_large", "The request body is too large."),
    415: ("unsupported_media_type", "The request body must be JSON (Content-Type: application/json)."),
    431: (
        "request_header_fields_too_large",
        "The request's headers are too large (at most 16 KiB, 100 fields).",
    ),
    429: ("rate_limited", "Too many requests."),
    500: ("internal_error", "Internal server error."),
    503: ("unavailable", "The service is temporarily unavailable."),
}


def not_found(resource: str) -> NotFound:
    return NotFound(f"{resource} not found")
