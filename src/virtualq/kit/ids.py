"""Public identifiers: UUID v7, time-ordered, minted by the server."""

from __future__ import annotations

import uuid

import uuid_utils.compat


def new_id() -> uuid.UUID:
    return uuid_utils.compat.uuid7()
