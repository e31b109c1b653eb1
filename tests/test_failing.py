"""kit/failing.Failing: a background loop's run of failures is one traceback, then one line per period with
the count, then one line when it works again (its wiring in each loop: test_faults, the database outage)."""

from __future__ import annotations

import time

import structlog
from structlog.testing import capture_logs

from virtualq.kit.failing import Failing


def test_a_run_of_failures_is_one_traceback_a_line_per_period_and_a_recovery() -> None:
    log = structlog.get_logger("test")
    failing = Failing(log, "thing_failed", repeat_seconds=0.2)
    with capture_logs() as logs:
        for _ in range(50):  # 50 failures in ~0.5 s: the first, then one per 0.2 s
            failing.failed(ConnectionRefusedError(111, "refused"))
            time.sleep(0.01)
        failing.succeeded()
        failing.succeeded()  # nothing more: it already said so
        failing.failed(OSError("again"))  # a new run starts with its traceback again
    events = [(entry["event"], entry["log_level"]) for entry in logs]
    assert events[0] == ("thing_failed", "warning")
    assert isinstance(logs[0]["exc_info"], ConnectionRefusedError)
    repeats = [entry for entry in logs[1:] if entry["event"] == "thing_failed" and "exc_info" not in entry]
    assert 1 <= len(repeats) <= 3, logs
    assert all(entry["error"] == "ConnectionRefusedError: [Errno 111] refused" for entry in repeats)
    assert [entry["failures"] for entry in repeats] == sorted(entry["failures"] for entry in repeats)
    (recovered,) = [entry for entry in logs if entry["event"] == "thing_recovered"]
    assert recovered["failures"] == 50
    assert recovered["failing_seconds"] >= 0.4
    assert logs[-1]["event"] == "thing_failed"
    assert isinstance(logs[-1]["exc_info"], OSError)
    assert len(logs) == 1 + len(repeats) + 1 + 1


def test_the_level_and_the_recovery_name_follow_the_event() -> None:
    failing = Failing(structlog.get_logger("test"), "event_listener_lost", level="error")
    assert failing.recovered_event == "event_listener_recovered"
    with capture_logs() as logs:
        failing.failed(RuntimeError("x"))
        failing.succeeded()
    assert [(entry["event"], entry["log_level"]) for entry in logs] == [
        ("event_listener_lost", "error"),
        ("event_listener_recovered", "info"),
    ]
