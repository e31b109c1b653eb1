"""Round trips per request on the main endpoints, and no N+1: a request's query count does not grow with the
number of tickets it returns. Also EXPLAIN checks that the main queries use their indexes."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import make_settings
from tests.helpers import Api, auth
from tests.test_ticket_flows import FOOD_ORDER_FSM, Tenant, ok
from virtualq import sweeper
from virtualq.app import create_app
from virtualq.events import repository as events_repository
from virtualq.kit.responses import project, project_rows
from virtualq.tickets import service
from virtualq.tickets.repository import POSITION, TICKET_COLUMNS, TICKETS_BY_IDS
from virtualq.webhooks import repository as webhooks_repository


class Counter:
    def __init__(self) -> None:
        self.queries: list[str] = []

    def __call__(self, record: Any) -> None:
        # The event hub reads the log in the background; it is not part of any request.
        query = " ".join(record.query.split())
        if "FROM events WHERE (tx_id, id) >" in query:  # the hub's reads, not part of any request
            return
        if "typeinfo_tree" in query or "'jit'" in query:  # asyncpg's once-per-connection type introspection
            return
        self.queries.append(query)


@pytest.fixture(scope="module")
async def counted(database_dsn: str) -> AsyncIterator[tuple[httpx.AsyncClient, Counter]]:
    counter = Counter()
    # Keys cached for a minute: on a slow run a 1 s cache could expire between warm-up and measurement.
    application = create_app(make_settings(auth_cache_seconds=60), dsn=database_dsn, query_logger=counter)
    async with (
        application.router.lifespan_context(application),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://counted") as http,
    ):
        yield http, counter


async def count(counter: Counter, request: Any) -> tuple[int, httpx.Response]:
    counter.queries.clear()
    response = await request
    return len(counter.queries), response


# Round trips each endpoint makes once the API key and tenant are cached and the pooled connection already
# carries the tenant's row-security scope (a connection switching tenants adds one), BEGIN and COMMIT included
# (docs/performance.md). A change that adds one fails here and has to say why.
BUDGET = {
    "create ticket": 3,  # queue+timezone+type, departures, number+insert+position+history+event (no BEGIN)
    # The update+history+events if the ticket is still at the version this process's last write of it
    # left (the create here; service.remember_written); otherwise the ticket is read first (2).
    "transition": 1,
    "transition again": 1,
    "transition, not remembered": 2,  # the ticket (no lock), then the update as above
    "get ticket": 1,  # the ticket (the line's pace is shared between requests for up to a second)
    "queue tickets": 2,  # queue, page
    "monitor": 3,  # queue, waiting types, the feed as JSON
    "call next": 1,  # queue check, lock first, update+history+events: one statement (its plan is learnt)
    "cancel after call next": 1,  # call-next's answer is remembered as the ticket's last write
}


async def test_round_trips_per_request_and_no_n_plus_one(
    counted: tuple[httpx.AsyncClient, Counter], api: Api, client: httpx.AsyncClient
) -> None:
    http, counter = counted
    t = await Tenant.create(client, api)
    order = await t.type("order", FOOD_ORDER_FSM)
    queue = await t.queue("Main")
    h = auth(t.world.tenant_admin)

    def create() -> Any:
        return http.post(
            "/v1/tickets", json={"queue_id": queue["id"], "type_definition_id": order["id"]}, headers=h
        )

    async def measure() -> dict[str, int]:
        seen: dict[str, int] = {}
        seen["create ticket"], response = await count(counter, create())
        ticket = ok(response, 201)
        seen["get ticket"], _ = await count(counter, http.get(f"/v1/tickets/{ticket['id']}", headers=h))
        seen["queue tickets"], _ = await count(
            counter, http.get(f"/v1/queues/{queue['id']}/tickets", headers=h)
        )
        seen["monitor"], _ = await count(counter, http.get(f"/v1/queues/{queue['id']}/monitor", headers=h))
        body = {"transition": "start_preparation"}
        seen["transition"], _ = await count(
            counter, http.post(f"/v1/tickets/{ticket['id']}/transition", json=body, headers=h)
        )
        seen["transition again"], response = await count(
            counter,
            http.post(f"/v1/tickets/{ticket['id']}/transition", json={"transition": "mark_ready"}, headers=h),
        )
        assert ok(response)["current_state"] == "ready"
        service.forget_last_written()  # as if another process had made the last change
        seen["transition, not remembered"], response = await count(
            counter,
            http.post(f"/v1/tickets/{ticket['id']}/transition", json={"transition": "pickup"}, headers=h),
        )
        assert ok(response)["current_state"] == "picked_up"
        ok(await create(), 201)  # someone to call (the ticket above has left the line)
        seen["call next"], response = await count(
            counter, http.post(f"/v1/queues/{queue['id']}/call-next", json={}, headers=h)
        )
        seen["cancel after call next"], response = await count(
            counter, http.delete(f"/v1/tickets/{ok(response)['id']}", headers=h)
        )
        assert ok(response)["current_state"] == "cancelled"
        return seen

    ok(await create(), 201)
    await measure()  # warm up: the API key and tenant cached, asyncpg's type introspection done
    seen = await measure()
    over = {name: (seen[name], limit) for name, limit in BUDGET.items() if seen[name] > limit}
    assert over == {}, (over, seen)

    # Ten times the tickets, the same number of statements.
    small = {name: seen[name] for name in ("queue tickets", "monitor")}
    for _ in range(30):
        ok(await create(), 201)
    large = {
        "queue tickets": (await count(counter, http.get(f"/v1/queues/{queue['id']}/tickets", headers=h)))[0],
        "monitor": (await count(counter, http.get(f"/v1/queues/{queue['id']}/monitor", headers=h)))[0],
    }
    assert large == small
    listed, _ = await count(counter, http.get("/v1/tickets", params={"limit": 100}, headers=h))
    assert listed <= 3  # the page, then one estimate load per queue on it


# The other changes of a ticket: each writes its row, history and event in one statement; the rest are the
# locks and reads the change needs first. BEGIN and COMMIT included.
OTHER_CHANGES_BUDGET = {
    # update+history+events if still at the version the create left (as a transition; no BEGIN/COMMIT)
    "cancel": 1,
    "update": 4,  # BEGIN, lock the ticket with its type, update+event, COMMIT
    "assign": 5,  # BEGIN, lock, the employee is active, update+event, COMMIT
    "unassign": 4,  # BEGIN, lock, update+event, COMMIT
    "reorder": 7,  # BEGIN, lock, lock the line, old position, new key, move+position+event, COMMIT
    "forward": 5,  # BEGIN, lock, lock the target line, move+position+event, COMMIT (to its end)
}


async def test_round_trips_of_the_other_ticket_changes(
    counted: tuple[httpx.AsyncClient, Counter], api: Api, client: httpx.AsyncClient
) -> None:
    http, counter = counted
    t = await Tenant.create(client, api)
    order = await t.type("order", FOOD_ORDER_FSM)
    queue, other = await t.queue("Main"), await t.queue("Other")
    h = auth(t.world.tenant_admin)
    employee = ok(
        await http.post(
            "/v1/employees", json={"fname": "Ana", "lname": "Lopez", "email": "a@example.com"}, headers=h
        ),
        201,
    )

    async def measure() -> dict[str, int]:
        ids = []
        for _ in range(4):
            body = {"queue_id": queue["id"], "type_definition_id": order["id"]}
            ids.append(ok(await http.post("/v1/tickets", json=body, headers=h), 201)["id"])
        changes = {
            "update": http.patch(f"/v1/tickets/{ids[1]}", json={"custom_data": {"table": 4}}, headers=h),
            "assign": http.post(
                f"/v1/tickets/{ids[1]}/assign", json={"employee_id": employee["id"]}, headers=h
            ),
            "unassign": http.post(f"/v1/tickets/{ids[1]}/unassign", headers=h),
            "reorder": http.post(f"/v1/tickets/{ids[3]}/reorder", json={"position": 1}, headers=h),
            "forward": http.post(
                f"/v1/tickets/{ids[2]}/forward", json={"target_queue_id": other["id"]}, headers=h
            ),
            # Last: a cancel is the ticket's first departure from the line, which drops the line's shared
            # pace, so the next change in this queue reads it again (two round trips).
            "cancel": http.delete(f"/v1/tickets/{ids[0]}", headers=h),
        }
        seen = {}
        for name, request in changes.items():
            seen[name], response = await count(counter, request)
            ok(response, 200)
        return seen

    await measure()  # warm up: key, tenant and both lines' pace cached
    seen = await measure()
    assert seen == OTHER_CHANGES_BUDGET


async def plan(db: asyncpg.Connection, sql: str, *args: Any) -> str:
    """The plan with sequential scans and sorts made the last resort: on small test tables, with whatever
    statistics the earlier tests left, which index can serve the query, in the order it asks for (with
    sorts allowed, an index on the tenant alone plus a sort could look as cheap)."""
    await db.execute("SET enable_seqscan = off")
    await db.execute("SET enable_sort = off")
    try:
        rows = await db.fetch(f"EXPLAIN {sql}", *args)
    finally:
        await db.execute("RESET enable_seqscan")
        await db.execute("RESET enable_sort")
    return "\n".join(row[0] for row in rows)


async def test_main_queries_use_their_indexes(db: asyncpg.Connection) -> None:
    tenant, queue, ticket = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    cutoff = datetime.now(UTC) - timedelta(days=7)
    checks = {
        "tickets": ("SELECT * FROM tickets WHERE tenant_id = $1 AND id = $2", tenant, ticket),
        "tickets_waiting_line_idx": (
            "SELECT id FROM tickets WHERE tenant_id = $1 AND queue_id = $2 AND state_category = 'waiting' "
            "ORDER BY sort_key LIMIT 1 FOR UPDATE SKIP LOCKED",
            tenant,
            queue,
        ),
        "tickets_active_idx": (
            "SELECT id FROM tickets WHERE tenant_id = $1 AND queue_id = $2 "
            "AND state_category NOT IN ('done', 'cancelled') ORDER BY state_category, sort_key",
            tenant,
            queue,
        ),
        "tickets_queue_departures_idx": (
            "SELECT created_at, started_at FROM tickets WHERE tenant_id = $1 AND departed_queue_id = $2 "
            "AND started_at IS NOT NULL ORDER BY started_at DESC LIMIT 4",
            tenant,
            queue,
        ),
        "ticket_history_ticket_idx": (
            "SELECT * FROM ticket_history WHERE tenant_id = $1 AND ticket_id = $2 ORDER BY id",
            tenant,
            ticket,
        ),
        "events_tenant_tx_cursor_idx": (
            "SELECT * FROM events WHERE tenant_id = $1 AND (tx_id, id) > ('0'::xid8, 0) "
            "ORDER BY tx_id, id LIMIT 100",
            tenant,
        ),
        "api_keys": ("SELECT * FROM api_keys WHERE key_hash = $1", b"x" * 32),  # its unique index
        "webhook_deliveries_due_idx": (
            "SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= now() "
            "ORDER BY next_attempt_at LIMIT 50",
        ),
        # The sweeper's prunes, a batch at a time, oldest first (migration 0017 for the deliveries).
        "events_occurred_idx": (events_repository.PRUNE_SQL, sweeper.EARLIEST, cutoff, 5000),
        "webhook_deliveries_finished_idx": (webhooks_repository.PRUNE_SQL, sweeper.EARLIEST, cutoff, 5000),
        "idempotency_keys_expiry": (sweeper.EXPIRED_KEYS_SQL, sweeper.EARLIEST, cutoff, 5000),
    }
    for index, (sql, *args) in checks.items():
        shown = await plan(db, sql, *args)
        assert "Seq Scan" not in shown, (index, shown)
        assert "Index" in shown, (index, shown)
        if index not in ("tickets", "api_keys"):  # among equally good indexes an empty table's planner may
            assert index in shown or "tickets_" in shown, (index, shown)  # pick another


async def _line_behind(
    db: asyncpg.Connection, head: uuid.UUID, count: int, key_step: str | None = None
) -> None:
    """`count` more waiting tickets behind `head`, copies of it written straight into the table (the API
    would take too long); the n-th takes head's sort key plus `key_step` (an SQL expression over n) when
    one is given, else the sequence's next value."""
    sort_key = "nextval('ticket_sort_key_seq')" if key_step is None else f"sort_key + {key_step}"
    await db.execute(
        f"""INSERT INTO tickets (tenant_id, id, queue_id, origin_queue_id, type_definition_id, number,
                                 display_code, local_date, current_state, state_category, sort_key)
            SELECT tenant_id, gen_random_uuid(), queue_id, queue_id, type_definition_id, number + n,
                   display_code, local_date, current_state, state_category, {sort_key}
              FROM tickets, generate_series(1, $2::int) n WHERE id = $1""",
        head,
        count,
    )


async def _blocks_and_position(db: asyncpg.Connection, scope: str, ticket_id: uuid.UUID) -> tuple[int, Any]:
    """The buffers the get-ticket statement touches, as the server runs it, and the position it answers."""
    sql = f"SELECT {TICKET_COLUMNS}, {POSITION} FROM tickets t WHERE t.id = $1"
    async with db.transaction():
        await db.execute("SET LOCAL ROLE virtualq_app")
        await db.execute("SELECT set_config('virtualq.tenant_id', $1, true)", scope)
        await db.fetchrow(sql, ticket_id)  # plans the function's count (catalog reads) once per session
        shown = await db.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", ticket_id)
        row = await db.fetchrow(sql, ticket_id)
    top = json.loads(shown)[0]["Plan"]
    return top["Shared Hit Blocks"] + top["Shared Read Blocks"], row["position"] if row else "no row"


async def test_a_position_reads_the_line_up_to_the_ticket_only(
    db: asyncpg.Connection, client: httpx.AsyncClient, api: Api
) -> None:
    """Migration 0013: under row security the count of the tickets ahead could not bound its index scan by
    the sort key (numeric comparison is not leakproof) and read the whole line from the heap, so every
    position cost O(line length). tickets_waiting_ahead() counts through the index: the head of a line of
    3,000 touches a handful of buffers. The count is the same for the tenant, and nothing for another."""
    t = await Tenant.create(client, api)
    kind = await t.type("toggle", TOGGLE_FSM)
    queue = await t.queue("Long line")
    h = auth(t.world.tenant_admin)
    body = {"queue_id": queue["id"], "type_definition_id": kind["id"]}
    head = uuid.UUID(ok(await client.post("/v1/tickets", json=body, headers=h), 201)["id"])
    await _line_behind(db, head, 3000)
    await db.execute("ANALYZE tickets")
    last = await db.fetchval(
        "SELECT id FROM tickets WHERE queue_id = $1 ORDER BY sort_key DESC LIMIT 1", uuid.UUID(queue["id"])
    )
    head_blocks, head_position = await _blocks_and_position(db, t.id, head)
    last_blocks, last_position = await _blocks_and_position(db, t.id, last)
    assert (head_position, last_position) == (1, 3001)
    assert head_blocks < 20, head_blocks  # the whole line is ~20 index and ~60 heap pages
    assert last_blocks > head_blocks
    # The system scope (background work, the customer's page) counts too; another tenant sees no ticket,
    # and asking the function directly about this tenant's line answers nothing.
    assert (await _blocks_and_position(db, "system", last))[1] == 3001
    other = await Tenant.create(client, api)
    assert (await _blocks_and_position(db, other.id, last))[1] == "no row"
    async with db.transaction():
        await db.execute("SET LOCAL ROLE virtualq_app")
        await db.execute("SELECT set_config('virtualq.tenant_id', $1, true)", other.id)
        asked = await db.fetchval(
            "SELECT tickets_waiting_ahead($1, $2, 1e30)", uuid.UUID(t.id), uuid.UUID(queue["id"])
        )
        assert asked is None
    granted = await db.fetch(
        """SELECT coalesce(r.rolname, 'PUBLIC') AS grantee FROM pg_proc p, aclexplode(p.proacl) a
             LEFT JOIN pg_roles r ON r.oid = a.grantee
            WHERE p.proname = 'tickets_waiting_ahead' AND a.privilege_type = 'EXECUTE'"""
    )
    assert "PUBLIC" not in {row["grantee"] for row in granted}
    assert "virtualq_app" in {row["grantee"] for row in granted}


async def _scoped(db: asyncpg.Connection, scope: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """`sql`'s rows as the server's role sees them, scoped to `scope` (a tenant id or "system")."""
    async with db.transaction():
        await db.execute("SET LOCAL ROLE virtualq_app")
        await db.execute("SELECT set_config('virtualq.tenant_id', $1, true)", scope)
        rows: list[asyncpg.Record] = await db.fetch(sql, *args)
    return rows


async def _batch_blocks(db: asyncpg.Connection, scope: str, ticket_ids: list[uuid.UUID]) -> int:
    await _scoped(db, scope, TICKETS_BY_IDS, uuid.UUID(scope), ticket_ids)  # plans the function once
    shown = await _scoped(
        db, scope, f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {TICKETS_BY_IDS}", uuid.UUID(scope), ticket_ids
    )
    top = json.loads(shown[0][0])[0]["Plan"]
    blocks: int = top["Shared Hit Blocks"] + top["Shared Read Blocks"]
    return blocks


async def test_a_batch_of_reads_counts_each_line_once(
    db: asyncpg.Connection, client: httpx.AsyncClient, api: Api
) -> None:
    """Migrations 0014 and 0016: a statement reading several tickets (tickets/reads.py) counts the positions
    of the waiting ones in one pass over each line up to the last of them, and answers exactly
    the positions the one-ticket statement answers: across two queues, with tied sort keys, a ticket asked
    for twice, one not waiting and one that does not exist. Another tenant gets nothing."""
    t = await Tenant.create(client, api)
    kind = await t.type("toggle", TOGGLE_FSM)
    long_line, short_line = await t.queue("Long line"), await t.queue("Short line")
    h = auth(t.world.tenant_admin)
    heads = []
    for queue in (long_line, short_line):
        body = {"queue_id": queue["id"], "type_definition_id": kind["id"]}
        heads.append(uuid.UUID(ok(await client.post("/v1/tickets", json=body, headers=h), 201)["id"]))
    for head, length in zip(heads, (3000, 12), strict=True):
        await _line_behind(db, head, length)
    await db.execute("ANALYZE tickets")
    long_ids = [
        row["id"]
        for row in await db.fetch(
            "SELECT id FROM tickets WHERE queue_id = $1 ORDER BY sort_key", uuid.UUID(long_line["id"])
        )
    ]
    short = await db.fetch(
        "SELECT id, sort_key FROM tickets WHERE queue_id = $1 ORDER BY sort_key", uuid.UUID(short_line["id"])
    )
    # Three tickets of the short line share a sort key (a reorder could leave two equal): each has the
    # same tickets ahead, strictly less.
    await db.execute(
        "UPDATE tickets SET sort_key = $1 WHERE id = ANY($2::uuid[])",
        short[5]["sort_key"],
        [short[6]["id"], short[7]["id"]],
    )
    await db.execute(
        "UPDATE tickets SET state_category = 'in_service', current_state = 'serving' WHERE id = $1",
        short[2]["id"],
    )
    # The long line's last ticket takes the sort key of a short-line ticket (past every key of its own
    # line, so still last): equal keys in two queues must not meet in the batch's join.
    await db.execute("UPDATE tickets SET sort_key = $1 WHERE id = $2", short[10]["sort_key"], long_ids[-1])
    spread = long_ids[::150]  # 21 tickets along the line of 3,001, its head and its end among them
    batch = spread + [row["id"] for row in short] + [spread[3], uuid.uuid4()]

    rows = await _scoped(db, t.id, TICKETS_BY_IDS, uuid.UUID(t.id), batch)
    single = f"SELECT t.id, {POSITION} FROM tickets t WHERE t.id = $1"
    expected = {}
    for ticket_id in set(batch):
        found = await _scoped(db, t.id, single, ticket_id)
        if found:
            expected[ticket_id] = found[0]["position"]
    assert {row["id"]: row["position"] for row in rows} == expected
    assert len(rows) == len(expected) == len(batch) - 2  # each found ticket once; the unknown one not at all
    assert [expected[ticket_id] for ticket_id in spread] == [1 + 150 * n for n in range(21)]
    assert expected[short[2]["id"]] is None
    assert expected[short[5]["id"]] == expected[short[6]["id"]] == expected[short[7]["id"]] == 5
    assert expected[short[8]["id"]] == 6 + 2  # after the three tied ones (one ahead left the line)

    # One pass: reading the 21 costs about what reading the last of them alone costs, not 21 counts.
    singles = [(await _blocks_and_position(db, t.id, ticket_id))[0] for ticket_id in spread]
    together = await _batch_blocks(db, t.id, spread)
    # (each ticket adds its own key lookup and one descent of the line's index to the pass)
    assert together < singles[-1] + 8 * len(spread), (together, singles[-1])
    assert sum(singles) > together * 3, (sum(singles), together)

    # Another tenant's batch finds none of these tickets, and asking the function directly about this
    # tenant's line answers nothing; the system scope counts as the tenant does.
    other = await Tenant.create(client, api)
    assert await _scoped(db, other.id, TICKETS_BY_IDS, uuid.UUID(other.id), batch) == []
    ask = "SELECT * FROM tickets_waiting_ahead_lines($1, $2, $3) ORDER BY 1, 2"
    keys = [row["sort_key"] for row in short]
    queues = [uuid.UUID(short_line["id"])] * len(keys)
    assert await _scoped(db, other.id, ask, uuid.UUID(t.id), queues, keys) == []
    as_tenant = await _scoped(db, t.id, ask, uuid.UUID(t.id), queues, keys)
    assert len(as_tenant) == len(set(keys))
    assert await _scoped(db, "system", ask, uuid.UUID(t.id), queues, keys) == as_tenant
    granted = await db.fetch(
        """SELECT coalesce(r.rolname, 'PUBLIC') AS grantee FROM pg_proc p, aclexplode(p.proacl) a
             LEFT JOIN pg_roles r ON r.oid = a.grantee
            WHERE p.proname = 'tickets_waiting_ahead_lines' AND a.privilege_type = 'EXECUTE'"""
    )
    grantees = {row["grantee"] for row in granted}
    assert "PUBLIC" not in grantees
    assert "virtualq_app" in grantees


async def test_the_lines_counts_match_the_count_of_one(
    db: asyncpg.Connection, client: httpx.AsyncClient, api: Api
) -> None:
    """tickets_waiting_ahead_lines() against tickets_waiting_ahead() for random sets of (line, key) over two
    lines whose keys interleave: keys in a line, between its tickets, before its head, past its end, repeated,
    and the same key asked of both lines."""
    t = await Tenant.create(client, api)
    kind = await t.type("toggle", TOGGLE_FSM)
    lines: dict[uuid.UUID, list[Any]] = {}
    for name, length in (("One", 60), ("Two", 25)):
        queue = await t.queue(name)
        body = {"queue_id": queue["id"], "type_definition_id": kind["id"]}
        head = uuid.UUID(
            ok(await client.post("/v1/tickets", json=body, headers=auth(t.world.tenant_admin)), 201)["id"]
        )
        await _line_behind(db, head, length, key_step="(n / 3) * 2")  # keys step by 2 in threes: ties, gaps
        lines[uuid.UUID(queue["id"])] = [
            row["sort_key"]
            for row in await db.fetch(
                "SELECT sort_key FROM tickets WHERE queue_id = $1 ORDER BY sort_key", uuid.UUID(queue["id"])
            )
        ]
    candidates = [
        (queue, key)
        for queue in lines
        for line in lines.values()  # the other line's keys too
        for key in [*line, *(key + 1 for key in line), line[0] - 5, line[-1] + 5]
    ]
    tenant = uuid.UUID(t.id)
    chooser = random.Random(7)
    for _ in range(25):
        pairs = chooser.choices(candidates, k=chooser.randint(1, 12))
        rows = await _scoped(
            db,
            t.id,
            "SELECT * FROM tickets_waiting_ahead_lines($1, $2, $3)",
            tenant,
            [queue for queue, _ in pairs],
            [key for _, key in pairs],
        )
        counted = {(row["queue_id"], row["waiting_key"]): row["ahead"] for row in rows}
        assert set(counted) == set(pairs)
        assert len(rows) == len(counted)
        for queue, key in set(pairs):
            one = await _scoped(db, t.id, "SELECT tickets_waiting_ahead($1, $2, $3) AS n", tenant, queue, key)
            assert counted[queue, key] == one[0]["n"] == sum(1 for other in lines[queue] if other < key)


async def test_positions_are_planned_once_per_connection(db: asyncpg.Connection) -> None:
    """Migration 0016: the counts' plans do not depend on the values, so the functions keep one generic
    plan instead of planning their count at every call (PL/pgSQL would: for `sort_key < $3`, or a line's
    count rows, the generic estimate never looks as cheap as the custom plans)."""
    settings = {
        row["proname"]: row["proconfig"]
        for row in await db.fetch(
            """SELECT proname, proconfig FROM pg_proc
                WHERE proname LIKE 'tickets\\_waiting\\_ahead%' OR proname = 'queue_waiting_count'"""
        )
    }
    # (0014's function stays for the previous build's processes during a rolling upgrade)
    assert set(settings) == {
        "tickets_waiting_ahead",
        "tickets_waiting_ahead_each",
        "tickets_waiting_ahead_lines",
        "queue_waiting_count",
    }
    for name, config in settings.items():
        assert "plan_cache_mode=force_generic_plan" in config, config
        if name != "queue_waiting_count":  # the owner's rights: nothing on the caller's path stands in
            assert "search_path=pg_catalog, pg_temp" in config, config
    if "pg_stat_statements" not in await db.fetchval("SHOW shared_preload_libraries"):
        pytest.skip("pg_stat_statements is not loaded on this PostgreSQL (the embedded one loads it)")
    await db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    async with db.transaction():
        await db.execute("SET LOCAL pg_stat_statements.track = 'all'")
        await db.execute("SET LOCAL pg_stat_statements.track_planning = on")
        await db.execute("SET LOCAL virtualq.tenant_id = 'system'")
        marker = f"{random.randrange(10**9)}"  # a fresh statement text, counted from zero
        await db.execute(f"SELECT {marker}")
        for index in range(12):
            await db.fetchval(
                "SELECT tickets_waiting_ahead($1, $2, $3)", uuid.uuid4(), uuid.uuid4(), Decimal(index)
            )
            await db.fetch(
                "SELECT * FROM tickets_waiting_ahead_lines($1, $2, $3)",
                uuid.uuid4(),
                [uuid.uuid4(), uuid.uuid4()],
                [Decimal(index), Decimal(index + 1)],
            )
            await db.fetchval("SELECT queue_waiting_count($1, $2)", uuid.uuid4(), uuid.uuid4())
        counts = await db.fetch(
            """SELECT query, calls, plans FROM pg_stat_statements
                WHERE (query LIKE '%count(*)%public.tickets%'
                       OR query LIKE '%sum(waiting)%queue_waiting_counts%') AND calls >= 12"""
        )
    # the count of one position, the stretches of the lines, and a line's length
    assert len(counts) >= 3, counts
    for row in counts:
        assert row["plans"] <= 2, dict(row)  # once (twice if another connection's counts landed here)


TOGGLE_FSM: dict[str, Any] = {
    "init": "waiting",
    "states": ["waiting", "serving", "done"],
    "transitions": [
        {"name": "serve", "from": "waiting", "to": "serving"},
        {"name": "requeue", "from": "serving", "to": "waiting"},
        {"name": "finish", "from": "serving", "to": "done"},
    ],
}


async def test_a_ticket_sent_back_to_the_line_keeps_the_shared_pace(
    counted: tuple[httpx.AsyncClient, Counter], api: Api, client: httpx.AsyncClient
) -> None:
    """Only a first departure (started_at is set once) changes the line's pace, so only it drops the shared
    pace: a ticket served again after being sent back answers its next return to the line from the shared
    pace, in the one round trip of a transition from this process's own last change of the ticket."""
    http, counter = counted
    t = await Tenant.create(client, api)
    kind = await t.type("toggle", TOGGLE_FSM)
    queue = await t.queue("Back and forth")
    h = auth(t.world.tenant_admin)
    ticket = ok(
        await http.post(
            "/v1/tickets", json={"queue_id": queue["id"], "type_definition_id": kind["id"]}, headers=h
        ),
        201,
    )
    path = f"/v1/tickets/{ticket['id']}/transition"
    seen = []
    for _ in range(3):  # the pace lives a second; a very slow run may see it expire once
        ok(await http.post(path, json={"transition": "serve"}, headers=h))
        back, response = await count(counter, http.post(path, json={"transition": "requeue"}, headers=h))
        assert ok(response)["estimated_wait_minutes"] is not None
        seen.append(back)
        if back == 1:
            break
    assert seen[-1] == 1, seen


async def test_no_endpoint_or_dependency_runs_in_a_worker_thread(app: Any) -> None:
    """FastAPI runs a plain `def` endpoint or dependency in a thread pool: a thread hand-off per request
    (list endpoints lost a third of their throughput to it). Everything on the request path is async."""
    import inspect

    from fastapi.routing import APIRoute

    def is_async(call: Any) -> bool:
        target = call if inspect.isfunction(call) or inspect.ismethod(call) else type(call).__call__
        return inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)

    sync: list[str] = []

    def visit(dependant: Any, where: str) -> None:
        if dependant.call is not None and not is_async(dependant.call):
            sync.append(f"{where}: {getattr(dependant.call, '__qualname__', dependant.call)}")
        for sub in dependant.dependencies:
            visit(sub, where)

    routes = [route for route in app.routes if isinstance(route, APIRoute)]
    assert len(routes) > 50
    for route in routes:
        visit(route.dependant, f"{sorted(route.methods)} {route.path}")
    assert sync == []


async def test_lists_answer_each_ticket_exactly_as_get_ticket_does(
    client: httpx.AsyncClient, api: Api
) -> None:
    """Queue tickets and the ticket list build their rows by position from the records (kit/responses.
    project_rows): the same fields, in the same order, with the same values (live estimate and position
    included) as GET /v1/tickets/{id}, for waiting tickets and one in service."""
    t = await Tenant.create(client, api)
    kind = await t.type("order", FOOD_ORDER_FSM)
    queue = await t.queue("Lists")
    made = [await t.ticket(queue["id"], kind["id"], custom_data={"n": n}) for n in range(4)]
    await t.move(made[1]["id"], "start_preparation")
    h = auth(t.world.tenant_admin)

    async def single(ticket_id: str) -> list[tuple[str, Any]]:
        answer = ok(await client.get(f"/v1/tickets/{ticket_id}", headers=h), 200)
        return list(answer.items())

    for path, params in (
        (f"/v1/queues/{queue['id']}/tickets", {}),
        ("/v1/tickets", {"queue_id": queue["id"]}),
    ):
        page = ok(await client.get(path, params=params, headers=h), 200)
        assert {row["id"] for row in page["data"]} == {ticket["id"] for ticket in made}
        for row in page["data"]:
            assert list(row.items()) == await single(row["id"]), path
        waiting = [row for row in page["data"] if row["state_category"] == "waiting"]
        assert [row["position"] for row in waiting] == [1, 2, 3]
        assert all(row["estimated_wait_minutes"] is not None for row in waiting)


async def test_rows_projected_by_position_match_rows_projected_by_name(db: asyncpg.Connection) -> None:
    rows = await db.fetch(
        "SELECT g AS b, g * 2 AS helper, 'x' || g AS a, NULL::uuid AS c FROM generate_series(1, 3) g"
    )
    for fields in (("a", "b", "c"), ("c",), ()):
        assert project_rows(rows, fields) == [project(row, fields) for row in rows]
        assert [list(row) for row in project_rows(rows, fields)] == [list(fields)] * 3
    as_dicts = [dict(row) for row in rows]
    assert project_rows(as_dicts, ("a", "b")) == [{"a": f"x{n}", "b": n} for n in (1, 2, 3)]
    assert project_rows([], ("a",)) == []
