"""The application's notion of "now", for time-based rules (estimates, time limits).

Rows keep the database's own `now()`; rules that compare against the present ask this clock, so tests can
pin it. `set_now` is for tests and tools only.
"""

from __future__ import annotations

from datetime import UTC, datetime

_fixed: datetime | None = None


def now() -> datetime:
    return _fixed if _fixed is not None else datetime.now(UTC)


def set_now(value: datetime | None) -> None:
    """Pin the clock to `value` (timezone-aware), or release it with None."""
    global _fixed
    if value is not None and value.tzinfo is None:
        raise ValueError("the clock needs a timezone-aware datetime")
    _fixed = value


def is_pinned() -> bool:
    return _fixed is not None
