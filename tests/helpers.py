"""A thin client for tests: set up accounts, tenants and keys through the public API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx


def auth(key: str, tenant_id: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if tenant_id:
        headers["X-Tenant-ID"] = tenant_id
    return headers


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is the error envelope with this status and code."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code, body
    assert set(body) == {"error", "message", "details", "request_id"}, body
    assert isinstance(body["message"], str)
    assert body["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


@dataclass
class World:
    """One account with one tenant, and an admin key for each scope."""

    account_id: str
    tenant_id: str
    account_admin: str
    tenant_admin: str


class Api:
    def __init__(self, client: httpx.AsyncClient, admin_key: str) -> None:
        self.client = client
        self.admin_key = admin_key

    async def post(
        self, path: str, body: dict[str, Any], key: str | None = None, tenant_id: str | None = None
    ) -> dict[str, Any]:
        response = await self.client.post(path, json=body, headers=auth(key or self.admin_key, tenant_id))
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    async def account(self, name: str = "Test account") -> dict[str, Any]:
        return await self.post("/v1/accounts", {"name": name})

    async def tenant(self, account_id: str, name: str = "Test tenant", **fields: Any) -> dict[str, Any]:
        return await self.post("/v1/tenants", {"account_id": account_id, "name": name, **fields})

    async def key(self, scope: str, role: str, key: str | None = None, **owner: Any) -> str:
        body = {"name": f"{scope}-{role}", "scope": scope, "role": role, **owner}
        created = await self.post("/v1/api-keys", body, key=key)
        secret: str = created["key"]
        return secret

    async def world(self) -> World:
        account = await self.account(f"Account {uuid.uuid4().hex[:6]}")
        tenant = await self.tenant(account["id"])
        return World(
            account_id=account["id"],
            tenant_id=tenant["id"],
            account_admin=await self.key("account", "admin", account_id=account["id"]),
            tenant_admin=await self.key("tenant", "admin", tenant_id=tenant["id"]),
        )


async def assert_cancel_right_after_a_wake_up_stops(
    task: asyncio.Task[None], wake: Callable[[], None], settle: int
) -> None:
    """Cancel a background loop (as its stop() does) just as `wake()` lets its wait complete, `settle` loop
    turns later: the loop must end within 2 s (Python 3.11's asyncio.wait_for would swallow this one)."""
    wake()
    for _ in range(settle):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert task in done, f"the loop swallowed its cancellation (settle={settle})"
    assert task.cancelled()


async def raw_exchange(port: int, raw: bytes, until: bytes | None, count: int = 1) -> bytes:
    """Send `raw` to the server on loopback `port` in one write; read until `until` has come `count` times,
    or (None) until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        received = b""
        async with asyncio.timeout(10):
            while until is None or received.count(until) < count:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                received += chunk
        return received
    finally:
        writer.close()
