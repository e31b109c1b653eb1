"""How state categories drive a ticket's (or item's) timestamps (PRODUCT §2). Pure code."""

from __future__ import annotations

from dataclasses import dataclass

from virtualq.fsm import Category


@dataclass(frozen=True)
class Effects:
    leaves_waiting: bool  # sets started_at and actual_wait_minutes, the first time only
    enters_ready: bool  # sets ready_at
    enters_done: bool  # sets completed_at
    enters_cancelled: bool  # sets cancelled_at


def effects_of(previous: Category | None, new: Category) -> Effects:
    """`previous` None means the ticket is being created in `new`."""
    return Effects(
        leaves_waiting=new is not Category.WAITING and previous in (Category.WAITING, None),
        enters_ready=new is Category.READY and previous is not Category.READY,
        enters_done=new is Category.DONE and previous is not Category.DONE,
        enters_cancelled=new is Category.CANCELLED and previous is not Category.CANCELLED,
    )
