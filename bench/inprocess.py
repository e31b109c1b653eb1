"""The application's own CPU per request: the ASGI app driven directly, with no HTTP server and no socket,
against a real PostgreSQL.

    .venv/bin/python bench/inprocess.py [--only get_ticket,transition] [--requests 20000] [--concurrency 16]
    .venv/bin/python bench/inprocess.py --only transition --profile [--top 40]
    .venv/bin/python bench/inprocess.py --only get_ticket --instructions [--requests 2000]

bench/run.py measures the whole served request, shared with PostgreSQL and the load generator on the same
cores. This script answers the narrower question behind its "srv µs" column: how much of it is the
application (middleware, routing, auth, validation, the asyncpg calls, the answer) and, with `--profile`,
which functions (cProfile, sorted by their own time; it roughly doubles every cost, so read it for shares,
not for absolute figures). The requests are bench/run.py's, on the same kind of database; a real server is
started only to set that data up. Uses an embedded PostgreSQL unless BENCH_DATABASE_URL is set.

`--instructions` counts instead of timing: the measuring process runs under valgrind's callgrind, with the
instrumentation switched on only while an endpoint's requests run (set-up and warm-up run outside it, and
PostgreSQL is another process), and prints the machine instructions this process executed per request.
CPU time on this shared machine moves by ±30 % from one run to the next; the instruction count of the
same code by under a percent when nothing else runs (bench/README.md), so an A/B of a small change reads in
one run instead of several alternated ones. Under callgrind the app runs ~50 times slower: 2,000 requests take
about a minute per endpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    ADMIN_KEY,
    SPECIAL,
    Setup,
    cpu_seconds,
    database,
    endpoints,
    free_port,
    postgres_pids,
    prepare,
    selected_endpoints,
    server,
    spent,
)
from virtualq import migrate  # noqa: E402

Asgi = Any  # the application: an ASGI callable


class Driver:
    """Sends requests straight into the ASGI app: one scope, one body message, the answer's status."""

    def __init__(self, app: Asgi, key: str) -> None:
        self.app = app
        # Requests each (endpoint, task) has sent so far, across runs: bench/run.py's transitions alternate
        # serve and requeue by this count, so a second run must go on from where the first one stopped.
        self.sent: dict[tuple[str, int], int] = {}
        self.headers = [
            (b"host", b"bench"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"user-agent", b"bench-inprocess"),
        ]

    async def request(self, method: str, target: str, body: bytes | None) -> int:
        path, _, query = target.partition("?")
        headers = list(self.headers)
        if body is not None:
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8080),
        }
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body or b"", "more_body": False}
            await asyncio.Event().wait()  # the client stays until it has its answer
            return {"type": "http.disconnect"}

        status = 0

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await self.app(scope, receive, send)
        return status


async def drive(
    driver: Driver,
    setup: Setup,
    name: str,
    requests: int,
    concurrency: int,
    counting: Callable[[bool], None] | None = None,
) -> dict[str, Any]:
    """`requests` requests of endpoint `name` from `concurrency` tasks; CPU of this process and PostgreSQL.
    `counting(True)` and `counting(False)` are called just before the first request and after the last."""
    make = endpoints(setup)[name]
    clients, stop_status, _ = SPECIAL.get(name, (concurrency, None, None))
    remaining = iter(range(requests))
    statuses: dict[int, int] = {}
    done = 0

    async def worker(index: int) -> None:
        nonlocal done
        while next(remaining, None) is not None:
            n = driver.sent.get((name, index), 0)
            driver.sent[name, index] = n + 1
            status = await driver.request(*make(index, n))
            if status == stop_status:
                return
            statuses[status] = statuses.get(status, 0) + 1
            done += 1

    databases = cpu_seconds(postgres_pids())
    cpu, wall = time.process_time(), time.perf_counter()
    if counting is not None:
        counting(True)
    await asyncio.gather(*(worker(index) for index in range(clients)))
    if counting is not None:
        counting(False)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    database_cpu = spent(databases, cpu_seconds(postgres_pids()))
    per_request = 1e6 / max(done, 1)
    return {
        "name": name,
        "requests": done,
        "rate": done / wall if wall else 0.0,
        "app_us": cpu * per_request,
        "pg_us": database_cpu * per_request if databases else float("nan"),
        "statuses": dict(sorted(statuses.items())),
    }


def callgrind(*command: str) -> None:
    """Send this process's callgrind a command (`-i on`, `-i off`, `-d`) and wait until it is done."""
    subprocess.run(["callgrind_control", *command, str(os.getpid())], check=True, capture_output=True)


async def count_instructions(driver: Driver, setup: Setup, args: argparse.Namespace) -> None:
    """Under callgrind (the child of `instructions`): each endpoint's requests with the instrumentation on,
    its counts dumped to a file of their own; prints `endpoint requests` per line for the parent."""
    for name in args.names:
        # Only the requests: not this script's reading of /proc around them (~15 ms of CPU per endpoint).
        result = await drive(
            driver,
            setup,
            name,
            args.requests,
            args.concurrency,
            lambda on: callgrind("-i", "on" if on else "off"),
        )
        callgrind("-d")
        print(f"counted {name} {result['requests']} {json.dumps(result['statuses'])}", flush=True)


def instructions(setup: Setup, dsn: str, args: argparse.Namespace) -> None:
    """Run the measuring half of this script under callgrind and print instructions per request."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="vq-callgrind-") as scratch:
        if args.callgrind_dir:  # the counts stay there, one file per endpoint, for callgrind_annotate
            scratch = args.callgrind_dir
            Path(scratch).mkdir(parents=True, exist_ok=True)
        setup_file = Path(scratch) / "setup.json"
        setup_file.write_text(json.dumps(dataclasses.asdict(setup)))
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={scratch}/callgrind.out",
            sys.executable,
            str(Path(__file__).resolve()),
            "--only",
            ",".join(args.names),
            "--requests",
            str(args.requests),
            "--concurrency",
            str(args.concurrency),
            "--counted-child",
            str(setup_file),
        ]
        done = subprocess.run(
            command, env={**os.environ, "BENCH_CHILD_DSN": dsn}, capture_output=True, text=True
        )
        counted = [
            line.split(maxsplit=3)[1:] for line in done.stdout.splitlines() if line.startswith("counted ")
        ]
        if done.returncode != 0 or len(counted) != len(args.names):
            sys.stderr.write(done.stdout + done.stderr)
            raise SystemExit(f"the counted run failed (exit {done.returncode})")
        dumps = sorted(
            Path(scratch).glob("callgrind.out.*"), key=lambda path: int(path.name.rsplit(".", 1)[1])
        )
        print(f"in process under callgrind: {args.concurrency} tasks, {args.requests} requests per endpoint")
        print(f"{'endpoint':<22}{'instructions per request':>26}  statuses")
        for (name, requests, statuses), dump in zip(counted, dumps, strict=True):
            totals = re.search(r"^totals:\s+(\d+)", dump.read_text(), re.MULTILINE)
            if totals is None:
                raise SystemExit(f"no totals in {dump.name}")
            per_request = int(totals.group(1)) / int(requests)
            print(f"{name:<22}{per_request:>26,.0f}  {statuses}")
            if args.callgrind_dir:
                kept = dump.with_name(f"callgrind.{name}")
                dump.rename(kept)
                print(f"{'':<22}callgrind_annotate {kept}")


async def measure(setup: Setup, dsn: str, args: argparse.Namespace) -> None:
    os.environ.update(
        {
            "DATABASE_URL": dsn,
            "ADMIN_API_KEY": ADMIN_KEY,
            "LOG_LEVEL": "warning",
            "RATE_LIMIT_PER_MINUTE": "0",
            "DB_POOL_MAX_SIZE": "20",
            "AUTO_MIGRATE": "false",
        }
    )
    from virtualq.cli import create_app_from_env

    app = create_app_from_env()
    driver = Driver(app, setup.key)
    names = args.names
    async with app.router.lifespan_context(app):
        for name in names:  # warm up: caches, prepared statements, compiled types
            await drive(driver, setup, name, min(2000, args.requests), args.concurrency)
        if args.counted_child:
            await count_instructions(driver, setup, args)
            return
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            result = await drive(driver, setup, names[0], args.requests, args.concurrency)
            profiler.disable()
            print(f"{result['name']}: {result['requests']} requests under cProfile {result['statuses']}")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
            return
        print(f"in process, no HTTP: {args.concurrency} tasks, {args.requests} requests per endpoint")
        print(f"{'endpoint':<16}{'req/s':>9}{'app µs':>9}{'pg µs':>9}  statuses")
        for name in names:
            result = await drive(driver, setup, name, args.requests, args.concurrency)
            print(
                f"{name:<16}{result['rate']:>9.0f}{result['app_us']:>9.0f}{result['pg_us']:>9.0f}"
                f"  {result['statuses']}"
            )
        print("app µs: CPU of this process per request (the application alone); pg µs: PostgreSQL's")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="get_ticket,transition,create_ticket", help="endpoint names")
    parser.add_argument("--requests", type=int, default=20000, help="per endpoint")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent tasks (call_next: 8)")
    parser.add_argument("--profile", action="store_true", help="cProfile the first endpoint named")
    parser.add_argument("--top", type=int, default=40, help="functions printed with --profile")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions per request under callgrind"
    )
    parser.add_argument(
        "--callgrind-dir", metavar="DIR", help="with --instructions: keep callgrind's counts here"
    )
    parser.add_argument("--counted-child", metavar="SETUP", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.names = selected_endpoints(parser, args.only)
    if args.counted_child:  # the measuring half of --instructions, under callgrind; set-up done already
        setup = Setup(**json.loads(Path(args.counted_child).read_text()))
        uvloop.run(measure(setup, os.environ["BENCH_CHILD_DSN"], args))
        return 0
    with database() as (dsn, _):
        migrate.upgrade(dsn)
        port = free_port()
        with server(dsn, port, 1):
            setup = asyncio.run(prepare(f"http://127.0.0.1:{port}", dsn))
        if args.instructions:
            instructions(setup, dsn, args)
        else:
            uvloop.run(measure(setup, dsn, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
