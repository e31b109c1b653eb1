"""The FastAPI application class, with the two outer layers a request does not need taken off its path.

For every HTTP request FastAPI's `__call__` first asks whether OpenTelemetry is configured, then Starlette's
sets `scope["app"]` and calls the middleware stack, whose two outer layers FastAPI adds:
`ServerErrorMiddleware` (a plain 500 for an exception that reaches it) and `ExceptionTelemetryMiddleware`
(records an exception on the request's span). Here telemetry is off (app.py), so the second layer records
nothing, and `RequestContextMiddleware` (the outermost of our own but CORS) already answers 500 for any
exception and logs it; what it lets through (an exception after the answer has started, which no layer
can answer) ServerErrorMiddleware re-raises untouched. `Application` keeps ServerErrorMiddleware as the
last resort, drops the telemetry layer, and serves an HTTP request by calling the stack directly; the
first request, lifespan events and websockets go through FastAPI's `__call__` as before.

Counted with `bench/inprocess.py --instructions` (four runs each, alternating): ~1.8 % of a get's
instructions (docs/performance.md, "Levers tried").
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.telemetry._asgi import ExceptionTelemetryMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from virtualq.kit.appstate import AppState


class Application(FastAPI):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = AppState()  # see kit/appstate.py

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        if isinstance(getattr(stack, "app", None), ExceptionTelemetryMiddleware):
            stack.app = stack.app.app  # type: ignore[attr-defined]
        return stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.middleware_stack is not None and not self.root_path:
            scope["app"] = self
            await self.middleware_stack(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
