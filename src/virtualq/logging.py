"""structlog set-up: JSON lines in production, readable lines elsewhere; stdlib logs go through it too."""

from __future__ import annotations

import logging
import os
import sys
from contextvars import ContextVar, Token
from typing import Any, TextIO

import orjson
import structlog

# Keys whose values never reach a log line, wherever they appear.
SECRET_KEYS = frozenset(
    {"authorization", "x-api-key", "api_key", "key", "secret", "password", "admin_api_key"}
)


# What every line logged while a request is served carries (request_id, then tenant_id and api_key_id once
# known): one dict per request, opened by the request-context middleware. structlog's own contextvars
# (one variable per key, and clearing them copies and searches the whole context) were ~6 % of a get's
# instructions (docs/performance.md). A task started during the request shares the dict, so what the
# request binds later reaches its lines too.
_REQUEST_CONTEXT: ContextVar[dict[str, Any] | None] = ContextVar("virtualq_request_log", default=None)


def open_request_context(**values: Any) -> Token[dict[str, Any] | None]:
    """Start a request's log context with `values`; `close_request_context(token)` when it is answered."""
    return _REQUEST_CONTEXT.set(values)


def close_request_context(token: Token[dict[str, Any] | None]) -> None:
    _REQUEST_CONTEXT.reset(token)


def bind_request(**values: Any) -> None:
    """Add `values` to every later line of the request being served (nothing outside a request)."""
    context = _REQUEST_CONTEXT.get()
    if context is not None:
        context.update(values)


def _merge_request_context(
    _logger: object, _method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    context = _REQUEST_CONTEXT.get()
    if context:
        return {**context, **event_dict}  # a line's own keys win
    return event_dict


def _redact_secrets(
    _logger: object, _method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    for name in list(event_dict):
        if name.lower() in SECRET_KEYS:
            event_dict[name] = "[redacted]"
    return event_dict


def _add_pid(
    _logger: object, _method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """Which process wrote the line: several workers write to one stream (`WEB_CONCURRENCY`)."""
    event_dict["pid"] = os.getpid()
    return event_dict


def _json_line(event: structlog.types.EventDict, **_: Any) -> str:
    return orjson.dumps(event, default=str).decode()


def configure_logging(
    level: str = "info", json: bool = False, stream: TextIO | None = None, pid: bool = False
) -> None:
    """Logs to `stream` (standard error by default): JSON lines with `json` (production), with the writing
    process's `pid`, else readable lines (with the `pid` too when `pid`: several workers share the stream).

    In production the app's own events (one access-log line per request) are rendered and written by
    structlog alone, about 7 µs a line where the path through the standard library's logging took about 20
    (docs/performance.md); other libraries' records (uvicorn, asyncpg, alembic) go through `logging` and come
    out in the same JSON shape."""
    out = stream or sys.stderr
    shared: list[structlog.types.Processor] = [
        _merge_request_context,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_secrets,
    ]
    if json or pid:  # each line also names its process
        shared.append(_add_pid)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_json_line)
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    if json:
        structlog.configure(
            processors=[*shared, structlog.processors.format_exc_info, renderer],
            wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
            logger_factory=structlog.WriteLoggerFactory(file=out),
            # Not cached: a later configure_logging (a test capturing the lines) reaches loggers already
            # used. About 1 µs a line.
            cache_logger_on_first_use=False,
        )
    else:
        structlog.configure(
            # Below the level, drop the event before the other processors run (stdlib would drop it after).
            processors=[
                structlog.stdlib.filter_by_level,
                *shared,
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if json else structlog.processors.ExceptionPrettyPrinter(),
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Our middleware writes the access log; uvicorn's would repeat it without request ids.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("alembic").setLevel(max(root.level, logging.WARNING))
    # httpx logs every webhook call with its full URL at INFO: a URL can carry the receiver's own secret
    # (a token in the path or query). Attempts are recorded in the delivery log instead.
    logging.getLogger("httpx").setLevel(max(root.level, logging.WARNING))
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
