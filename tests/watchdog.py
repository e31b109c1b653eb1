"""A hung test fails the run at once, with the evidence, instead of running into CI's time limit.

Every test phase (setup, call, teardown) gets TEST_TIMEOUT_SECONDS (default 300). When one overruns, the
watchdog thread prints every thread's stack and every pending asyncio task's stack of the session's event
loop to stderr, then interrupts the main thread (pytest stops and reports); if even that does not end the
run within 30 s, the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

LIMIT = float(os.environ.get("TEST_TIMEOUT_SECONDS", "300"))
GRACE = 30.0


class Watchdog:
    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.phase: str | None = None
        self.deadline = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.config: pytest.Config | None = None
        self._lock = threading.Lock()
        threading.Thread(target=self._watch, name="test-watchdog", daemon=True).start()

    def begin(self, phase: str) -> None:
        with self._lock:
            self.phase, self.deadline = phase, time.monotonic() + self.limit

    def end(self) -> None:
        with self._lock:
            self.phase = None

    def _watch(self) -> None:
        while True:
            time.sleep(1)
            with self._lock:
                phase, overdue = self.phase, self.phase is not None and time.monotonic() > self.deadline
            if overdue:
                with contextlib.suppress(BaseException):  # a failed report must not keep the run going
                    self._report(phase)
                # A real signal: it also wakes an event loop that waits for nothing.
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(GRACE)
                os._exit(3)

    def _report(self, phase: str | None) -> None:
        capture = self.config.pluginmanager.getplugin("capturemanager") if self.config else None
        if capture is not None:
            capture.suspend_global_capture(in_=True)
        out = sys.stderr
        print(f"\n=== watchdog: {phase} ran over {self.limit:.0f} s; stacks follow ===", file=out, flush=True)
        faulthandler.dump_traceback(file=out, all_threads=True)
        if self.loop is not None:
            try:
                tasks = list(asyncio.all_tasks(self.loop))
            except RuntimeError:  # the set changed while being copied; one retry is enough for a report
                tasks = list(asyncio.all_tasks(self.loop))
            print(f"=== {len(tasks)} pending asyncio tasks ===", file=out, flush=True)
            for task in tasks:
                task.print_stack(limit=12, file=out)
        out.flush()


WATCHDOG = Watchdog(LIMIT)


def pytest_configure(config: pytest.Config) -> None:
    WATCHDOG.config = config


def _watched(phase: str) -> Iterator[Any]:
    WATCHDOG.begin(phase)
    try:
        return (yield)
    finally:
        WATCHDOG.end()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[Any]:
    return (yield from _watched(f"setup of {item.nodeid}"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[Any]:
    return (yield from _watched(item.nodeid))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[Any]:
    return (yield from _watched(f"teardown of {item.nodeid}"))


@pytest.fixture(scope="session", autouse=True)
async def _watch_the_loop() -> None:
    WATCHDOG.loop = asyncio.get_running_loop()
