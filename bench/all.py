"""The whole benchmark suite with one command, ending with one table against issue 7's targets.

    .venv/bin/python bench/all.py [--seconds 10] [--only run,stream,coldstart,scale]   # make bench-all

Runs bench/run.py (every endpoint against its pgbench ceiling), bench/stream.py (1,000 SSE clients, then
webhook throughput), bench/coldstart.py (launch to ready) and bench/scale.py (two processes with Redis), one
after the other so that they do not share the cores, each printing its own figures as it goes. Then one
table: every endpoint's requests/s, p50, p99, SQL ceiling, ratio and RSS, the stream, cold start and scaling
rows, each with its target and whether this run met it (bench/report.py). About 7 minutes at the defaults.
Exits non-zero when a script failed or wrote no figures, not when a target is missed: the table says which.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402


def commands(seconds: float) -> dict[str, list[str]]:
    return {
        "run": ["run.py", "--seconds", f"{seconds:g}"],
        "stream": ["stream.py"],
        "coldstart": ["coldstart.py"],
        "scale": ["scale.py", "--seconds", f"{seconds:g}"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="each endpoint's load, and scale.py's create phase"
    )
    parser.add_argument("--only", default="", help="comma-separated scripts: run, stream, coldstart, scale")
    args = parser.parse_args()
    every = commands(args.seconds)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(every)
    unknown = sorted(set(chosen) - set(every))
    if unknown:
        parser.error(f"unknown script(s) {', '.join(unknown)}; choose from {', '.join(every)}")
    results: dict[str, dict[str, Any] | None] = {}
    failed = []
    with tempfile.TemporaryDirectory(prefix="virtualq-bench-") as scratch:
        for name in chosen:
            out = Path(scratch) / f"{name}.json"
            script, *options = every[name]
            print(f"\n=== bench/{script} {' '.join(options)}".rstrip(), flush=True)
            code = subprocess.call(
                [sys.executable, str(ROOT / "bench" / script), *options, "--json", str(out)], cwd=ROOT
            )
            results[name] = report.load(out)  # a script that fails a check still writes what it measured
            if code != 0:
                failed.append(f"bench/{script} exited with {code}")
            elif results[name] is None:
                failed.append(f"bench/{script} wrote no figures")
    table = report.summary(results)
    print("\n=== the suite against issue 7's targets\n")
    print(table)
    for line in failed:
        print(line, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
