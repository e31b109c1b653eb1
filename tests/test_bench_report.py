"""bench/all.py's closing table: the verdicts follow the figures, and a script really writes them."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench import report

ROOT = Path(__file__).resolve().parent.parent


def endpoint(name: str, rps: float, ceiling: float, p99: float, **statuses: int) -> dict[str, Any]:
    return {
        "name": name,
        "requests_per_second": rps,
        "p50_ms": p99 / 3,
        "p99_ms": p99,
        "sql_tps": ceiling,
        "ratio": rps / ceiling if ceiling == ceiling else math.nan,
        "rss_mb": 115.0,
        "server_us": 80.0,
        "postgres_us": 25.0,
        "generator_us": 20.0,
        "statuses": statuses or {"200": int(rps * 10)},
    }


GOOD: dict[str, dict[str, Any] | None] = {
    "run": {
        "idle_rss_mb": 111.0,
        "endpoints": [
            endpoint("create_ticket", 2600, 1250, 25.7),
            endpoint("create_8_queues", 1660, math.nan, 34.6),
            endpoint("transition", 2233, 3700, 32.8),
            endpoint("get_ticket", 16000, 30000, 8.3),
            endpoint("call_next", 2500, 4800, 7.0),
        ],
    },
    "stream": {
        "sse": {
            "clients": 1000,
            "delivered": 394000,
            "expected": 394000,
            "events_per_second": 19700.0,
            "p50_ms": 12.0,
            "p99_ms": 36.5,
            "answer_p99_ms": 30.0,
            "rss_idle_mb": 103.0,
            "rss_connected_mb": 139.0,
            "rss_load_mb": 142.0,
        },
        "webhooks": {"received": 2000, "count": 2000, "per_second": 710.0},
    },
    "coldstart": {"first_seconds": 2.04, "warm_seconds": [1.21, 1.30, 1.43]},
    "scale": {
        "creates_per_second": 2151.0,
        "call_next_per_second": 702.0,
        "tickets": 21531,
        "handed_out": 21531,
        "duplicates": 0,
        "numbers_unique": True,
        "rate_limit": {"sent": 400, "allowed": 100, "refused": 300, "shared": True},
    },
}


def verdicts(table: str) -> dict[str, str]:
    """measure name -> its `met` cell."""
    rows = table.splitlines()
    header = rows[0]
    column = header.index("met")
    return {line.split()[0]: line[column:].split()[0] for line in rows[2:-1]}


def test_a_run_within_every_target_is_met_everywhere() -> None:
    table = report.summary(GOOD)
    met = verdicts(table)
    assert met["create_ticket"] == "yes"
    assert met["call_next"] == "yes"
    assert met["create_8_queues"] == "yes"  # p99 only: it has no ceiling of its own
    assert met["webhooks"] == "—"  # no target, only figures
    assert met["scale_create"] == "—"
    assert table.splitlines()[-1] == "10 of 10 targets met"
    header = table.splitlines()[0]
    for column in ("req/s", "p50 ms", "p99 ms", "SQL tps", "ratio", "RSS MB", "target", "met"):
        assert column in header


@pytest.mark.parametrize(
    ("section", "change", "row"),
    [
        ("run", lambda f: f["endpoints"][3].update(ratio=0.33), "get_ticket"),
        ("run", lambda f: f["endpoints"][2].update(p99_ms=50.1), "transition"),
        ("run", lambda f: f["endpoints"][4].update(statuses={"200": 10, "500": 1}), "call_next"),
        ("run", lambda f: f["endpoints"][0].update(ratio=math.nan), "create_ticket"),  # pgbench failed
        ("run", lambda f: f.update(idle_rss_mb=121.0), "idle_rss"),
        ("stream", lambda f: f["sse"].update(delivered=393999), "sse_1000_clients"),
        ("stream", lambda f: f["sse"].update(rss_load_mb=301.0), "sse_1000_clients"),
        ("stream", lambda f: f["sse"].update(clients=500), "sse_500_clients"),
        ("coldstart", lambda f: f.update(warm_seconds=[1.2, 3.1]), "cold_start"),
        ("coldstart", lambda f: f.update(warm_seconds=[]), "cold_start"),
        ("stream", lambda f: f["sse"].update(rss_connected_mb=301.0), "sse_1000_clients"),
        ("scale", lambda f: f.update(duplicates=1), "scale_call_next"),
        ("scale", lambda f: f.update(handed_out=21530), "scale_call_next"),
        ("scale", lambda f: f.update(numbers_unique=False), "scale_call_next"),
        ("scale", lambda f: f["rate_limit"].update(allowed=200, shared=False), "scale_call_next"),
    ],
)
def test_a_figure_past_its_target_is_not_met(section: str, change: Any, row: str) -> None:
    results = copy.deepcopy(GOOD)
    change(results[section])
    table = report.summary(results)
    assert verdicts(table)[row] == "NO"
    assert table.splitlines()[-1] == "9 of 10 targets met"


def test_a_script_that_wrote_nothing_is_a_row_and_named_at_the_end() -> None:
    table = report.summary({**GOOD, "scale": None})
    assert "bench/scale.py failed: no figures" in table
    assert verdicts(table)["scale"] == "—"  # nothing measured: not counted as met or missed
    assert table.splitlines()[-1] == "9 of 9 targets met; not measured (failed): bench/scale.py"


def test_scale_failures_name_each_broken_check() -> None:
    figures = copy.deepcopy(GOOD["scale"])
    assert figures is not None
    assert report.scale_failures(figures) == []
    figures.update(duplicates=2, numbers_unique=False)
    figures["rate_limit"].update(allowed=200, shared=False)
    assert report.scale_failures(figures) == [
        "call-next handed out 21531 of 21531 tickets, 2 twice",
        "ticket numbers are not unique",
        "rate limits are not shared: 200 of 400 allowed",
    ]


def test_load_reads_what_save_wrote_and_none_for_a_missing_or_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "figures.json"
    report.save(str(path), {"first_seconds": 1.5, "warm_seconds": [1.0]})
    assert report.load(path) == {"first_seconds": 1.5, "warm_seconds": [1.0]}
    report.save(None, {"ignored": True})  # no --json: nothing written
    assert report.load(tmp_path / "absent.json") is None
    path.write_text("{not json")
    assert report.load(path) is None


@pytest.mark.slow
def test_coldstart_writes_its_figures_for_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "coldstart.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "coldstart.py"), "--warm", "1", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["first_seconds"] > 0
    assert len(figures["warm_seconds"]) == 1
    table = report.summary({"coldstart": figures})
    assert verdicts(table)["cold_start"] in ("yes", "NO")  # the machine decides; the row is there
    assert f"{figures['warm_seconds'][0]:.2f} s" in table
