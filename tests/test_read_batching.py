"""Reads of one ticket that arrive together share a statement (tickets/reads.py over kit/lines.py).

Through the app, against PostgreSQL: concurrent reads get exactly what reads one at a time get, in fewer
statements; a tenant's batch never answers another tenant's ticket; a read sees every change committed
before it was sent. Then the line itself, with a fetch function of the test's own: a failed or cancelled
batch leaves each read to run alone, cancelled waiters are skipped, and no line is left behind."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from tests.conftest import make_settings
from tests.helpers import Api, assert_error
from tests.test_create_batching import sample
from tests.test_ticket_flows import Tenant, coffee
from virtualq.app import create_app
from virtualq.tickets.reads import IN_FLIGHT, ReadBatching


async def read(t: Tenant, ticket_id: str) -> httpx.Response:
    return await t.client.get(f"/v1/tickets/{ticket_id}", headers=t.h)


def without_estimate(ticket: dict[str, Any]) -> dict[str, Any]:
    # The estimate follows the line's pace, which may be recomputed between two reads.
    return {key: value for key, value in ticket.items() if key != "estimated_wait_minutes"}


async def test_concurrent_reads_share_statements_and_answer_as_single_reads(
    app: Any, client: httpx.AsyncClient, api: Api
) -> None:
    t, queue_id, order_id = await coffee(client, api)
    tickets = [await t.ticket(queue_id, order_id) for _ in range(12)]
    await t.move(tickets[3]["id"], "start_preparation")  # one not waiting: no position
    alone = {ticket["id"]: (await read(t, ticket["id"])).json() for ticket in tickets}
    assert alone[tickets[3]["id"]]["position"] is None
    assert [alone[ticket["id"]]["position"] for ticket in tickets[4:]] == list(range(4, 12))

    statements = sample(app, "virtualq_ticket_read_statements_total")
    reads = sample(app, "virtualq_ticket_reads_total")
    missing = str(uuid.uuid4())
    # Each ticket three times over, and an unknown one among them.
    targets = [ticket["id"] for ticket in tickets] * 3 + [missing]
    answers = await asyncio.gather(*(read(t, target) for target in targets))

    assert sample(app, "virtualq_ticket_reads_total") - reads == len(targets)
    used = sample(app, "virtualq_ticket_read_statements_total") - statements
    assert used < len(targets) / 2, f"{len(targets)} concurrent reads took {used} statements"
    for target, answer in zip(targets, answers, strict=True):
        if target == missing:
            assert_error(answer, 404, "not_found")
            continue
        assert answer.status_code == 200, answer.text
        assert without_estimate(answer.json()) == without_estimate(alone[target])
        assert answer.headers["etag"] == f'"{alone[target]["version"]}"'
    assert app.state.read_batching._lines.idle()


async def test_a_batch_never_answers_another_tenants_ticket(client: httpx.AsyncClient, api: Api) -> None:
    a, a_queue, a_type = await coffee(client, api)
    b, b_queue, b_type = await coffee(client, api)
    a_tickets = [(await a.ticket(a_queue, a_type))["id"] for _ in range(6)]
    b_tickets = [(await b.ticket(b_queue, b_type))["id"] for _ in range(6)]

    # Each tenant reads its own tickets and the other's, all at once, several times over.
    jobs = [(a, ticket_id, ticket_id in a_tickets) for ticket_id in a_tickets + b_tickets] * 3
    jobs += [(b, ticket_id, ticket_id in b_tickets) for ticket_id in a_tickets + b_tickets] * 3
    answers = await asyncio.gather(*(read(tenant, ticket_id) for tenant, ticket_id, _ in jobs))

    for (tenant, ticket_id, own), answer in zip(jobs, answers, strict=True):
        if own:
            assert answer.status_code == 200, answer.text
            assert answer.json()["id"] == ticket_id
            assert answer.json()["tenant_id"] == tenant.id
        else:
            assert_error(answer, 404, "not_found")
            assert ticket_id not in answer.text


async def test_a_read_sees_every_change_committed_before_it(client: httpx.AsyncClient, api: Api) -> None:
    t, queue_id, order_id = await coffee(client, api)
    tickets = [(await t.ticket(queue_id, order_id))["id"] for _ in range(8)]
    steps = ["start_preparation", "mark_ready", "pickup"]

    async def walk(ticket_id: str) -> None:
        # Other tickets are read all the while, so this ticket's reads join batches already waiting.
        for step in steps:
            moved = await t.move(ticket_id, step)
            seen = (await read(t, ticket_id)).json()
            assert seen["version"] == moved["version"], (ticket_id, step)
            assert seen["current_state"] == moved["current_state"]

    async def noise() -> None:
        for _ in range(10):
            await asyncio.gather(*(read(t, ticket_id) for ticket_id in tickets))

    await asyncio.gather(*(walk(ticket_id) for ticket_id in tickets), noise())


async def test_one_statement_per_read_when_batching_is_off(database_dsn: str, api: Api) -> None:
    application = create_app(make_settings(read_batch_max=1), dsn=database_dsn)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            t, queue_id, order_id = await coffee(client, Api(client, api.admin_key))
            ticket = await t.ticket(queue_id, order_id)
            answers = await asyncio.gather(*(read(t, ticket["id"]) for _ in range(20)))
    assert all(answer.status_code == 200 for answer in answers)
    assert sample(application, "virtualq_ticket_read_statements_total") == 20
    assert sample(application, "virtualq_ticket_reads_total") == 20


# The line on its own, with a fetch of the test's own.


class Fetcher:
    """Answers each id with a ticket of its own, after a pause; records the batches; fails on demand."""

    def __init__(self, fail_batches: bool = False) -> None:
        self.batches: list[list[uuid.UUID]] = []
        self.fail_batches = fail_batches
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, ticket_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
        self.batches.append(ticket_ids)
        await self.gate.wait()
        await asyncio.sleep(0.01)
        if self.fail_batches and len(ticket_ids) > 1:
            raise RuntimeError("the batch failed")
        return {ticket_id: {"id": ticket_id} for ticket_id in ticket_ids}


async def waiting(batching: ReadBatching, tenant: uuid.UUID, count: int) -> None:
    """Until `count` reads of the tenant wait in its line."""
    for _ in range(500):
        line = batching._lines._lines.get((asyncio.get_running_loop(), tenant))
        if line is not None and len(line.waiting) == count:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never {count} waiting")


async def queued(
    fetch: Fetcher, waiters: int
) -> tuple[ReadBatching, list[uuid.UUID], list[asyncio.Task[Any]]]:
    """With `fetch` held at its gate: IN_FLIGHT reads of one tenant leading, and `waiters` more waiting."""
    batching = ReadBatching()
    fetch.gate.clear()
    tenant = uuid.uuid4()
    ids = [uuid.uuid4() for _ in range(IN_FLIGHT + waiters)]
    tasks = [asyncio.create_task(batching.read(tenant, ticket_id, fetch)) for ticket_id in ids]
    await waiting(batching, tenant, waiters)
    return batching, ids, tasks


async def test_reads_arriving_together_share_a_statement_up_to_max_batch() -> None:
    batching = ReadBatching(max_batch=5)
    fetch = Fetcher()
    tenant = uuid.uuid4()
    ids = [uuid.uuid4() for _ in range(20)]
    found = await asyncio.gather(*(batching.read(tenant, ticket_id, fetch) for ticket_id in ids))
    assert [ticket["id"] if ticket else None for ticket in found] == ids
    # The first IN_FLIGHT lead alone, the rest go in batches of at most five, each id read once.
    assert [len(batch) for batch in fetch.batches[:IN_FLIGHT]] == [1] * IN_FLIGHT
    assert max(len(batch) for batch in fetch.batches) == 5
    assert sorted(ticket_id for batch in fetch.batches for ticket_id in batch) == sorted(ids)
    assert len(fetch.batches) < len(ids)
    assert batching._lines.idle()


async def test_two_reads_of_one_ticket_get_answers_of_their_own() -> None:
    batching = ReadBatching()
    fetch = Fetcher()
    tenant, ticket_id = uuid.uuid4(), uuid.uuid4()
    found = await asyncio.gather(*(batching.read(tenant, ticket_id, fetch) for _ in range(8)))
    assert all(ticket == {"id": ticket_id} for ticket in found)
    assert len({id(ticket) for ticket in found}) == 8
    assert all(len(batch) == 1 for batch in fetch.batches)  # one id per statement, however many reads


async def test_tenants_have_lines_of_their_own() -> None:
    batching = ReadBatching()
    fetch = Fetcher()
    fetch.gate.clear()
    first, second = uuid.uuid4(), uuid.uuid4()
    tasks = [asyncio.create_task(batching.read(first, uuid.uuid4(), fetch)) for _ in range(IN_FLIGHT + 3)]
    await waiting(batching, first, 3)
    # The first tenant's statements are all busy; the second tenant's read still leads at once.
    other = asyncio.create_task(batching.read(second, uuid.uuid4(), fetch))
    await asyncio.sleep(0.005)
    assert len(fetch.batches) == IN_FLIGHT + 1
    fetch.gate.set()
    await asyncio.gather(*tasks, other)
    assert batching._lines.idle()


async def test_a_failed_batch_leaves_each_read_to_run_alone() -> None:
    fetch = Fetcher(fail_batches=True)
    batching, ids, tasks = await queued(fetch, 4)
    fetch.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    # The four waiting went into one batch, which failed: its leader gets the error, the others read alone.
    assert len(fetch.batches[IN_FLIGHT]) == 4
    failed = [n for n, result in enumerate(results) if isinstance(result, RuntimeError)]
    assert failed == [IN_FLIGHT]
    for n, result in enumerate(results):
        if n not in failed:
            assert result == {"id": ids[n]}
    assert batching._lines.idle()


async def test_a_cancelled_leader_or_waiter_does_not_stop_the_line() -> None:
    fetch = Fetcher()
    batching, ids, tasks = await queued(fetch, 4)
    tasks[0].cancel()  # a leader, mid-statement: its place goes to the next batch
    tasks[IN_FLIGHT + 3].cancel()  # a waiter: skipped
    await asyncio.sleep(0.005)
    fetch.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert isinstance(results[IN_FLIGHT + 3], asyncio.CancelledError)
    for n in range(1, IN_FLIGHT + 3):
        assert results[n] == {"id": ids[n]}
    assert ids[IN_FLIGHT + 3] not in [ticket_id for batch in fetch.batches for ticket_id in batch]
    assert batching._lines.idle()


async def test_a_leader_cancelled_as_it_is_handed_a_batch_leaves_the_others_to_run_alone() -> None:
    fetch = Fetcher()
    batching, ids, tasks = await queued(fetch, 3)
    # The first waiter is cancelled in the same step as it is handed the batch it would lead.
    hand_over = batching._lines.hand_over
    handed: list[bool] = []

    def hand_over_then_cancel(key: Any) -> None:
        hand_over(key)
        if not handed:
            handed.append(True)
            tasks[IN_FLIGHT].cancel()

    batching._lines.hand_over = hand_over_then_cancel  # type: ignore[method-assign]
    fetch.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[IN_FLIGHT], asyncio.CancelledError)
    for n, result in enumerate(results):
        if n != IN_FLIGHT:
            assert result == {"id": ids[n]}, (n, result)
    assert batching._lines.idle()


async def test_max_batch_one_reads_each_alone() -> None:
    batching = ReadBatching(max_batch=1)
    fetch = Fetcher()
    ids = [uuid.uuid4() for _ in range(6)]
    found = await asyncio.gather(*(batching.read(uuid.uuid4(), ticket_id, fetch) for ticket_id in ids))
    assert [ticket["id"] if ticket else None for ticket in found] == ids
    assert all(len(batch) == 1 for batch in fetch.batches)
