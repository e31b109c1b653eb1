"""A small keep-alive HTTP/1.1 load generator on asyncio streams.

httpx costs more CPU per request than the server under test, and on a 2-core machine the generator shares
the cores; a bare client keeps the measurement about the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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


class Connection:
    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.fixed_headers = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.fixed_headers}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        status_line = await self.reader.readline()
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        payload = await self.reader.readexactly(length) if length else b""
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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
    """Run `concurrency` workers for `seconds`; a worker also stops at its first `stop_status` response
    (not counted), e.g. 404 queue_empty when draining a queue."""
    result = Result(name)
    deadline = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        conn = Connection(host, port, headers)
        n = 0
        try:
            while time.perf_counter() < deadline:
                method, path, body = make_request(index, n)
                started = time.perf_counter()
                status, _ = await conn.request(method, path, body)
                if status == stop_status:
                    break
                result.latencies.append(time.perf_counter() - started)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                n += 1
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def json_body(value: object) -> bytes:
    return orjson.dumps(value)
