"""Logging for background loops that retry (the event hub, its listener, the webhook worker, the sweeper).

While the database is away every such loop fails at each pass, once a second or so; a traceback each time
was ~2.7 KB a line, about 500 MB a day per process. A `Failing` logs the first failure of a run of them
with its traceback, then while the failures go on one line a minute with their count, and one line when
the loop works again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

REPEAT_SECONDS = 60.0


@dataclass
class Failing:
    logger: Any  # a structlog logger
    event: str  # e.g. "event_hub_read_failed"; the recovery is logged as "<event without _failed>_recovered"
    level: str = "warning"
    repeat_seconds: float = REPEAT_SECONDS
    _since: float | None = None
    _count: int = 0
    _logged: float = 0.0

    @property
    def recovered_event(self) -> str:
        return self.event.removesuffix("_failed").removesuffix("_lost") + "_recovered"

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._count += 1
        log = getattr(self.logger, self.level)
        if self._since is None:
            self._since = self._logged = now
            log(self.event, exc_info=exc)
        elif now - self._logged >= self.repeat_seconds:
            self._logged = now
            log(
                self.event,
                error=f"{type(exc).__name__}: {exc}"[:300],
                failures=self._count,
                failing_seconds=round(now - self._since),
            )

    def succeeded(self) -> None:
        if self._since is None:
            return
        self.logger.info(
            self.recovered_event,
            failures=self._count,
            failing_seconds=round(time.monotonic() - self._since, 1),
        )
        self._since, self._count = None, 0
