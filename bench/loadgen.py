"""A small keep-alive HTTP/1.1 load generator on asyncio protocols (run it on uvloop).

httpx costs more CPU per request than the server under test, and on a 2-core machine the generator shares
the cores; a bare client keeps the measurement about the server. Each connection sends its next request from
the callback that read the last answer: on streams, with a task per connection, the generator cost about
30 µs of CPU per request and held the server back by a sixth (docs/performance.md, run Z's session).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import orjson

RequestFactory = Callable[[int, int], tuple[str, str, bytes | None]]  # (worker, n) -> (method, path, body)


@dataclass
class Result:
    name: str
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def requests_per_second(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


class _Client(asyncio.Protocol):
    """One keep-alive connection sending its requests one after another, straight from the callbacks: the
    next request goes out in the same step as the answer to the last is read, with no task in between."""

    def __init__(self, load: _Load, index: int) -> None:
        self.load, self.index = load, index
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.sent = 0
        self.started = 0.0
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if time.perf_counter() >= self.load.deadline:
            self._finish()
            return
        method, path, body = self.load.make_request(self.index, self.sent)
        head = f"{method} {path} HTTP/1.1\r\n{self.load.fixed_headers}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.started = time.perf_counter()
        self.transport.write(head.encode() + b"\r\n" + (body or b""))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return  # the rest of the body is still on its way
        status = int(self.buffer[9:12])
        self.buffer = self.buffer[end + 4 + length :]
        self.sent += 1
        if status == self.load.stop_status:
            self._finish()
            return
        result = self.load.result
        result.latencies.append(time.perf_counter() - self.started)
        result.statuses[status] = result.statuses.get(status, 0) + 1
        self._send()

    def _finish(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.finished.done():
            self.finished.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_exception(exc or ConnectionError("the server closed the connection"))


@dataclass
class _Load:
    make_request: RequestFactory
    fixed_headers: str
    deadline: float
    stop_status: int | None
    result: Result


async def run_load(
    name: str,
    host: str,
    port: int,
    headers: dict[str, str],
    make_request: RequestFactory,
    concurrency: int,
    seconds: float,
    stop_status: int | None = None,
) -> Result:
    """Run `concurrency` connections for `seconds`; a connection also stops at its first `stop_status`
    response (not counted), e.g. 404 queue_empty when draining a queue."""
    result = Result(name)
    fixed = f"Host: {host}\r\n" + "".join(f"{key}: {value}\r\n" for key, value in headers.items())
    load = _Load(make_request, fixed, time.perf_counter() + seconds, stop_status, result)
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    clients = []
    for index in range(concurrency):
        _, client = await loop.create_connection(lambda index=index: _Client(load, index), host, port)
        clients.append(client)
    await asyncio.gather(*(client.finished for client in clients))
    result.seconds = time.perf_counter() - started
    return result


def json_body(value: object) -> bytes:
    return orjson.dumps(value)
