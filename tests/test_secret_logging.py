"""Secrets never reach the logs (PRODUCT §6: keys are shown once and stored only as a hash).

A real server process runs with LOG_LEVEL=debug, its stdout and stderr captured, and is put through every path
a secret travels: API keys created and shown once, used as `Authorization: Bearer` and as `X-API-Key`, a wrong
key, a revoked key, the ADMIN_API_KEY itself, a secret sent in a body field the schema refuses, a webhook
secret shown once and used to sign a delivery to a local receiver (whose URL carries tokens of its own), and
a ticket's public token (query and header). Afterwards none of those secrets, nor their stored SHA-256
digests (hex or base64), nor a delivery's signature, appears anywhere in what the process wrote, while the
access log did record those requests (so a server that went silent would fail the test, not pass it).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

VIRTUALQ = Path(sys.executable).parent / "virtualq"
FSM = {
    "init": "new",
    "states": ["new", "served", "cancelled"],
    "transitions": [
        {"name": "serve", "from": "new", "to": "served"},
        {"name": "cancel", "from": "new", "to": "cancelled"},
    ],
}


# --- a webhook receiver on loopback -----------------------------------------------------------------------


@dataclass
class Receiver:
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            box.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:  # keep the test output quiet
            pass

    box.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=box.server.serve_forever, daemon=True)
    thread.start()
    yield box
    box.server.shutdown()
    box.server.server_close()
    thread.join(timeout=5)


# --- the server process ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + "\n" + self.stderr.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_server(database_dsn: str, tmp: Path, admin_key: str, env_name: str) -> Server:
    port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": database_dsn,
        "PORT": str(port),
        "ENV": env_name,
        "ADMIN_API_KEY": admin_key,
        "AUTO_MIGRATE": "false",
        "LOG_LEVEL": "debug",
        "RATE_LIMIT_PER_MINUTE": "0",
        "SWEEPER_INTERVAL_SECONDS": "1",
        "WEBHOOK_DELIVERY": "true",
        "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
        "WEBHOOK_TIMEOUT_SECONDS": "2",
        "WEBHOOK_RETRY_BASE_SECONDS": "0.2",
        "EVENT_POLL_SECONDS": "0.2",
    }
    stdout, stderr = tmp / f"{env_name}.out", tmp / f"{env_name}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen([str(VIRTUALQ), "serve"], env=environment, stdout=out, stderr=err)
    server = Server(process, f"http://127.0.0.1:{port}", stdout, stderr)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, server.output()
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise AssertionError(server.output())


@pytest.fixture
def server_factory(database_dsn: str, tmp_path: Path) -> Iterator[Any]:
    started: list[Server] = []

    def start(admin_key: str, env_name: str) -> Server:
        server = start_server(database_dsn, tmp_path, admin_key, env_name)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# --- what counts as a leak ----------------------------------------------------------------------------------


def forms(secret: str) -> list[str]:
    """The secret, its significant middle part (a partial leak), and its SHA-256 digest as hex and base64."""
    digest = hashlib.sha256(secret.encode()).digest()
    middle = secret[len(secret) // 2 - 8 : len(secret) // 2 + 8]
    return [
        secret,
        middle,
        digest.hex(),
        base64.b64encode(digest).decode(),
        base64.urlsafe_b64encode(digest).decode(),
    ]


def request_lines(output: str, env_name: str) -> list[tuple[str, int]]:
    """(route, status) of every access-log line."""
    lines: list[tuple[str, int]] = []
    for line in output.splitlines():
        if env_name == "production":
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if entry.get("event") == "request":
                lines.append((entry["route"], int(entry["status"])))
        else:
            match = re.search(r"\brequest\b.*\broute=(\S+).*\bstatus=(\d+)", line)
            if match:
                lines.append((match[1], int(match[2])))
    return lines


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


# --- the test ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("env_name", ["development", "production"])
async def test_no_secret_reaches_the_logs(
    env_name: str, server_factory: Any, receiver: Receiver, db: asyncpg.Connection
) -> None:
    admin_key = "vq_admin_" + secrets.token_urlsafe(32)
    server: Server = await asyncio.to_thread(server_factory, admin_key, env_name)
    secrets_seen: dict[str, str] = {"ADMIN_API_KEY": admin_key}
    signatures: list[str] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        admin = {"Authorization": f"Bearer {admin_key}"}
        ok(await http.get("/healthz"))
        account = ok(await http.post("/v1/accounts", json={"name": "Logs"}, headers=admin), 201)
        tenant = ok(
            await http.post("/v1/tenants", json={"account_id": account["id"], "name": "T"}, headers=admin),
            201,
        )
        # The admin key through X-API-Key too.
        ok(await http.get("/v1/accounts", headers={"X-API-Key": admin_key}))

        # A tenant admin key, shown once, used as a Bearer token.
        created = ok(
            await http.post(
                "/v1/api-keys",
                json={"name": "admin", "scope": "tenant", "role": "admin", "tenant_id": tenant["id"]},
                headers=admin,
            ),
            201,
        )
        tenant_key = secrets_seen["tenant admin key"] = created["key"]
        bearer = {"Authorization": f"Bearer {tenant_key}"}
        typedef = ok(
            await http.post(
                "/v1/type-definitions", json={"type_code": "order", "type_name": "Order", "fsm_schema": FSM},
                headers=bearer,
            ),
            201,
        )  # fmt: skip
        queue = ok(await http.post("/v1/queues", json={"name": "Main"}, headers=bearer), 201)

        # A staff key used through X-API-Key, then revoked and refused.
        staff = ok(
            await http.post(
                "/v1/api-keys",
                json={"name": "staff", "scope": "tenant", "role": "staff", "tenant_id": tenant["id"]},
                headers=bearer,
            ),
            201,
        )
        staff_key = secrets_seen["staff key"] = staff["key"]
        ticket_body = {"queue_id": queue["id"], "type_definition_id": typedef["id"]}
        ticket = ok(await http.post("/v1/tickets", json=ticket_body, headers={"X-API-Key": staff_key}), 201)
        ok(await http.get(f"/v1/tickets/{ticket['id']}", headers={"X-API-Key": staff_key}))
        ok(await http.delete(f"/v1/api-keys/{staff['id']}", headers=bearer), 204)
        for headers in ({"X-API-Key": staff_key}, {"Authorization": f"Bearer {staff_key}"}):
            assert (await http.get("/v1/queues", headers=headers)).status_code == 401

        # Wrong keys of every shape.
        wrong = {
            "unknown key": "vq_" + secrets.token_urlsafe(32),
            "not a key": "nope-" + secrets.token_urlsafe(32),
            "near miss of the admin key": admin_key[:-1] + ("A" if admin_key[-1] != "A" else "B"),
        }
        secrets_seen.update(wrong)
        for value in wrong.values():
            assert (
                await http.get("/v1/queues", headers={"Authorization": f"Bearer {value}"})
            ).status_code == 401
            assert (await http.get("/v1/queues", headers={"X-API-Key": value})).status_code == 401
        basic = base64.b64encode(f"user:{wrong['unknown key']}".encode()).decode()
        secrets_seen["basic credentials"] = basic
        assert (await http.get("/v1/queues", headers={"Authorization": f"Basic {basic}"})).status_code == 401

        # A secret in a body the schema refuses (validation errors must not log the input).
        response = await http.post(
            "/v1/customers", json={"fname": "A", "api_key": tenant_key}, headers=bearer
        )
        assert response.status_code == 400

        # The ticket's customer link: its token in the query, then in the header; a wrong token too.
        token = secrets_seen["ticket token"] = ticket["customer_page"].split("token=", 1)[1]
        ok(await http.get(f"/v1/public/tickets/{ticket['id']}", params={"token": token}))
        ok(await http.get(f"/v1/public/tickets/{ticket['id']}", headers={"X-Ticket-Token": token}))
        assert (await http.get(ticket["customer_page"])).status_code == 200  # the page itself
        wrong_token = secrets_seen["wrong ticket token"] = secrets.token_hex(32)
        missing = await http.get(f"/v1/public/tickets/{ticket['id']}", params={"token": wrong_token})
        assert missing.status_code == 404

        # A webhook: the secret is shown once and signs a delivery to the receiver.
        # The receiver's URL carries its own secrets (Slack-style path token, query token): not ours to log.
        path_token = secrets_seen["webhook URL path token"] = secrets.token_urlsafe(24)
        query_token = secrets_seen["webhook URL query token"] = secrets.token_urlsafe(24)
        url = f"{receiver.url}/{path_token}?token={query_token}"
        hook = ok(await http.post("/v1/webhooks", json={"url": url}, headers=bearer), 201)
        webhook_secret = secrets_seen["webhook secret"] = hook["secret"]
        ok(await http.post("/v1/tickets", json=ticket_body, headers=bearer), 201)
        ok(await http.post(f"/v1/webhooks/{hook['id']}/test", headers=bearer), 201)
        deadline = time.monotonic() + 15
        while len(receiver.received) < 2:
            assert time.monotonic() < deadline, (receiver.received, server.output()[-3000:])
            await asyncio.sleep(0.05)
        for headers, body in receiver.received:
            signature = headers["x-virtualq-signature"]
            timestamp, mac = (part.split("=", 1)[1] for part in signature.split(","))
            expected = hmac.new(webhook_secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
            assert hmac.compare_digest(mac, expected.hexdigest())
            signatures.append(mac)

    # What the database keeps: digests of the keys, the token and the webhook secret (needed for signing).
    for name, row_id in (("tenant admin key", created["id"]), ("staff key", staff["id"])):
        stored = await db.fetchval("SELECT key_hash FROM api_keys WHERE id = $1", uuid.UUID(row_id))
        assert bytes(stored) == hashlib.sha256(secrets_seen[name].encode()).digest()
    stored_token = await db.fetchval(
        "SELECT public_token FROM tickets WHERE id = $1", uuid.UUID(ticket["id"])
    )
    assert stored_token == token

    await asyncio.to_thread(server.stop)
    output = server.output()

    leaks = {
        f"{name} ({form})": form
        for name, secret in secrets_seen.items()
        for form in forms(secret)
        if form in output
    }
    leaks.update({f"signature {mac}": mac for mac in signatures if mac in output})
    assert not leaks, leaks

    # ...and the logging did happen: the requests above are all in the access log.
    seen = request_lines(output, env_name)
    assert len(seen) >= 25, output[-3000:]
    for expected in (
        ("/v1/api-keys", 201),
        ("/v1/api-keys/{key_id}", 204),
        ("/v1/queues", 401),
        ("/v1/tickets", 201),
        ("/v1/customers", 400),
        ("/v1/public/tickets/{ticket_id}", 200),
        ("/v1/public/tickets/{ticket_id}", 404),
        ("/t/{ticket_id}", 200),
        ("/v1/webhooks", 201),
        ("/v1/accounts", 200),
    ):
        assert expected in seen, (expected, seen)
    assert sum(1 for route, status in seen if status == 401) >= 9


def test_a_refused_admin_key_is_not_echoed(tmp_path: Path) -> None:
    """An ADMIN_API_KEY that fails validation stops the server naming the variable, never its value."""
    short = "Sh0rt" + secrets.token_hex(6)  # under the 24 characters required
    environment = {**os.environ, "ADMIN_API_KEY": short, "VIRTUALQ_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [str(VIRTUALQ), "serve"], env=environment, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 2
    output = (result.stdout + result.stderr).decode()
    assert "ADMIN_API_KEY" in output
    assert short not in output


# --- at rest ------------------------------------------------------------------------------------------------


async def test_a_new_api_key_is_stored_only_as_its_digest(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Created with an Idempotency-Key (so that the response may be kept for retries), the plaintext key is
    still nowhere in the database: not in api_keys, not in a stored response."""
    from tests.conftest import ADMIN_KEY

    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    account = ok(await client.post("/v1/accounts", json={"name": "At rest"}, headers=admin), 201)
    body = {"name": "k", "scope": "account", "role": "staff", "account_id": account["id"]}
    headers = {**admin, "Idempotency-Key": f"rest-{uuid.uuid4()}"}
    created = ok(await client.post("/v1/api-keys", json=body, headers=headers), 201)
    key = created["key"]
    assert ok(await client.post("/v1/api-keys", json=body, headers=headers), 201)["id"] == created["id"]
    assert (await client.get("/v1/tenants", headers={"Authorization": f"Bearer {key}"})).status_code == 200
    tables = [
        row["tablename"]
        for row in await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    ]
    needles = [key, key.encode().hex()]  # bytea columns read as hex
    found = {}
    for table in tables:
        hits = await db.fetchval(
            f'SELECT count(*) FROM "{table}" t WHERE strpos(t::text, $1) > 0 OR strpos(t::text, $2) > 0',
            *needles,
        )
        if hits:
            found[table] = hits
    assert not found, found
