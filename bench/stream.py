"""Event delivery benchmark: many SSE clients on one server process while tickets change at a steady rate,
then webhook throughput to a fast local receiver.

    .venv/bin/python bench/stream.py [--clients 1000] [--rate 20] [--seconds 20] [--webhooks 2000]

Latency is measured from the moment the API answered the change (it has committed by then) to the moment
each stream client reads the event. Prints p50/p99 over every (client, event) pair and the server's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.run import bench_tenant, database, free_port, rss_mb, server  # noqa: E402
from virtualq import migrate  # noqa: E402


async def setup(base: str) -> tuple[dict[str, str], str, str]:
    return await bench_tenant(base, "Stream")


class SseClient:
    def __init__(self, port: int, key_header: str) -> None:
        self.port, self.key_header = port, key_header
        self.arrivals: dict[str, float] = {}  # event id -> monotonic arrival
        self.ready = asyncio.Event()
        self.ended_cleanly = False  # the body's last chunk arrived before the connection closed
        self.ended_at = 0.0

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=2**20)
        writer.write(
            f"GET /v1/events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: {self.key_header}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        last = b""
        try:
            while True:
                line = await reader.readline()
                if not line:
                    self.ended_at = time.monotonic()
                    return
                if line == b"\r\n" and last == b"0\r\n":  # chunked encoding's last chunk
                    self.ended_cleanly = True
                last = line
                if line.startswith(b": connected"):
                    self.ready.set()
                elif line.startswith(b"id: "):
                    self.arrivals[line[4:].strip().decode()] = time.monotonic()
        finally:
            writer.close()


async def drive(
    base: str, headers: dict[str, str], type_id: str, queue_id: str, rate: float, seconds: float
) -> dict[str, tuple[float, float]]:
    """Create and transition tickets at `rate` changes/s; returns event id -> (request sent, answer read)."""
    committed: dict[str, tuple[float, float]] = {}
    # (sent, answered, ticket id) of each change, matched to its event id afterwards
    pending: list[tuple[float, float, str]] = []
    async with httpx.AsyncClient(base_url=base, timeout=30, headers=headers) as client:
        deadline = time.monotonic() + seconds
        tickets: list[str] = []
        tick = 0
        while time.monotonic() < deadline:
            started = time.monotonic()
            if tick % 2 == 0 or not tickets:
                response = await client.post(
                    "/v1/tickets", json={"queue_id": queue_id, "type_definition_id": type_id}
                )
                ticket_id = response.json()["id"]
                tickets.append(ticket_id)
            else:
                ticket_id = tickets.pop(0)
                await client.post(f"/v1/tickets/{ticket_id}/transition", json={"transition": "serve"})
            pending.append((started, time.monotonic(), ticket_id))
            tick += 1
            await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))
        # Match each change to its event: the newest event of that ticket at the time of the answer.
        await asyncio.sleep(1.0)
        after = None
        events: list[dict[str, Any]] = []
        while True:
            page = (
                await client.get("/v1/events", params={"limit": 1000, **({"after": after} if after else {})})
            ).json()
            events += page["data"]
            if len(page["data"]) < 1000:
                break
            after = page["next_cursor"]
    by_ticket: dict[str, list[str]] = {}
    for event in events:
        if event["type"] in ("ticket.created", "ticket.state_changed"):
            by_ticket.setdefault(event["ticket_id"], []).append(event["id"])
    for sent, answered, ticket_id in pending:
        ids = by_ticket.get(ticket_id, [])
        if ids:
            committed[ids.pop(0)] = (sent, answered)
    return committed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


async def stream_bench(
    port: int, process: subprocess.Popen[bytes], clients: int, rate: float, seconds: float
) -> dict[str, Any]:
    pid = process.pid
    base = f"http://127.0.0.1:{port}"
    headers, type_id, queue_id = await setup(base)
    idle = rss_mb(pid)
    sse = [SseClient(port, headers["Authorization"]) for _ in range(clients)]
    tasks = [asyncio.create_task(client.run()) for client in sse]
    await asyncio.wait_for(asyncio.gather(*(client.ready.wait() for client in sse)), 120)
    connected_rss = rss_mb(pid)
    committed = await drive(base, headers, type_id, queue_id, rate, seconds)
    peak_rss = rss_mb(pid)
    # A stop with every client still connected: each stream should end cleanly, and the process exit soon.
    stopped_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    await asyncio.wait(tasks, timeout=30)
    exit_seconds = float("nan")
    with contextlib.suppress(subprocess.TimeoutExpired):
        await asyncio.to_thread(process.wait, 30)
        exit_seconds = time.monotonic() - stopped_at
    for task in tasks:
        task.cancel()
    ended = [client.ended_at - stopped_at for client in sse if client.ended_at]
    clean = sum(client.ended_cleanly for client in sse)
    # The commit happens between the request being sent and its answer arriving: measure from both ends.
    from_sent = [
        (client.arrivals[event_id] - sent) * 1000
        for client in sse
        for event_id, (sent, _) in committed.items()
        if event_id in client.arrivals
    ]
    from_answer = [
        (client.arrivals[event_id] - answered) * 1000
        for client in sse
        for event_id, (_, answered) in committed.items()
        if event_id in client.arrivals
    ]
    expected = len(committed) * clients
    print(f"\nSSE: {clients} clients, {rate:.0f} changes/s for {seconds:.0f} s, one server process")
    print(f"  events delivered: {len(from_sent)} of {expected} (client x event)")
    print(
        f"  request sent -> client has the event: p50 {percentile(from_sent, 0.5):.1f} ms, "
        f"p99 {percentile(from_sent, 0.99):.1f} ms (an upper bound of commit -> client)"
    )
    print(
        f"  API answered -> client has the event: p50 {percentile(from_answer, 0.5):.1f} ms, "
        f"p99 {percentile(from_answer, 0.99):.1f} ms (negative: it arrived before the answer)"
    )
    print(
        f"  server RSS: idle {idle:.0f} MB, {clients} connected {connected_rss:.0f} MB, "
        f"load {peak_rss:.0f} MB"
    )
    print(
        f"  SIGTERM with {clients} connected: {clean} streams ended cleanly, the last after "
        f"{max(ended, default=float('nan')):.2f} s; the process exited after {exit_seconds:.2f} s"
    )
    return {
        "clients": clients,
        "delivered": len(from_sent),
        "expected": expected,
        "events_per_second": len(from_sent) / seconds,
        "p50_ms": percentile(from_sent, 0.5),
        "p99_ms": percentile(from_sent, 0.99),
        "answer_p99_ms": percentile(from_answer, 0.99),
        "rss_idle_mb": idle,
        "rss_connected_mb": connected_rss,
        "rss_load_mb": peak_rss,
        "stop_clean_streams": clean,
        "stop_exit_seconds": exit_seconds,
    }


class Receiver:
    """A fast local webhook receiver (keep-alive, 204 to everything)."""

    def __init__(self) -> None:
        self.received = 0
        self.first: float | None = None
        self.last = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readline():
                length = 0
                while (header := await reader.readline()) not in (b"\r\n", b""):
                    if header.lower().startswith(b"content-length:"):
                        length = int(header.split(b":")[1])
                await reader.readexactly(length)
                self.received += 1
                self.last = time.monotonic()
                self.first = self.first or self.last
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return  # the sender hung up, or the run is over and its connections are being torn down
        finally:
            writer.close()


async def queue_deliveries(port: int, receiver_port: int, count: int) -> None:
    """With delivery off in this server, subscribe and create `count` tickets: `count` deliveries wait."""
    base = f"http://127.0.0.1:{port}"
    headers, type_id, queue_id = await setup(base)
    async with httpx.AsyncClient(base_url=base, timeout=30, headers=headers) as client:
        response = await client.post(
            "/v1/webhooks",
            json={"url": f"http://127.0.0.1:{receiver_port}/", "event_types": ["ticket.created"]},
        )
        response.raise_for_status()
        semaphore = asyncio.Semaphore(16)

        async def create() -> None:
            async with semaphore:
                await client.post("/v1/tickets", json={"queue_id": queue_id, "type_definition_id": type_id})

        await asyncio.gather(*(create() for _ in range(count)))


async def drain(receiver: Receiver, count: int) -> dict[str, Any]:
    started = time.monotonic()
    while receiver.received < count:
        if time.monotonic() - started > 600:
            break
        await asyncio.sleep(0.05)
    seconds = receiver.last - started
    print(f"\nWebhooks: {receiver.received} of {count} queued deliveries sent to a local receiver")
    print(f"  drained in {seconds:.1f} s from server start: {receiver.received / seconds:.0f} deliveries/s")
    return {"received": receiver.received, "count": count, "per_second": receiver.received / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="ticket changes per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--webhooks", type=int, default=2000, help="deliveries for the throughput run (0: skip)"
    )
    report.add_option(parser)
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    with database() as (dsn, _):
        migrate.upgrade(dsn)
        port = free_port()
        extra = {"WEBHOOK_ALLOW_PRIVATE_TARGETS": "true", "WEBHOOK_DELIVERY": "false"}
        with server(dsn, port, 1, extra) as process:
            figures["sse"] = asyncio.run(stream_bench(port, process, args.clients, args.rate, args.seconds))
        if args.webhooks:
            figures["webhooks"] = asyncio.run(webhook_bench(dsn, args.webhooks, extra))
    report.save(args.json, figures)
    return 0


async def webhook_bench(dsn: str, count: int, extra: dict[str, str]) -> dict[str, Any]:
    """Queue deliveries with delivery off, then start a server with it on and time the drain."""
    receiver = Receiver()
    await receiver.start()
    port = free_port()
    with server(dsn, port, 1, extra):
        await queue_deliveries(port, receiver.port, count)
    with server(dsn, port, 1, {**extra, "WEBHOOK_DELIVERY": "true"}):
        return await drain(receiver, count)


if __name__ == "__main__":
    raise SystemExit(main())
