"""uvicorn's HTTP protocol with a response's head and body sent in one write, and the options `virtualq serve`
runs uvicorn with (`UVICORN_OPTIONS`).

uvicorn writes a response's status line and headers to the socket as soon as the app starts the response,
and the body in a second write. For the small JSON answers of this API those are two `send()` system calls
per request, each waking the client, which finds the head and then waits again for the body (py-spy put the
two writes at 19 % of the server's samples under a get-ticket load).

`HeadHoldingTransport` keeps a write that looks like a response head until the next write, which the app
makes in the same step (Starlette's `Response` sends start and body back to back), and writes both at once.
A head with no write behind it in the same pass of the event loop (a stream that has not produced its first
event yet) goes out on its own at the next pass. Every other write goes straight through, after whatever is
held: order is kept whatever a write looks like, and `close()` sends what is held first.

`HttpProtocol` also ends event streams when a stop begins. uvicorn's graceful stop lets each response in
flight finish, up to `timeout_graceful_shutdown`, then cancels what is left; an event stream never finishes by
itself, so every stop took the whole timeout and logged each stream's cancellation as an error. A response
that can run for ever registers how to end it (`end_on_stop`); the protocol calls that when the server asks
the connection to shut down, and the stream ends as if the client had been dropped: its last chunk sent, its
connection closed, and the client reconnects (with `Last-Event-ID`) to a process that is still serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import structlog
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from virtualq.kit.middleware import request_ids
from virtualq.kit.responses import error_body

log = structlog.get_logger("virtualq.transport")


class HeadHoldingTransport(asyncio.Transport):
    """A transport that merges a held response head into the write after it (see the module)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + bytes(data))
        elif data[:5] == b"HTTP/" and data[-4:] == b"\r\n\r\n":
            self._head = bytes(data)
            self._loop.call_soon(self._release)
        else:
            self._transport.write(data)

    def _release(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if not self._transport.is_closing():
                self._transport.write(head)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def close(self) -> None:
        self._release()
        self._transport.close()

    def abort(self) -> None:
        self._head = None
        self._transport.abort()

    def write_eof(self) -> None:
        self._release()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._head or b"")

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()


# Kept in the request's `scope["state"]`: uvicorn gives each request a dict of its own there, which
# Starlette's `request.state` writes to, and which a copy of the scope (a HEAD served as a GET) shares.
_END_ON_STOP = "virtualq.end_on_stop"
_STOPPING = object()


def end_on_stop(scope: MutableMapping[str, Any], end: Callable[[], None]) -> None:
    """Have `end` called once if the server begins a stop while this request's response is being sent (at
    once if it has begun already). Under a server without `HttpProtocol` it is never called, and the stream
    is cut when the server's graceful stop times out."""
    state = scope.setdefault("state", {})
    if state.get(_END_ON_STOP) is _STOPPING:
        end()
    else:
        state[_END_ON_STOP] = end


_BAD_REQUEST_HEADERS = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"connection", b"close"),
]


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through a `HeadHoldingTransport`, and ending the response in
    flight when a stop begins if it registered how (`end_on_stop`). `virtualq serve` uses it."""

    # `self.cycle` is the newest request parsed, which may wait behind the one running (pipelining).
    _running: RequestResponseCycle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadHoldingTransport(transport, self.loop))

    def send_400_response(self, msg: str) -> None:
        """Bytes that are not an HTTP/1.1 request: the error envelope every other answer uses (uvicorn's
        own answer is plain text), with its request id, and the connection closed as uvicorn closes it."""
        request_id = request_ids.next()
        body = error_body(400, "validation_error", "the request is not valid HTTP/1.1", {}, request_id)
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in [*self.server_state.default_headers, *_BAD_REQUEST_HEADERS]:
            head += [name, b": ", value, b"\r\n"]
        head += [b"x-request-id: ", request_id.encode(), b"\r\n"]
        head += [b"content-length: ", str(len(body)).encode(), b"\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
        log.info("invalid_http_request", request_id=request_id, client=self.client and self.client[0])

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def shutdown(self) -> None:
        """Before uvicorn's own shutdown of the connection: end the response running, if it registered how,
        and mark it and every request waiting behind it as stopping (a handler that registers later is
        ended at once)."""
        cycles = [self._running, self.cycle, *(cycle for cycle, _ in self.pipeline)]
        seen: set[int] = set()
        for cycle in cycles:
            if cycle is None or cycle.response_complete or id(cycle) in seen:
                continue
            seen.add(id(cycle))
            state = cycle.scope.get("state")
            if not isinstance(state, dict):
                continue
            end = state.get(_END_ON_STOP)
            state[_END_ON_STOP] = _STOPPING
            if callable(end):
                try:
                    end()
                except Exception:  # the stop goes on: uvicorn cuts this one at its timeout
                    log.exception("stream_end_failed")
        super().shutdown()


# How `virtualq serve` runs uvicorn, and so the tests' live server: this protocol, and no `Server: uvicorn`
# header, which would tell anyone asking which software and so which advisories apply (docs/decisions.md).
UVICORN_OPTIONS: dict[str, Any] = {"http": HttpProtocol, "server_header": False}
