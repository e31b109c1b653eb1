"""kit/transport.py: a response's head and body leave in one write, nothing is reordered or lost, and
uvicorn serves every kind of answer through it (the session's live server runs on it: tests/conftest.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import LiveServer
from tests.helpers import raw_exchange
from virtualq.kit.transport import HeadHoldingTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recording(asyncio.Transport):
    """Stands in for the socket's transport: records what reaches it, write by write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_write_buffer_size(self) -> int:
        return 0


def holding() -> tuple[HeadHoldingTransport, Recording]:
    inner = Recording()
    return HeadHoldingTransport(inner, asyncio.get_running_loop()), inner


async def test_a_head_and_its_body_leave_in_one_write() -> None:
    transport, inner = holding()
    transport.write(HEAD)
    assert inner.writes == []
    assert transport.get_write_buffer_size() == len(HEAD)
    transport.write(b"{}")
    assert inner.writes == [HEAD + b"{}"]
    await asyncio.sleep(0)  # the release scheduled for the head finds nothing left to send
    assert inner.writes == [HEAD + b"{}"]


async def test_a_head_without_a_body_in_the_same_step_leaves_at_the_next_pass() -> None:
    transport, inner = holding()
    transport.write(HEAD)  # a stream's head, its first event not ready yet
    await asyncio.sleep(0)
    assert inner.writes == [HEAD]
    transport.write(b"data: 1\n\n")
    assert inner.writes == [HEAD, b"data: 1\n\n"]


async def test_other_writes_go_straight_through_in_order() -> None:
    transport, inner = holding()
    transport.write(b"5\r\nhello\r\n")
    transport.writelines([b"0\r\n", b"\r\n"])
    # Something that only looks like a head is held, and still leaves before what follows it.
    transport.write(b"HTTP/ lookalike\r\n\r\n")
    transport.write(b"after")
    assert inner.writes == [b"5\r\nhello\r\n", b"0\r\n\r\n", b"HTTP/ lookalike\r\n\r\nafter"]


async def test_close_sends_a_held_head_first_and_abort_drops_it() -> None:
    transport, inner = holding()
    transport.write(HEAD)
    transport.close()
    assert inner.writes == [HEAD]
    assert inner.closed
    await asyncio.sleep(0)
    assert inner.writes == [HEAD]  # not twice

    transport, inner = holding()
    transport.write(HEAD)
    transport.abort()
    await asyncio.sleep(0)
    assert inner.writes == []
    assert inner.aborted


async def test_pipelined_requests_get_whole_answers_in_order(live_server: LiveServer) -> None:
    one = b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n"
    missing = b"GET /v1/no-such-thing HTTP/1.1\r\nhost: t\r\n\r\n"
    received = await raw_exchange(live_server.port, one + missing + one, b"HTTP/1.1 ", 3)
    statuses = [part.split(b"\r\n", 1)[0] for part in received.split(b"HTTP/1.1 ")[1:]]
    assert statuses == [b"200 OK", b"404 Not Found", b"200 OK"]
    for answer in received.split(b"HTTP/1.1 ")[1:]:
        head, _, body = answer.partition(b"\r\n\r\n")
        length = int(
            next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1]
        )
        assert len(body) == length  # each body whole, nothing of the next answer in it


async def test_a_head_request_gets_a_head_alone_and_the_connection_goes_on(live_server: LiveServer) -> None:
    """A HEAD's answer has no body to merge with: its head leaves at the next pass of the loop."""
    raw = b"HEAD /healthz HTTP/1.1\r\nhost: t\r\n\r\nGET /healthz HTTP/1.1\r\nhost: t\r\n\r\n"
    received = await raw_exchange(live_server.port, raw, b"HTTP/1.1 ", 2)
    first, second = received.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 OK")  # a GET route answers HEAD (tests/test_head.py)
    assert first.endswith(b"\r\n\r\n")  # no body after the HEAD's head
    assert second.startswith(b"200 OK")
    assert second.endswith(b'{"status":"ok"}')


async def test_expect_continue_gets_its_interim_answer_then_the_final_one(live_server: LiveServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", live_server.port)
    try:
        writer.write(
            b"POST /v1/accounts HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            b"content-length: 2\r\nexpect: 100-continue\r\n\r\n"
        )
        async with asyncio.timeout(10):
            interim = await reader.readuntil(b"\r\n\r\n")
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"{}")
            final = await reader.readuntil(b"\r\n\r\n")
        assert final.startswith(b"HTTP/1.1 401 ")  # no credentials: the usual answer, whole
    finally:
        writer.close()


@pytest.mark.parametrize("path", ["/healthz", "/openapi.json"])
async def test_small_and_large_answers_arrive_whole(live_server: LiveServer, path: str) -> None:
    """A probe's few bytes and the OpenAPI document's many (more than one write's worth of socket buffer)."""
    raw = f"GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n".encode()
    received = await raw_exchange(live_server.port, raw, None)  # until the server closes
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1]
    )
    assert len(body) == length
    assert length > (50_000 if path == "/openapi.json" else 1)


async def test_a_stop_ends_the_streams_that_registered_and_survives_an_end_that_fails() -> None:
    """kit/transport.end_on_stop under a real uvicorn stop: a stream's end is called when the stop begins,
    its body ends cleanly, and an end that raises is logged without breaking the stop (uvicorn cuts that
    stream at its graceful timeout instead)."""
    import socket

    import uvicorn

    from virtualq.kit.transport import UVICORN_OPTIONS, end_on_stop

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        ended = asyncio.Event()

        def broken() -> None:
            raise RuntimeError("an end that fails")

        end_on_stop(scope, broken if scope["path"] == "/broken" else ended.set)
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b": connected\n\n", "more_body": True})
        await ended.wait()  # the broken one is never ended: uvicorn cuts it
        await send({"type": "http.response.body", "body": b""})

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_level="critical", timeout_graceful_shutdown=1,
        **UVICORN_OPTIONS,
    )  # fmt: skip
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.01)
    streams = {}
    for path in ("/broken", "/fine"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        async with asyncio.timeout(5):
            while b": connected" not in await reader.readline():
                pass
        streams[path] = (reader, writer)
    server.should_exit = True
    async with asyncio.timeout(5):
        fine = await streams["/fine"][0].read()  # to the end: ended at once, its last chunk sent
        await serving  # raises if the failing end escaped into uvicorn's stop
    assert fine.endswith(b"0\r\n\r\n"), fine
    for _, writer in streams.values():
        writer.close()
