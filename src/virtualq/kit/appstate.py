"""The application's state (`app.state`) with attribute reads at the cost of a plain attribute.

Starlette's `State` keeps its values in a private dict and finds them in `__getattr__`, which Python calls
only after the ordinary lookup has failed: every `app.state.settings` first builds and formats an
AttributeError ("'State' object has no attribute 'settings'"), then throws it away and runs a Python-level
method. A get ticket reads the app's state seven times (settings twice, the pool, the metrics, the key cache,
the tenant cache, the read batching): ~0.9 µs each against ~15 ns for a plain attribute, timed on this
machine kind (docs/performance.md, "Levers tried").

`AppState` is a `State` (same methods, same errors for a missing name) that also keeps every value in the
instance's own `__dict__`, where the ordinary lookup finds it. Every way of writing or deleting a value
(attribute or item) writes both places, so the two never disagree.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import State


class AppState(State):
    def __setattr__(self, key: Any, value: Any) -> None:
        self._state[key] = value
        object.__setattr__(self, key, value)

    def __delattr__(self, key: Any) -> None:
        del self._state[key]
        object.__delattr__(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.__setattr__(key, value)

    def __delitem__(self, key: str) -> None:
        self.__delattr__(key)
