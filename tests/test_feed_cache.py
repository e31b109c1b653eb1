"""The shared answers of the monitor feed and queue tickets (queues/feed_cache.py): repeated reads cost no
query, a write through the same process is read back at once, a write through another process within the
event hub's delay, and roles and tenants never share an answer."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings
from tests.helpers import Api, auth
from tests.test_ticket_flows import coffee, ok
from virtualq.app import create_app
from virtualq.errors import NotFound
from virtualq.queues.feed_cache import FeedCache


class Statements:
    def __init__(self) -> None:
        self.count = 0
        self.texts: list[str] = []

    def __call__(self, record: Any) -> None:
        if not re.search(r"FROM events\s+WHERE", record.query):  # the event hub's own reads
            self.count += 1
            self.texts.append(record.query)


@pytest.fixture(scope="module")
async def cached(database_dsn: str) -> AsyncIterator[tuple[httpx.AsyncClient, Statements]]:
    """A second server on the database, keeping answers for 30 s: only changes make it ask again."""
    statements = Statements()
    application = create_app(
        make_settings(feed_cache_seconds=30, auth_cache_seconds=60), dsn=database_dsn, query_logger=statements
    )
    async with (
        application.router.lifespan_context(application),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://cached") as http,
    ):
        yield http, statements


async def test_repeated_reads_are_answered_without_a_query(
    cached: tuple[httpx.AsyncClient, Statements], client: httpx.AsyncClient, api: Api
) -> None:
    http, statements = cached
    t, queue, order = await coffee(client, api)
    await t.ticket(queue, order)
    for path in (f"/v1/queues/{queue}/monitor", f"/v1/queues/{queue}/tickets"):
        first = ok(await http.get(path, headers=t.h))
        for _ in range(50):
            # The ticket's event may reach this process's hub while the first answer is computed: that
            # answer is then not kept (it might predate the change), and the next read computes it again.
            again = ok(await http.get(path, headers=t.h))
            if again == first:
                break
            first = again
        statements.count = 0
        kept = shared(http, "kept")
        for _ in range(5):
            assert ok(await http.get(path, headers=t.h)) == first
        assert statements.count == 0, path
        assert shared(http, "kept") - kept == 5
    # Another page, limit or filter is another question.
    statements.count = 0
    ok(await http.get(f"/v1/queues/{queue}/tickets", params={"limit": 5}, headers=t.h))
    ok(await http.get(f"/v1/queues/{queue}/monitor", params={"exclude": "channel:web"}, headers=t.h))
    assert statements.count > 0


async def test_a_shared_answer_needs_no_database_connection(database_dsn: str, api: Api) -> None:
    """With every pool connection busy (a burst of writes, a slow statement), displays still get the shared
    answer at once: the route takes a connection only to compute it, not before looking it up."""
    application = create_app(
        make_settings(feed_cache_seconds=30, auth_cache_seconds=60, db_pool_min_size=1, db_pool_max_size=1),
        dsn=database_dsn,
    )
    async with (
        application.router.lifespan_context(application),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://one") as http,
    ):
        t, queue, order = await coffee(http, Api(http, api.admin_key))
        await t.ticket(queue, order)
        paths = (f"/v1/queues/{queue}/monitor", f"/v1/queues/{queue}/tickets")
        answers = {}
        for path in paths:
            answers[path] = ok(await http.get(path, headers=t.h))
            for _ in range(50):  # until an answer is kept (see above)
                again = ok(await http.get(path, headers=t.h))
                if again == answers[path]:
                    break
                answers[path] = again
        async with application.state.pool.acquire():  # the only connection is taken
            async with asyncio.timeout(2):  # the pool would wait 10 s for it
                for path in paths:
                    assert ok(await http.get(path, headers=t.h)) == answers[path]


async def test_a_write_here_is_read_back_at_once(
    cached: tuple[httpx.AsyncClient, Statements], client: httpx.AsyncClient, api: Api
) -> None:
    http, _ = cached
    t, queue, order = await coffee(client, api)
    assert ok(await http.get(f"/v1/queues/{queue}/monitor", headers=t.h))["counts"]["waiting"] == 0
    assert ok(await http.get(f"/v1/queues/{queue}/tickets", headers=t.h))["data"] == []
    body = {"queue_id": queue, "type_definition_id": order}
    created = ok(await http.post("/v1/tickets", json=body, headers=t.h), 201)
    assert ok(await http.get(f"/v1/queues/{queue}/monitor", headers=t.h))["counts"]["waiting"] == 1
    listed = ok(await http.get(f"/v1/queues/{queue}/tickets", headers=t.h))
    assert [row["id"] for row in listed["data"]] == [created["id"]]
    ok(await http.post(f"/v1/queues/{queue}/call-next", json={}, headers=t.h))
    counts = ok(await http.get(f"/v1/queues/{queue}/monitor", headers=t.h))["counts"]
    assert (counts["waiting"], counts["in_service"]) == (0, 1)


async def test_a_write_through_another_process_is_seen_once_its_event_arrives(
    cached: tuple[httpx.AsyncClient, Statements], client: httpx.AsyncClient, api: Api
) -> None:
    http, _ = cached
    t, queue, order = await coffee(client, api)
    assert ok(await http.get(f"/v1/queues/{queue}/monitor", headers=t.h))["counts"]["waiting"] == 0
    await t.ticket(queue, order)  # through the session's app: to this one, another process
    started = time.monotonic()
    while ok(await http.get(f"/v1/queues/{queue}/monitor", headers=t.h))["counts"]["waiting"] != 1:
        assert time.monotonic() - started < 3.0, (
            "the cached answer outlived the change by 3 s (its limit is 30)"
        )
        await asyncio.sleep(0.05)


async def test_roles_and_tenants_never_share_an_answer(
    cached: tuple[httpx.AsyncClient, Statements], client: httpx.AsyncClient, api: Api
) -> None:
    http, _ = cached
    t, queue, order = await coffee(client, api)
    await t.ticket(queue, order, custom_data={"name": "Ada Lovelace"})
    display = await api.key("tenant", "display", tenant_id=t.id)
    as_admin = ok(await http.get(f"/v1/queues/{queue}/tickets", headers=t.h))
    as_display = ok(await http.get(f"/v1/queues/{queue}/tickets", headers=auth(display)))
    assert as_admin["data"][0]["custom_data"] == {"name": "Ada Lovelace"}
    assert as_display["data"][0]["custom_data"] == {}
    again = ok(await http.get(f"/v1/queues/{queue}/tickets", headers=t.h))
    assert again["data"][0]["custom_data"] == {"name": "Ada Lovelace"}

    other, other_queue, _ = await coffee(client, api)
    # The same question from another tenant about this queue: not found, not this tenant's cached answer.
    foreign = await http.get(f"/v1/queues/{queue}/tickets", headers=other.h)
    assert foreign.status_code == 404
    assert ok(await http.get(f"/v1/queues/{other_queue}/tickets", headers=other.h))["data"] == []


async def test_requests_asking_together_share_one_computation(
    cached: tuple[httpx.AsyncClient, Statements], client: httpx.AsyncClient, api: Api
) -> None:
    """When an answer is dropped (a change, or its time is up), the 20 displays asking at that moment cost
    one computation, not 20 (they were queue tickets' and the monitor's p99 under load): every statement
    the answer takes runs once."""
    http, statements = cached
    t, queue, order = await coffee(client, api)
    await t.ticket(queue, order)
    cache = http._transport.app.state.feed_cache  # type: ignore[attr-defined]
    for path in (f"/v1/queues/{queue}/monitor?limit=7", f"/v1/queues/{queue}/tickets?limit=7"):
        for _ in range(100):  # until the ticket's event has reached this process's hub (it drops answers)
            ok(await http.get(path, headers=t.h))
            statements.texts.clear()
            ok(await http.get(path, headers=t.h))
            if not statements.texts:
                break
            await asyncio.sleep(0.02)
        cache.forget(uuid.UUID(t.id))
        await asyncio.sleep(0.01)  # asyncpg calls the statement logger after the answer: let it
        statements.texts.clear()
        alone = ok(await http.get(path, headers=t.h))
        alone.pop("generated_at", None)
        assert statements.texts
        cache.forget(uuid.UUID(t.id))
        await asyncio.sleep(0.01)
        statements.texts.clear()
        before = {outcome: shared(http, outcome) for outcome in ("kept", "computed", "waited")}
        answers = await asyncio.gather(*(http.get(path, headers=t.h) for _ in range(20)))
        counted = {outcome: shared(http, outcome) - before[outcome] for outcome in before}
        assert counted["kept"] == 0
        assert counted["computed"] in (1, 2)  # see below
        assert counted["computed"] + counted["waited"] == 20
        await asyncio.sleep(0.01)
        bodies = [ok(answer) for answer in answers]
        for body in bodies:
            body.pop("generated_at", None)
            assert body == alone
        ran = Counter(text for text in statements.texts if "set_config(" not in text)
        assert ran
        # Once; twice if the ticket's event reached this process's hub only now and dropped the answer
        # mid-way (one computation each side of it). Without sharing: 20 times.
        assert max(ran.values()) <= 2, (path, ran.most_common(1))


def shared(http: httpx.AsyncClient, outcome: str) -> float:
    """virtualq_shared_answers_total{outcome} of the app behind `http`."""
    registry = http._transport.app.state.metrics.registry  # type: ignore[attr-defined]
    return float(registry.get_sample_value("virtualq_shared_answers_total", {"outcome": outcome}) or 0.0)


async def test_concurrent_refusals_are_each_answered(
    cached: tuple[httpx.AsyncClient, Statements], api: Api
) -> None:
    """Another tenant's queue asked about five times at once: each is refused (404, none a 500 from the
    shared refusal), and the owner asking at the same time is answered."""
    http, _ = cached
    t, queue, _ = await coffee(http, Api(http, api.admin_key))
    other, _, _ = await coffee(http, Api(http, api.admin_key))
    asked = [http.get(f"/v1/queues/{queue}/tickets", headers=other.h) for _ in range(5)]
    asked += [http.get(f"/v1/queues/{queue}/tickets", headers=t.h)]
    answers = await asyncio.gather(*asked)
    assert [answer.status_code for answer in answers] == [404] * 5 + [200]
    assert {answer.json()["error"] for answer in answers[:5]} == {"not_found"}


async def test_a_refusal_is_shared_with_the_requests_waiting_for_it() -> None:
    cache = FeedCache(30)
    tenant = uuid.uuid4()
    release = asyncio.Event()
    calls: list[str] = []

    async def refused() -> bytes:
        calls.append("refused")
        await release.wait()
        raise NotFound("queue not found", {"resource": "queue"})

    async def never() -> bytes:
        calls.append("never")
        return b"never"

    leader = asyncio.create_task(cache.answer(tenant, "q", refused))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(cache.answer(tenant, "q", never)) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    outcomes = await asyncio.gather(leader, *waiters, return_exceptions=True)
    assert calls == ["refused"]
    for outcome in outcomes:
        assert isinstance(outcome, NotFound)
        assert (outcome.message, outcome.details) == ("queue not found", {"resource": "queue"})
    assert len({id(outcome) for outcome in outcomes}) == 4  # each request raises its own


async def test_after_a_cancelled_computation_one_waiting_request_computes_for_the_others() -> None:
    cache = FeedCache(30)
    tenant = uuid.uuid4()
    release = asyncio.Event()
    calls: list[str] = []

    async def slow() -> bytes:
        calls.append("slow")
        await release.wait()
        return b"slow"

    async def quick() -> bytes:
        calls.append("quick")
        await asyncio.sleep(0)
        return b"quick"

    leader = asyncio.create_task(cache.answer(tenant, "q", slow))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(cache.answer(tenant, "q", quick)) for _ in range(3)]
    await asyncio.sleep(0)
    assert calls == ["slow"]  # the others wait for the first's answer
    leader.cancel()
    assert await asyncio.gather(*waiters) == [b"quick"] * 3
    assert calls == ["slow", "quick"]  # one of them computed it, the other two waited for that
    assert cache.lookup(tenant, "q")[0] == b"quick"


async def test_a_cancelled_waiting_request_leaves_the_computation_alone() -> None:
    cache = FeedCache(30)
    tenant = uuid.uuid4()
    release = asyncio.Event()

    async def slow() -> bytes:
        await release.wait()
        return b"slow"

    leader = asyncio.create_task(cache.answer(tenant, "q", slow))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(cache.answer(tenant, "q", slow))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    assert await leader == b"slow"
    assert cache.lookup(tenant, "q")[0] == b"slow"


async def test_a_request_after_a_change_does_not_wait_for_an_answer_from_before_it() -> None:
    cache = FeedCache(30)
    tenant = uuid.uuid4()
    release = asyncio.Event()

    async def before() -> bytes:
        await release.wait()
        return b"before"

    async def after() -> bytes:
        return b"after"

    first = asyncio.create_task(cache.answer(tenant, "q", before))
    await asyncio.sleep(0)
    cache.forget(tenant)  # a change commits while the first answer is being computed
    assert await cache.answer(tenant, "q", after) == b"after"
    release.set()
    assert await first == b"before"  # its own question, asked before the change
    assert cache.lookup(tenant, "q")[0] == b"after"  # and not kept over the newer answer


async def test_with_the_cache_off_every_request_computes_and_is_counted_so() -> None:
    outcomes: list[str] = []
    cache = FeedCache(0, outcomes.append)
    tenant = uuid.uuid4()
    computed: list[int] = []

    async def compute() -> bytes:
        computed.append(1)
        await asyncio.sleep(0)
        return b"fresh"

    assert await asyncio.gather(*(cache.answer(tenant, "q", compute) for _ in range(3))) == [b"fresh"] * 3
    assert len(computed) == 3
    assert outcomes == ["uncached"] * 3
