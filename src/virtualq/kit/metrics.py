"""Prometheus metrics, one registry per app so several apps (tests) never collide.

With several worker processes on one port (`WEB_CONCURRENCY` > 1) a scrape reaches whichever process accepts
it, so each process's own figures would jump between scrapes. `virtualq serve` then points
`PROMETHEUS_MULTIPROC_DIR` at a directory of its own before the workers start: prometheus_client keeps every
value in a file per process there, and `/metrics` answers with the sums over all of them (multi-process
mode). The pool's gauges, read at scrape time in one process, become gauges each process refreshes every
second, labelled with its `pid`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from virtualq.pool import Pool

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
POOL_REFRESH_SECONDS = 1.0
# Counters and histograms without their `_created` series (one more series each, read by nobody here).
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream

POOL_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WEBHOOK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
POOL_GAUGES = (
    ("virtualq_db_pool_size", "Open connections in the pool."),
    ("virtualq_db_pool_idle", "Idle connections in the pool."),
    ("virtualq_db_pool_in_use", "Connections checked out."),
    ("virtualq_db_pool_max", "Maximum connections in the pool."),
)


def multiprocess_mode() -> bool:
    """Whether prometheus_client keeps values in PROMETHEUS_MULTIPROC_DIR: decided when it was imported."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


# The files prometheus_client's multi-process mode writes: `<kind>_<pid>.db`, a gauge's kind with its mode.
_VALUE_FILE = re.compile(
    r"(?:counter|histogram|summary|gauge_(?:live)?(?:all|min|max|sum|mostrecent))_([1-9][0-9]{0,8})\.db"
)


def value_files(directory: str) -> list[tuple[Path, int]]:
    """The value files in `directory` (regular files named as prometheus_client names them), with their
    process's pid; none when the directory cannot be read."""
    found = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                match = _VALUE_FILE.fullmatch(entry.name)
                if match is not None and entry.is_file(follow_symlinks=False):
                    found.append((Path(entry.path), int(match.group(1))))
    except OSError:
        return []
    return found


def forget_dead_processes(directory: str) -> None:
    """Drop the live gauges (stream clients, pool) of processes that ended without saying so: a worker that
    was killed leaves its files, and uvicorn starts another in its place."""
    for path, pid in value_files(directory):
        if path.name.startswith("gauge_live") and not _alive(pid):
            with contextlib.suppress(OSError):  # removed meanwhile by another scrape
                multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]  # untyped upstream


def remove_dead_processes_files(directory: str) -> int | None:
    """Before any worker starts: remove the value files of earlier processes from a directory the operator
    keeps: their counters would otherwise be added to this run's (Prometheus takes a restart as a counter
    reset). When a file is in use by a live process (`_in_use`), another server is using the directory,
    and its ended workers' files are part of its sums: nothing is removed (None). Else how many files
    went."""
    files = value_files(directory)
    if any(_in_use(path, pid) for path, pid in files):
        return None
    removed = 0
    for path, _ in files:
        try:
            path.unlink()
        except OSError:  # gone already, or not ours to remove (another user's, in a shared directory)
            continue
        removed += 1
    return removed


def remove_abandoned_run_directories(parent: str, prefix: str) -> list[str]:
    """The run directories (`<prefix><pid>-*`) of servers that are gone without removing theirs (killed), this
    user's only, and only when none of their files is in use (a killed server's workers may live on). This
    process has made none yet, so one named with its pid is an earlier process's. A directory named
    otherwise is left alone: its owner cannot be told."""
    removed = []
    uid, own = os.getuid(), os.getpid()
    pattern = re.compile(re.escape(prefix) + r"([1-9][0-9]{0,8})-.+")
    try:
        with os.scandir(parent) as entries:
            candidates = [entry for entry in entries if pattern.fullmatch(entry.name)]
    except OSError:
        return []
    for entry in candidates:
        match = pattern.fullmatch(entry.name)
        assert match is not None
        server = int(match.group(1))
        try:
            owned = entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == uid
        except OSError:
            continue
        if not owned or (server != own and _alive(server)):  # a live server's: may not have workers yet
            continue
        if any(_in_use(path, pid) for path, pid in value_files(entry.path)):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    return removed


def _in_use(path: Path, pid: int) -> bool:
    """Whether process `pid` has the value file mapped (prometheus_client maps each file it writes for as
    long as the process lives), so that a pid reused by an unrelated process, or this process's own pid
    after a restart, does not keep an earlier process's file. Where the process's maps cannot be read
    (another user's process, no /proc), a live pid is taken to be using it."""
    if pid == os.getpid():
        return False  # nothing is written before the clean-up, which runs before any metric exists
    if not _alive(pid):
        return False
    try:
        maps = Path(f"/proc/{pid}/maps").read_text(errors="replace")
    except FileNotFoundError:  # ended meanwhile, or no /proc
        return _alive(pid) and not Path("/proc/self/maps").exists()
    except OSError:
        return True
    return os.path.realpath(path) in maps


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal sent: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process, but one that exists
        pass
    return True


def pool_figures(pool: Pool) -> tuple[int, int, int, int]:
    """size, idle, in use, max: the order of POOL_GAUGES."""
    size, idle = pool.get_size(), pool.get_idle_size()
    return size, idle, size - idle, pool.get_max_size()


class PoolCollector(Collector):
    """Reads the pool's size at scrape time instead of tracking every acquire."""

    def __init__(self, get_pool: Callable[[], Pool | None]) -> None:
        self._get_pool = get_pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pool = self._get_pool()
        if pool is None:
            return
        for (name, help_text), value in zip(POOL_GAUGES, pool_figures(pool), strict=True):
            yield GaugeMetricFamily(name, help_text, value=value)


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = multiprocess_mode()
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "virtualq_http_requests_total",
            "HTTP requests by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "virtualq_http_request_duration_seconds",
            "HTTP request latency by route template and status.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

        self.stream_clients = Gauge(
            "virtualq_stream_clients",
            "Connected event-stream clients.",
            registry=self.registry,
            multiprocess_mode="livesum",  # with several processes: all of theirs
        )
        self.events_dispatched = Counter(
            "virtualq_events_dispatched_total",
            "Events read from the log and offered to stream clients.",
            registry=self.registry,
        )
        self.stream_drops = Counter(
            "virtualq_stream_clients_dropped_total",
            "Stream clients dropped because they fell too far behind.",
            registry=self.registry,
        )
        self.pool_wait = Histogram(
            "virtualq_db_pool_wait_seconds",
            "Time a request waited for a database connection, counting only the requests that found none "
            "free (the others take one at once).",
            buckets=POOL_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.pool_wait_timeouts = Counter(
            "virtualq_db_pool_wait_timeouts_total",
            "Requests that gave up waiting for a database connection (answered 503).",
            registry=self.registry,
        )
        self.webhook_duration = Histogram(
            "virtualq_webhook_attempt_duration_seconds",
            "Webhook delivery attempts, from the request to the receiver's answer (or the timeout).",
            buckets=WEBHOOK_BUCKETS,
            registry=self.registry,
        )
        self.webhook_attempts = Counter(
            "virtualq_webhook_attempts_total",
            "Webhook delivery attempts by outcome (succeeded, retry, failed).",
            ["outcome"],
            registry=self.registry,
        )

        self.create_statements = Counter(
            "virtualq_ticket_create_statements_total",
            "Statements that created tickets (creates into one queue arriving together share one).",
            registry=self.registry,
        )
        self.tickets_created = Counter(
            "virtualq_tickets_created_total", "Tickets created through the API.", registry=self.registry
        )
        self.ticket_reads = Counter(
            "virtualq_ticket_reads_total",
            "Tickets read one at a time through the API (GET /v1/tickets/{id}).",
            registry=self.registry,
        )
        self.ticket_read_statements = Counter(
            "virtualq_ticket_read_statements_total",
            "Statements that read them (reads of one tenant arriving together share one).",
            registry=self.registry,
        )
        self.shared_answers = Counter(
            "virtualq_shared_answers_total",
            "Monitor-feed and queue-tickets requests (queues/feed_cache.py) by how they were answered: kept "
            "(the stored answer), computed (by this request), waited (for the one another request was "
            "computing), or uncached (FEED_CACHE_SECONDS=0).",
            ["outcome"],
            registry=self.registry,
        )
        self.fast_paths = Counter(
            "virtualq_fast_path_requests_total",
            "Requests to an endpoint with a fast path (kit/fastpath.py), by the path that answered them: "
            "fast, or full (FastAPI's) for requests outside the plain case.",
            ["endpoint", "path"],
            registry=self.registry,
        )

        self._pool_gauges: list[Gauge] = []
        self._get_pool: Callable[[], Pool | None] = lambda: None

        # The labelled children, found once: `labels()` validates and looks up its arguments on every call
        # (~4 µs a request for the three below). The keys are as bounded as the label values themselves.
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._fast_path_children: dict[tuple[str, bool], Counter] = {}
        self._shared_answer_children: dict[str, Counter] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            status_label = str(status)
            children = (
                self.requests.labels(method, route, status_label),
                self.latency.labels(method, route, status_label),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def pool_waited(self, seconds: float, gave_up: bool) -> None:
        """Pool.on_wait."""
        self.pool_wait.observe(seconds)
        if gave_up:
            self.pool_wait_timeouts.inc()

    def shared_answer(self, outcome: str) -> None:
        child = self._shared_answer_children.get(outcome)
        if child is None:
            child = self._shared_answer_children[outcome] = self.shared_answers.labels(outcome)
        child.inc()

    def fast_path(self, endpoint: str, fast: bool) -> None:
        key = (endpoint, fast)
        child = self._fast_path_children.get(key)
        if child is None:
            child = self.fast_paths.labels(endpoint, "fast" if fast else "full")
            self._fast_path_children[key] = child
        child.inc()

    def track_pool(self, get_pool: Callable[[], Pool | None]) -> None:
        """Report the request pool's size: read at scrape time, or with several processes refreshed by
        `refresh_pool_forever` (each process's own, labelled with its pid)."""
        self._get_pool = get_pool
        if not self.multiprocess:
            self.registry.register(PoolCollector(get_pool))
            return
        self._pool_gauges = [
            Gauge(name, help_text, registry=self.registry, multiprocess_mode="liveall")
            for name, help_text in POOL_GAUGES
        ]

    def refresh_pool(self) -> None:
        pool = self._get_pool()
        if pool is None or not self._pool_gauges:
            return
        for gauge, value in zip(self._pool_gauges, pool_figures(pool), strict=True):
            gauge.set(value)

    async def refresh_pool_forever(self) -> None:
        while True:
            self.refresh_pool()
            await asyncio.sleep(POOL_REFRESH_SECONDS)

    def exposition(self) -> bytes:
        """What `/metrics` answers: this process's registry, or the sums over every process's files."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        self.refresh_pool()  # this process's gauges as of now; the others' are at most a second old
        directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        forget_dead_processes(directory)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]  # untyped upstream
        return generate_latest(registry)

    def process_ended(self) -> None:
        """With several processes: drop this process's live gauges (stream clients, pool) from the sums."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]  # untyped upstream
