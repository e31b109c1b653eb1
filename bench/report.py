"""One table for the whole suite, against issue 7's targets.

Each benchmark script writes what it measured as JSON with `--json PATH`; bench/all.py runs them in turn and
hands the files to `summary()`. The verdicts are computed here from the figures, never written by hand.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Issue 7's targets (2 cores, 32 clients, loopback).
WRITE_RATIO, WRITE_P99_MS = 0.5, 50.0
READ_RATIO, READ_P99_MS = 0.5, 30.0
CALL_NEXT_RATIO = 0.5
SSE_CLIENTS, SSE_RSS_MB = 1000, 300.0
IDLE_RSS_MB = 120.0
COLD_START_SECONDS = 3.0

# endpoint -> (minimum ratio to its SQL ceiling or None, p99 limit in ms or None)
ENDPOINT_TARGETS: dict[str, tuple[float | None, float | None]] = {
    "create_ticket": (WRITE_RATIO, WRITE_P99_MS),
    "create_8_queues": (None, WRITE_P99_MS),  # no ceiling of its own: its statements are create's
    "transition": (WRITE_RATIO, WRITE_P99_MS),
    "get_ticket": (READ_RATIO, READ_P99_MS),
    "get_ticket_8_queues": (READ_RATIO, READ_P99_MS),
    "queue_tickets": (READ_RATIO, READ_P99_MS),
    "monitor": (READ_RATIO, READ_P99_MS),
    "call_next": (CALL_NEXT_RATIO, None),
}


def add_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", metavar="PATH", help="also write the figures to PATH (bench/all.py reads it)"
    )


def save(path: str | None, figures: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(figures, indent=2) + "\n")


def load(path: Path) -> dict[str, Any] | None:
    """A script's figures, or None when it wrote none (it failed before the end)."""
    try:
        figures: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return figures


@dataclass
class Row:
    name: str
    rps: float = math.nan
    p50: float = math.nan
    p99: float = math.nan
    ceiling: float = math.nan
    ratio: float = math.nan
    rss: float = math.nan
    target: str = ""
    met: bool | None = None  # None: no target, or nothing measured
    note: str = ""


def _limits(ratio: float | None, p99: float | None) -> str:
    parts = ([f"ratio ≥ {ratio:g}"] if ratio is not None else []) + (
        [f"p99 ≤ {p99:g} ms"] if p99 is not None else []
    )
    return ", ".join(parts)


def endpoint_rows(figures: dict[str, Any]) -> list[Row]:
    rows = []
    for endpoint in figures["endpoints"]:
        name = endpoint["name"]
        min_ratio, max_p99 = ENDPOINT_TARGETS.get(name, (None, None))
        checks = []
        if min_ratio is not None:
            checks.append(endpoint["ratio"] >= min_ratio)  # NaN (no ceiling) compares False: not met
        if max_p99 is not None:
            checks.append(endpoint["p99_ms"] <= max_p99)
        ok_statuses = all(200 <= int(status) < 300 for status in endpoint["statuses"])
        rows.append(
            Row(
                name,
                endpoint["requests_per_second"],
                endpoint["p50_ms"],
                endpoint["p99_ms"],
                endpoint["sql_tps"],
                endpoint["ratio"],
                endpoint["rss_mb"],
                _limits(min_ratio, max_p99),
                (all(checks) and ok_statuses) if checks else None,
                "" if ok_statuses else f"statuses {endpoint['statuses']}",
            )
        )
    idle = figures["idle_rss_mb"]
    rows.append(Row("idle_rss", rss=idle, target=f"RSS ≤ {IDLE_RSS_MB:g} MB", met=idle <= IDLE_RSS_MB))
    return rows


def stream_rows(figures: dict[str, Any]) -> list[Row]:
    sse = figures["sse"]
    every_event = sse["delivered"] == sse["expected"] and sse["expected"] > 0
    peak = max(sse["rss_connected_mb"], sse["rss_load_mb"])
    rows = [
        Row(
            "idle_rss_sse_server",
            rss=sse["rss_idle_mb"],
            target=f"RSS ≤ {IDLE_RSS_MB:g} MB",
            met=sse["rss_idle_mb"] <= IDLE_RSS_MB,
        ),
        Row(
            f"sse_{sse['clients']}_clients",
            rps=sse["events_per_second"],
            p50=sse["p50_ms"],
            p99=sse["p99_ms"],
            rss=peak,
            target=f"{SSE_CLIENTS:,} clients, every event, RSS ≤ {SSE_RSS_MB:g} MB",
            met=sse["clients"] >= SSE_CLIENTS and every_event and peak <= SSE_RSS_MB,
            note=f"{sse['delivered']:,} of {sse['expected']:,} events; req/s: events delivered/s; "
            "latency: request sent -> client",
        ),
    ]
    webhooks = figures.get("webhooks")
    if webhooks:
        rows.append(
            Row(
                "webhooks",
                rps=webhooks["per_second"],
                note=f"{webhooks['received']:,} of {webhooks['count']:,} deliveries",
            )
        )
    return rows


def coldstart_rows(figures: dict[str, Any]) -> list[Row]:
    warm = figures["warm_seconds"]
    shown = " / ".join(f"{s:.2f}" for s in warm)
    return [
        Row(
            "cold_start",
            target=f"≤ {COLD_START_SECONDS:g} s to ready",
            met=bool(warm) and max(warm) <= COLD_START_SECONDS,
            note=f"initialised database {shown} s; first start (initdb, migrations) "
            f"{figures['first_seconds']:.2f} s",
        )
    ]


def scale_failures(figures: dict[str, Any]) -> list[str]:
    """What bench/scale.py checks: every ticket handed out once, numbers unique, one rate-limit bucket."""
    limits = figures["rate_limit"]
    failures = []
    if figures["duplicates"] or figures["handed_out"] != figures["tickets"]:
        failures.append(
            f"call-next handed out {figures['handed_out']} of {figures['tickets']} tickets, "
            f"{figures['duplicates']} twice"
        )
    if not figures["numbers_unique"]:
        failures.append("ticket numbers are not unique")
    if not limits["shared"]:
        failures.append(f"rate limits are not shared: {limits['allowed']} of {limits['sent']} allowed")
    return failures


def scale_rows(figures: dict[str, Any]) -> list[Row]:
    limits = figures["rate_limit"]
    return [
        Row(
            "scale_create",
            rps=figures["creates_per_second"],
            note=f"two processes and Redis; {figures['tickets']:,} tickets",
        ),
        Row(
            "scale_call_next",
            rps=figures["call_next_per_second"],
            target="each ticket once, one rate-limit bucket",
            met=not scale_failures(figures),
            note=f"handed out {figures['handed_out']:,} of {figures['tickets']:,}, duplicates "
            f"{figures['duplicates']}; rate limit {limits['allowed']} allowed of {limits['sent']}",
        ),
    ]


SECTIONS = {"run": endpoint_rows, "stream": stream_rows, "coldstart": coldstart_rows, "scale": scale_rows}


def summary(results: dict[str, dict[str, Any] | None]) -> str:
    """The table for the scripts that ran. A script that wrote no figures gets a row that says so, and the
    closing line names it: its targets were not measured, so they are not in the count."""
    rows: list[Row] = []
    unmeasured = []
    for section, build in SECTIONS.items():
        if section not in results:
            continue
        figures = results[section]
        if figures is None:
            rows.append(Row(section, note=f"bench/{section}.py failed: no figures"))
            unmeasured.append(f"bench/{section}.py")
        else:
            rows += build(figures)
    table = render(rows)
    if unmeasured:
        table += f"; not measured (failed): {', '.join(unmeasured)}"
    return table


def _number(value: float, width: int, digits: int) -> str:
    return f"{'—':>{width}}" if math.isnan(value) else f"{value:>{width}.{digits}f}"


def render(rows: list[Row]) -> str:
    target_width = max([len("target"), *(len(row.target) for row in rows)]) + 2
    header = (
        f"{'measure':<22}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'SQL tps':>10}{'ratio':>7}{'RSS MB':>8}"
        f"  {'target':<{target_width}}{'met':<5}note"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        met = "—" if row.met is None else ("yes" if row.met else "NO")
        lines.append(
            f"{row.name:<22}{_number(row.rps, 9, 0)}{_number(row.p50, 9, 1)}{_number(row.p99, 9, 1)}"
            f"{_number(row.ceiling, 10, 0)}{_number(row.ratio, 7, 2)}{_number(row.rss, 8, 0)}"
            f"  {row.target:<{target_width}}{met:<5}{row.note}".rstrip()
        )
    verdicts = [row.met for row in rows if row.met is not None]
    lines.append(f"{verdicts.count(True)} of {len(verdicts)} targets met")
    return "\n".join(lines)
