"""Cold start: how long `virtualq serve` takes from launch to ready on the embedded defaults.

    .venv/bin/python bench/coldstart.py [--warm 3]

Starts the server in a new, empty data directory (the first start initialises the embedded PostgreSQL and
runs the migrations), then `--warm` more times on the same directory (an initialised database, as after a
restart). Each time is from launching the process to the first 200 from `/readyz` (the database reachable
and migrated), polled every 10 ms on loopback; the server is then stopped with SIGTERM, as an operator
would, and must exit cleanly. Issue 7's target is 3 s with an initialised database.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.run import free_port  # noqa: E402
from virtualq.embedded_pg import EmbeddedPostgres  # noqa: E402

VIRTUALQ = Path(sys.executable).parent / "virtualq"
READY_WITHIN_SECONDS = 60.0


# Loopback only, whatever proxy the caller's shell names.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# Settings that would make the server something else than the embedded defaults.
NOT_DEFAULTS = ("DATABASE_URL", "REDIS_URL", "AUTO_MIGRATE", "WEB_CONCURRENCY", "VIRTUALQ_DATA_DIR")


def ready(port: int) -> bool:
    try:
        with DIRECT.open(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_once(data_dir: Path) -> float:
    """Seconds from launch to ready; stops the server and checks that it exited cleanly."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in NOT_DEFAULTS}
    env |= {
        "VIRTUALQ_DATA_DIR": str(data_dir),
        "ADMIN_API_KEY": "vq_admin_coldstart_" + "x" * 24,
        "LOG_LEVEL": "warning",
    }
    # Errors to a file, not a pipe: a server that logs a lot must not block on a pipe nobody reads.
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = subprocess.Popen(
            [str(VIRTUALQ), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,
        )
        try:
            while not ready(port):
                if process.poll() is not None:
                    errors.seek(0)
                    raise SystemExit(
                        f"the server exited with {process.returncode}: {errors.read()[-2000:]!r}"
                    )
                if time.perf_counter() - started > READY_WITHIN_SECONDS:
                    raise SystemExit(f"not ready within {READY_WITHIN_SECONDS:.0f} s")
                time.sleep(0.01)
            elapsed = time.perf_counter() - started
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            try:
                code = process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                raise SystemExit("the server did not stop within 30 s of SIGTERM") from None
    if code != 0:
        raise SystemExit(f"the server exited with {code} after SIGTERM")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warm", type=int, default=3, help="starts after the first (default 3)")
    report.add_option(parser)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="vq-coldstart-"))
    try:
        first = start_once(data_dir)
        print(f"first start (initialise the database, migrate): {first:.2f} s to ready", flush=True)
        warm = [start_once(data_dir) for _ in range(args.warm)]
        if warm:
            shown = " / ".join(f"{seconds:.2f}" for seconds in warm)
            print(f"start with an initialised database: {shown} s to ready (target 3 s)")
        report.save(args.json, {"first_seconds": first, "warm_seconds": warm})
    finally:
        # A server killed before its SIGTERM handler was installed leaves the embedded PostgreSQL running
        # (pg_ctl starts it in a session of its own): stop it before its directory goes.
        EmbeddedPostgres(data_dir).stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
