"""Table upkeep: how the tables grow and churn under a steady load (autovacuum's work), and what pruning a
backlog of old events costs the requests running beside it.

    .venv/bin/python bench/upkeep.py [--seconds 60] [--clients 12] [--old-events 3000000]

1. One server process (its sweeper off) and a fresh tenant with 1,000 tickets waiting; `--clients` loops each
   create a ticket, call the next one and finish it: three writes per ticket, as a counter works.
2. Four times during the load: `pg_stat_user_tables` for the tables that grow or churn (live and dead rows,
   inserts, updates and the HOT ones among them, deletes, autovacuum runs, size with indexes and heap alone),
   then what each ticket added to each table.
3. `--old-events` events 9 days old are written straight into the log and the load runs again; after 8 s
   they are pruned by the sweeper's own `prune`, pass after pass back to back (the server's loop runs one
   pass per sweep, SWEEPER_INTERVAL_SECONDS apart),
   then, after as many again, by one `DELETE` (how pruning worked before). For each: the time, the passes,
   and the latency of the creates sent before and while it ran.
Uses an embedded PostgreSQL unless BENCH_DATABASE_URL is set.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import bench_tenant, database, free_port, server  # noqa: E402
from virtualq import migrate, sweeper  # noqa: E402
from virtualq.config import Settings  # noqa: E402
from virtualq.db import create_pool  # noqa: E402

TABLES = ["tickets", "ticket_history", "events", "queue_waiting_counts", "queue_day_counters"]
STATS = """
SELECT relname, n_live_tup, n_dead_tup, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, autovacuum_count,
       pg_total_relation_size(relid) AS total, pg_relation_size(relid) AS heap
  FROM pg_stat_user_tables WHERE relname = ANY($1) ORDER BY relname
"""
OLD_EVENTS = """
INSERT INTO events (tenant_id, type, queue_id, data, occurred_at)
SELECT tenant_id, 'ticket.created', id, '{}', now() - interval '9 days' + g * interval '1 ms'
  FROM queues, generate_series(1, $2) g WHERE id = $1
"""
ONE_DELETE = "DELETE FROM events WHERE occurred_at < now() - interval '7 days'"


class Load:
    """Counters at work: create, call next, finish; the creates' latencies kept with their start times."""

    def __init__(self, base: str, headers: dict[str, str], type_id: str, queue_id: str) -> None:
        self.base, self.headers, self.type_id, self.queue_id = base, headers, type_id, queue_id
        self.creates: list[tuple[float, float]] = []  # (monotonic start, seconds)
        self.stop = asyncio.Event()

    async def run(self, clients: int) -> None:
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(
            base_url=self.base, headers=self.headers, timeout=60, limits=limits
        ) as c:
            await asyncio.gather(*(self._counter(c) for _ in range(clients)))

    async def _counter(self, client: httpx.AsyncClient) -> None:
        body = {"queue_id": self.queue_id, "type_definition_id": self.type_id}
        while not self.stop.is_set():
            started, clock = time.monotonic(), time.perf_counter()
            created = await client.post("/v1/tickets", json=body)
            self.creates.append((started, time.perf_counter() - clock))
            created.raise_for_status()
            called = await client.post(f"/v1/queues/{self.queue_id}/call-next", json={})
            called.raise_for_status()
            finished = await client.post(
                f"/v1/tickets/{called.json()['id']}/transition", json={"transition": "finish"}
            )
            finished.raise_for_status()


def latency(values: list[float]) -> str:
    if not values:
        return "no creates"
    ordered = sorted(values)
    p50, p99 = ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    top = ordered[-1]
    return (
        f"{len(ordered)} creates, p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {top * 1000:.1f} ms"
    )


async def table_stats(conn: asyncpg.Connection, label: str) -> dict[str, Any]:
    rows = {row["relname"]: dict(row) for row in await conn.fetch(STATS, TABLES)}
    print(f"\n{label}")
    print(
        f"  {'table':<22}{'live':>9}{'dead':>9}{'inserts':>9}{'updates':>9}{'HOT':>9}{'deletes':>9}"
        f"{'autovac':>8}{'MB':>8}{'heap MB':>8}"
    )
    for name, r in rows.items():
        print(
            f"  {name:<22}{r['n_live_tup']:>9}{r['n_dead_tup']:>9}{r['n_tup_ins']:>9}{r['n_tup_upd']:>9}"
            f"{r['n_tup_hot_upd']:>9}{r['n_tup_del']:>9}{r['autovacuum_count']:>8}"
            f"{r['total'] / 1e6:>8.1f}{r['heap'] / 1e6:>8.1f}"
        )
    return rows


async def steady(dsn: str, load: Load, clients: int, seconds: float) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await asyncio.sleep(11)  # an idle backend's counts reach pg_stat_user_tables within 10 s
        before = await table_stats(conn, "before the load (1,000 tickets waiting)")
        runner = asyncio.create_task(load.run(clients))
        started = time.monotonic()
        for quarter in range(1, 5):
            await asyncio.sleep(seconds / 4)
            if quarter == 4:
                load.stop.set()
                await runner
            after = await table_stats(
                conn, f"after {time.monotonic() - started:.0f} s: {len(load.creates)} tickets"
            )
        tickets = len(load.creates)
        print(f"\n  {tickets / seconds:.0f} tickets/s (3 writes each); added per ticket:")
        for name in TABLES:
            grown = after[name]["total"] - before[name]["total"]
            rows = after[name]["n_tup_ins"] - before[name]["n_tup_ins"]
            print(f"    {name:<22}{grown / tickets:>8.0f} bytes, {rows / tickets:.1f} rows")
    finally:
        await conn.close()


async def prune_under_load(dsn: str, load: Load, clients: int, old_events: int) -> None:
    conn = await asyncpg.connect(dsn)
    pool = await create_pool(Settings(), dsn, sizes=(1, 2))
    try:
        for how in ("the sweeper's prune", "one DELETE"):
            clock = time.perf_counter()
            await conn.execute(OLD_EVENTS, uuid.UUID(load.queue_id), old_events)
            await conn.execute("VACUUM ANALYZE events")
            print(f"\n{old_events} events 9 days old written in {time.perf_counter() - clock:.1f} s")
            load.creates, load.stop = [], asyncio.Event()
            runner = asyncio.create_task(load.run(clients))
            await asyncio.sleep(8)
            started = time.monotonic()
            passes: list[tuple[int, float]] = []
            if how == "one DELETE":
                deleted = int((await conn.execute(ONE_DELETE)).split()[-1])
                passes.append((deleted, time.monotonic() - started))
            else:
                while True:
                    clock = time.perf_counter()
                    pruned = await sweeper.prune(pool, retention_days=7)
                    passes.append((pruned.events, time.perf_counter() - clock))
                    if not pruned.more:
                        break
            ended = time.monotonic()
            await asyncio.sleep(max(2.0, (ended - started) / 4))
            load.stop.set()
            await runner
            before = [seconds for at, seconds in load.creates if at < started]
            during = [seconds for at, seconds in load.creates if started <= at <= ended]
            total = sum(count for count, _ in passes)
            longest = max(seconds for _, seconds in passes)
            print(
                f"  {how}: {total} deleted in {ended - started:.2f} s, {len(passes)} pass(es), the longest "
                f"{longest:.2f} s\n    creates before: {latency(before)}\n    creates while it ran: "
                f"{latency(during)}"
            )
    finally:
        await pool.close()
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="the steady load's length")
    parser.add_argument("--clients", type=int, default=12, help="counters working at once")
    parser.add_argument("--old-events", type=int, default=3_000_000, help="the backlog to prune (0: skip)")
    args = parser.parse_args()
    with database() as (dsn, _):
        migrate.upgrade(dsn)
        port = free_port()
        with server(dsn, port, 1, {"SWEEPER_INTERVAL_SECONDS": "0"}):
            asyncio.run(run(dsn, port, args))
    return 0


async def run(dsn: str, port: int, args: argparse.Namespace) -> None:
    base = f"http://127.0.0.1:{port}"
    headers, type_id, queue_id = await bench_tenant(base, "Upkeep")
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        body = {"queue_id": queue_id, "type_definition_id": type_id}
        for _ in range(50):
            await asyncio.gather(*(client.post("/v1/tickets", json=body) for _ in range(20)))
    load = Load(base, headers, type_id, queue_id)
    await steady(dsn, load, args.clients, args.seconds)
    if args.old_events:
        await prune_under_load(dsn, load, args.clients, args.old_events)


if __name__ == "__main__":
    raise SystemExit(main())
