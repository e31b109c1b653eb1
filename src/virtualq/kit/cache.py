"""A small in-process cache with a time limit per entry, for hot, rarely changing rows (API keys, tenants).

Entries expire after `ttl` seconds, so a change made through another process is seen within `ttl` even if
its invalidation message is lost; changes made through this process clear the cache at once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

MISSING: Any = object()


class TtlCache:
    def __init__(self, ttl: float, max_size: int = 10_000) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._entries: OrderedDict[Any, tuple[float, Any]] = OrderedDict()

    def get(self, key: Any) -> Any:
        if self.ttl <= 0:
            return MISSING
        entry = self._entries.get(key)
        if entry is None:
            return MISSING
        expires, value = entry
        if expires < time.monotonic():
            del self._entries[key]
            return MISSING
        return value

    def put(self, key: Any, value: Any) -> None:
        if self.ttl <= 0:
            return
        self._entries[key] = (time.monotonic() + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def delete(self, key: Any) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
