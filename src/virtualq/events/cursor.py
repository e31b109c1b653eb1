"""Event cursors: `<transaction id>-<event id>`, opaque to clients, ordered by the server.

Events are read in (tx_id, id) order, and only from transactions older than every transaction still in flight
(`pg_snapshot_xmin`), so a reader that has seen a cursor has seen every event that will ever sort before it.
"""

from __future__ import annotations

import re

from virtualq.errors import ValidationFailed

Cursor = tuple[int, int]
START: Cursor = (0, 0)
_PATTERN = re.compile(r"^(\d{1,20})-(\d{1,20})$")
MAX = 2**63 - 1


def parse(value: str | None, field: str = "after") -> Cursor | None:
    if value is None or value == "":
        return None
    match = _PATTERN.match(value.strip())
    if match is None or int(match[1]) > MAX or int(match[2]) > MAX:
        raise ValidationFailed(
            f"{field} must be an event id as returned by the API (like 1234-56)", {"field": field}
        )
    return int(match[1]), int(match[2])


def format_cursor(cursor: Cursor) -> str:
    return f"{cursor[0]}-{cursor[1]}"
