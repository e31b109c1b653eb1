"""VirtualQ benchmark: a real server on loopback against PostgreSQL, and pgbench ceilings for the same SQL.

    .venv/bin/python bench/run.py [--seconds 10] [--concurrency 32] [--workers 1] [--only get,create]

Uses an embedded PostgreSQL in a temporary directory unless BENCH_DATABASE_URL names a server where it may
create a database. Prints one table: endpoint, requests/s, p50, p99, SQL ceiling (pgbench tps), ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.loadgen import Result, json_body, run_load  # noqa: E402
from virtualq import migrate  # noqa: E402
from virtualq.embedded_pg import EmbeddedPostgres  # noqa: E402

SQL_DIR = Path(__file__).parent / "sql"
ADMIN_KEY = "vq_bench_admin_" + secrets.token_urlsafe(24)
WAITING_TICKETS = 1000
DRAIN_TICKETS = 20000  # about 10 s of calls: a 5,000 drain lasted under 3 s and moved ±15 % between runs
SPREAD_QUEUES = 8
READ_QUEUES = 8  # get_ticket_8_queues reads WAITING_TICKETS tickets spread over this many lines
COUNTERS = 8  # call_next runs with this many clients, draining a queue of DRAIN_TICKETS

BENCH_FSM = {
    "init": "waiting",
    "states": ["waiting", "serving", "done", "cancelled"],
    "transitions": [
        {"name": "serve", "from": "waiting", "to": "serving"},
        {"name": "requeue", "from": "serving", "to": "waiting"},
        {"name": "finish", "from": "serving", "to": "done"},
        {"name": "cancel", "from": ["waiting", "serving"], "to": "cancelled"},
    ],
}
BENCH_SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40}}}


@dataclass
class Setup:
    key: str
    tenant_id: str
    type_id: str
    line_queue: str
    create_queue: str
    transition_queue: str
    drain_queue: str
    sql_drain_queue: str
    line_tickets: list[str]
    transition_tickets: list[str]
    spread_queues: list[str]  # create_8_queues: the clients create in these, worker i in queue i % 8
    spread_line_tickets: list[str]  # get_ticket_8_queues: WAITING_TICKETS tickets over READ_QUEUES lines


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def database(batch_scheduling: bool = True) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield (dsn, pgbench connection args) for a fresh database (on an embedded PostgreSQL whose processes
    run under SCHED_BATCH unless batch_scheduling is False, as `virtualq serve`'s does)."""
    name = f"vq_bench_{uuid.uuid4().hex[:8]}"
    external = os.environ.get("BENCH_DATABASE_URL")
    embedded = None
    if external:
        server_dsn = external
    else:
        embedded = EmbeddedPostgres(
            Path(tempfile.mkdtemp(prefix="vq-bench-")),
            database="postgres",
            batch_scheduling=batch_scheduling,
        )
        server_dsn = embedded.start()
    asyncio.run(_execute(server_dsn, f'CREATE DATABASE "{name}"'))
    parts = urlsplit(server_dsn)
    dsn = parts._replace(path="/" + name).geturl()
    host = parse_qs(parts.query).get("host", [parts.hostname or "127.0.0.1"])[0]
    conn_args = {
        "host": host,
        "port": str(parts.port or 5432),
        "user": parts.username or "postgres",
        "db": name,
    }
    try:
        yield dsn, conn_args
    finally:
        asyncio.run(_execute(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if embedded is not None:
            embedded.stop()
            shutil.rmtree(embedded.data_dir, ignore_errors=True)


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def server(
    dsn: str, port: int, workers: int, extra: dict[str, str] | None = None, kind: str = "uvicorn"
) -> Iterator[subprocess.Popen[bytes]]:
    """`virtualq serve` (uvicorn), or with kind="granian" the same app under granian (`pip install granian`
    first; it is not a dependency, only a lever measured in docs/performance.md)."""
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "PORT": str(port),
        "ADMIN_API_KEY": ADMIN_KEY,
        "LOG_LEVEL": "warning",
        "RATE_LIMIT_PER_MINUTE": "0",
        "DB_POOL_MAX_SIZE": "20",
        "WEB_CONCURRENCY": str(workers),
        "AUTO_MIGRATE": "false",
        **(extra or {}),
    }
    command = [str(ROOT / ".venv/bin/virtualq"), "serve"]
    if kind == "granian":
        command = [
            str(ROOT / ".venv/bin/granian"),
            *("--interface", "asgi", "--factory", "--loop", "uvloop", "--log-level", "warning"),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)),
            "virtualq.cli:create_app_from_env",
        ]
    # With the access log on (LOG_LEVEL=info), its lines go where a service manager would take them: away.
    quiet = env["LOG_LEVEL"] != "warning"
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if quiet else None
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("server did not become ready")
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def family(pid: int) -> list[int]:
    """A process and its children (uvicorn workers)."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(child) for child in children.read_text().split()]
    return pids


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn workers), in MB."""
    total = 0
    for each in family(pid):
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU time each process has used so far."""
    used = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


def postgres_pids() -> list[int]:
    """This machine's PostgreSQL processes (none when BENCH_DATABASE_URL names a remote server)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used in between by the processes alive at the end (those started in between count in full)."""
    return sum(end - before.get(pid, 0.0) for pid, end in after.items())


@dataclass
class Cpu:
    """CPU time per request during an endpoint's load, in µs: the server, PostgreSQL, this load generator."""

    server: float
    postgres: float
    client: float

    @classmethod
    def measure(cls, server_pid: int) -> Callable[[int], Cpu]:
        """Start measuring; call the result with the number of requests done to get the figures."""
        servers = cpu_seconds(family(server_pid))
        databases = cpu_seconds(postgres_pids())
        client = time.process_time()

        def done(requests: int) -> Cpu:
            per_request = 1e6 / max(requests, 1)
            database_now = cpu_seconds(postgres_pids())
            return cls(
                spent(servers, cpu_seconds(family(server_pid))) * per_request,
                spent(databases, database_now) * per_request if database_now else float("nan"),
                (time.process_time() - client) * per_request,
            )

        return done


# The set-up's clients drop an idle connection after 2 s, before uvicorn closes it (after 5 s; httpx's own
# default is also 5 s): reusing a connection at the moment the server closes it fails the request with a
# ReadError, as one run Y set-up did.
SETUP_LIMITS = httpx.Limits(keepalive_expiry=2.0)


async def bench_tenant(base: str, name: str) -> tuple[dict[str, str], str, str]:
    """A fresh account and tenant with an admin key, the bench ticket type and one queue:
    (auth headers, type id, queue id). Shared by bench/stream.py and bench/scale.py."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=SETUP_LIMITS) as client:

        async def post(path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
            response = await client.post(path, json=body, headers=headers)
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result

        account = await post("/v1/accounts", {"name": name}, admin)
        tenant = await post("/v1/tenants", {"account_id": account["id"], "name": name}, admin)
        body = {"name": name, "scope": "tenant", "role": "admin", "tenant_id": tenant["id"]}
        headers = {"Authorization": f"Bearer {(await post('/v1/api-keys', body, admin))['key']}"}
        order = {"type_code": "order", "type_name": "Order", "fsm_schema": BENCH_FSM}
        type_id = (await post("/v1/type-definitions", order, headers))["id"]
        queue_id = (await post("/v1/queues", {"name": "Line"}, headers))["id"]
    return headers, type_id, queue_id


async def prepare(base: str, dsn: str) -> Setup:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=SETUP_LIMITS) as client:

        async def post(path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
            response = await client.post(path, json=body, headers=headers)
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result

        account = await post("/v1/accounts", {"name": "Bench"}, admin)
        tenant = await post("/v1/tenants", {"account_id": account["id"], "name": "Bench store"}, admin)
        key = (
            await post(
                "/v1/api-keys",
                {"name": "bench", "scope": "tenant", "role": "admin", "tenant_id": tenant["id"]},
                admin,
            )
        )["key"]
        headers = {"Authorization": f"Bearer {key}"}
        type_id = (
            await post(
                "/v1/type-definitions",
                {
                    "type_code": "order",
                    "type_name": "Order",
                    "fsm_schema": BENCH_FSM,
                    "custom_fields_schema": BENCH_SCHEMA,
                },
                headers,
            )
        )["id"]
        queues = [
            (await post("/v1/queues", {"name": name, "ticket_prefix": prefix}, headers))["id"]
            for name, prefix in (
                ("Line", "A"),
                ("Create", "B"),
                ("Transition", "C"),
                ("Drain", "D"),
                ("SQL", "E"),
            )
        ]
        spread = [
            (await post("/v1/queues", {"name": f"Counter {index}", "ticket_prefix": "S"}, headers))["id"]
            for index in range(SPREAD_QUEUES)
        ]
        read_queues = [
            (await post("/v1/queues", {"name": f"Read {index}", "ticket_prefix": "R"}, headers))["id"]
            for index in range(READ_QUEUES)
        ]
        semaphore = asyncio.Semaphore(16)

        async def ticket(queue_id: str) -> str:
            async with semaphore:
                body = {"queue_id": queue_id, "type_definition_id": type_id, "custom_data": {"name": "Ann"}}
                return str((await post("/v1/tickets", body, headers))["id"])

        line = await asyncio.gather(*(ticket(queues[0]) for _ in range(WAITING_TICKETS)))
        movers = await asyncio.gather(*(ticket(queues[2]) for _ in range(256)))
        # Ticket i joins line i % READ_QUEUES: the lines grow together, as a venue's counters' lines do.
        spread_line = await asyncio.gather(
            *(ticket(read_queues[index % READ_QUEUES]) for index in range(WAITING_TICKETS))
        )
        await asyncio.gather(*(ticket(queues[3]) for _ in range(DRAIN_TICKETS)))
    conn = await asyncpg.connect(dsn)
    try:
        # pgbench clients pick their ticket by :client_id, as HTTP workers do by index.
        await conn.execute("CREATE TABLE bench_clients (client_id int PRIMARY KEY, ticket_id uuid NOT NULL)")
        # ... and get_ticket reads any ticket of the line, by a random n, as the HTTP clients do.
        await conn.execute("CREATE TABLE bench_line (n int PRIMARY KEY, ticket_id uuid NOT NULL)")
        await conn.executemany(
            "INSERT INTO bench_line VALUES ($1, $2)",
            [(index, uuid.UUID(ticket_id)) for index, ticket_id in enumerate(line)],
        )
        # ... and get_ticket_8_queues any ticket of the 8 lines likewise, as n = WAITING_TICKETS + i.
        await conn.executemany(
            "INSERT INTO bench_line VALUES ($1, $2)",
            [(WAITING_TICKETS + index, uuid.UUID(ticket_id)) for index, ticket_id in enumerate(spread_line)],
        )
        await conn.executemany(
            "INSERT INTO bench_clients VALUES ($1, $2)",
            [(index, uuid.UUID(ticket_id)) for index, ticket_id in enumerate(movers)],
        )
        # pgbench drains its own copy of the drain queue.
        await conn.execute(
            """INSERT INTO tickets (tenant_id, id, queue_id, origin_queue_id, type_definition_id, number,
                                    display_code, local_date, current_state, state_category, custom_data)
               SELECT tenant_id, uuidv7(), $2, $2, type_definition_id, number, display_code, local_date,
                      current_state, state_category, custom_data
                 FROM tickets WHERE queue_id = $1 ORDER BY sort_key""",
            uuid.UUID(queues[3]),
            uuid.UUID(queues[4]),
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return Setup(
        key,
        tenant["id"],
        type_id,
        queues[0],
        queues[1],
        queues[2],
        queues[3],
        queues[4],
        line,
        movers,
        spread,
        spread_line,
    )


def endpoints(setup: Setup) -> dict[str, Callable[[int, int], tuple[str, str, bytes | None]]]:
    create_body = json_body(
        {"queue_id": setup.create_queue, "type_definition_id": setup.type_id, "custom_data": {"name": "Ann"}}
    )
    spread_bodies = [
        json_body({"queue_id": queue, "type_definition_id": setup.type_id, "custom_data": {"name": "Ann"}})
        for queue in setup.spread_queues
    ]
    serve, requeue = json_body({"transition": "serve"}), json_body({"transition": "requeue"})
    call_body = json_body({})
    line = setup.line_tickets
    spread_line = setup.spread_line_tickets
    return {
        "create_ticket": lambda worker, n: ("POST", "/v1/tickets", create_body),
        # The same creates spread over 8 queues (each queue numbers its tickets under its own lock); no
        # pgbench script: the SQL is create_ticket's.
        "create_8_queues": lambda worker, n: ("POST", "/v1/tickets", spread_bodies[worker % SPREAD_QUEUES]),
        "transition": lambda worker, n: (
            "POST",
            f"/v1/tickets/{setup.transition_tickets[worker]}/transition",
            serve if n % 2 == 0 else requeue,
        ),
        "get_ticket": lambda worker, n: ("GET", f"/v1/tickets/{line[(worker * 7919 + n) % len(line)]}", None),
        # The same reads over 8 lines of 125: a batch of reads shares its statement, not its lines' counts.
        "get_ticket_8_queues": lambda worker, n: (
            "GET",
            f"/v1/tickets/{spread_line[(worker * 7919 + n) % len(spread_line)]}",
            None,
        ),
        "queue_tickets": lambda worker, n: ("GET", f"/v1/queues/{setup.line_queue}/tickets?limit=100", None),
        "monitor": lambda worker, n: ("GET", f"/v1/queues/{setup.line_queue}/monitor", None),
        "call_next": lambda worker, n: ("POST", f"/v1/queues/{setup.drain_queue}/call-next", call_body),
    }


ENDPOINT_NAMES = (
    "create_ticket",
    "create_8_queues",
    "transition",
    "get_ticket",
    "get_ticket_8_queues",
    "queue_tickets",
    "monitor",
    "call_next",
)


def selected_endpoints(parser: argparse.ArgumentParser, only: str) -> list[str]:
    """The names given to --only (all when empty); a usage error for a name that is not an endpoint."""
    names = [name for name in only.split(",") if name] or list(ENDPOINT_NAMES)
    unknown = sorted(set(names) - set(ENDPOINT_NAMES))
    if unknown:
        parser.error(f"unknown endpoint(s) {', '.join(unknown)}; choose from {', '.join(ENDPOINT_NAMES)}")
    return names


# Endpoints whose ceiling is another endpoint's script with other variables.
SCRIPTS = {"get_ticket_8_queues": ("get_ticket", {"line_offset": str(WAITING_TICKETS)})}

# Endpoints that do not run at --concurrency: (clients, stop at this status, pgbench transactions per client).
SPECIAL = {"call_next": (COUNTERS, 404, DRAIN_TICKETS // COUNTERS)}


def pgbench_ceiling(
    name: str,
    conn_args: dict[str, str],
    setup: Setup,
    concurrency: int,
    seconds: float,
    transactions: int | None = None,
) -> float:
    script_name, extra = SCRIPTS.get(name, (name, {}))
    script = SQL_DIR / f"{script_name}.sql"
    if not script.exists():
        return float("nan")
    pgbench = EmbeddedPostgres(Path(tempfile.gettempdir())).binary("pgbench")
    variables = {
        "tenant_id": setup.tenant_id,
        "type_id": setup.type_id,
        "line_queue": setup.line_queue,
        "create_queue": setup.create_queue,
        "drain_queue": setup.sql_drain_queue,
        "version": "0",  # transition.sql reads its ticket while it has no version from its last update
        # The bench's type is created once and never changed. create_ticket.sql checks it, as the app does:
        # at another version its statement would insert nothing, and pgbench would count that as a create.
        "type_version": "1",
        "line_offset": "0",  # get_ticket.sql reads bench_line's rows line_offset .. line_offset + 999
        **extra,
    }
    args = [
        str(pgbench),
        "-n",
        "-M",
        "prepared",
        "-c",
        str(concurrency),
        "-j",
        "2",
        *(["-t", str(transactions)] if transactions else ["-T", str(int(seconds))]),
        "-f",
        str(script),
        "-h",
        conn_args["host"],
        "-p",
        conn_args["port"],
        "-U",
        conn_args["user"],
    ]
    for variable, value in variables.items():
        args += ["-D", f"{variable}={value}"]
    user = "virtualq_pg" if os.geteuid() == 0 and not os.environ.get("BENCH_DATABASE_URL") else None
    # As the server's connections run them: as the application role, under row-level security, scoped to the
    # bench tenant (db.py); the tables' owner would skip the policies' cost.
    env = {**os.environ, "PGOPTIONS": f"-c role=virtualq_app -c virtualq.tenant_id={setup.tenant_id}"}
    output = subprocess.run(
        [*args, conn_args["db"]], capture_output=True, text=True, check=False, user=user, env=env
    )
    match = re.search(r"tps = ([0-9.]+)", output.stdout)
    if not match:
        print(f"pgbench {name} failed: {output.stderr.strip()[-500:]}", file=sys.stderr)
        return float("nan")
    return float(match.group(1))


def ratio_of(result: Result, ceiling: float) -> float:
    return result.requests_per_second / ceiling if ceiling == ceiling and ceiling else float("nan")


def figures(rows: list[tuple[Result, float, Cpu, float]], idle_rss: float) -> dict[str, Any]:
    """What the table shows, for `--json` (bench/all.py's summary)."""
    return {
        "idle_rss_mb": idle_rss,
        "endpoints": [
            {
                "name": result.name,
                "requests_per_second": result.requests_per_second,
                "p50_ms": result.percentile(0.5),
                "p99_ms": result.percentile(0.99),
                "sql_tps": ceiling,
                "ratio": ratio_of(result, ceiling),
                "rss_mb": rss,
                "server_us": cpu.server,
                "postgres_us": cpu.postgres,
                "generator_us": cpu.client,
                "statuses": {str(code): count for code, count in sorted(result.statuses.items())},
            }
            for result, ceiling, cpu, rss in rows
        ],
    }


def print_table(rows: list[tuple[Result, float, Cpu, float]]) -> None:
    header = (
        f"{'endpoint':<20}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'SQL tps':>10}{'ratio':>7}"
        f"{'RSS MB':>8}{'srv µs':>8}{'pg µs':>8}{'gen µs':>8}  statuses"
    )
    print(header)
    print("-" * len(header))
    for result, ceiling, cpu, rss in rows:
        ratio = ratio_of(result, ceiling)
        statuses = dict(sorted(result.statuses.items()))
        print(
            f"{result.name:<20}{result.requests_per_second:>9.0f}{result.percentile(0.5):>9.1f}"
            f"{result.percentile(0.99):>9.1f}{ceiling:>10.0f}{ratio:>7.2f}{rss:>8.0f}"
            f"{cpu.server:>8.0f}{cpu.postgres:>8.0f}{cpu.client:>8.0f}  {statuses}"
        )
    print("RSS MB: the server's resident memory (all its processes) right after the endpoint's load")
    print("srv / pg / gen µs: CPU time per request of the server, PostgreSQL and the load generator")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--only", default="", help="comma-separated endpoint names")
    parser.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn")
    parser.add_argument("--pool-size", type=int, default=20, help="DB_POOL_MAX_SIZE per process")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the server processes at this nice value (PostgreSQL stays at 0): see docs/performance.md",
    )
    parser.add_argument(
        "--pg-scheduling",
        choices=["batch", "other"],
        default="batch",
        help="the embedded PostgreSQL's scheduling policy (SCHED_BATCH, as `virtualq serve` runs it, or the "
        "default SCHED_OTHER): see docs/performance.md",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log every request as production does (LOG_LEVEL=info, ENV=production: JSON lines)",
    )
    report.add_option(parser)
    args = parser.parse_args()
    selected = selected_endpoints(parser, args.only)
    with database(batch_scheduling=args.pg_scheduling == "batch") as (dsn, conn_args):
        migrate.upgrade(dsn)
        port = free_port()
        extra = {"DB_POOL_MAX_SIZE": str(args.pool_size)}
        if args.access_log:
            extra |= {"LOG_LEVEL": "info", "ENV": "production"}
        with server(dsn, port, args.workers, extra, kind=args.server) as process:
            for pid in family(process.pid):
                os.setpriority(os.PRIO_PROCESS, pid, args.nice)
            setup = asyncio.run(prepare(f"http://127.0.0.1:{port}", dsn))
            idle_rss = rss_mb(process.pid)
            headers = {"Authorization": f"Bearer {setup.key}"}
            rows = []
            for name in selected:
                factory = endpoints(setup)[name]
                clients, stop_status, transactions = SPECIAL.get(name, (args.concurrency, None, None))
                seconds = args.seconds if stop_status is None else max(args.seconds, 120)
                measured = Cpu.measure(process.pid)
                result = uvloop.run(
                    run_load(name, "127.0.0.1", port, headers, factory, clients, seconds, stop_status)
                )
                cpu = measured(len(result.latencies))
                rss = rss_mb(process.pid)
                ceiling = pgbench_ceiling(name, conn_args, setup, clients, args.seconds, transactions)
                rows.append((result, ceiling, cpu, rss))
            niced = f" at nice {args.nice}" if args.nice else ""
            print(
                f"\n{args.concurrency} clients, {args.seconds:.0f} s each, {args.workers} {args.server} "
                f"process(es){niced}, pool {args.pool_size}, {WAITING_TICKETS} waiting tickets in the line; "
                f"idle RSS {idle_rss:.0f} MB;\n"
                f"call_next: {COUNTERS} counters draining {DRAIN_TICKETS} tickets (req/s = tickets/s)"
            )
            print_table(rows)
            report.save(args.json, figures(rows, idle_rss))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
