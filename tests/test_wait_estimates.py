"""Wait estimates (PRODUCT §4, docs/estimates.md): the pure arithmetic, then every method through the API on a
constructed history with a pinned clock, show_wait_time, and the accuracy figure of the stats endpoint."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from tests.helpers import Api, auth
from tests.test_ticket_flows import FOOD_ORDER_FSM, Tenant, ok
from virtualq.kit import clock
from virtualq.queues import estimates
from virtualq.queues.estimates import Departure, QueueSettings

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def departures(*pairs: tuple[float, float]) -> list[Departure]:
    """(created, started) in minutes after T0."""
    return [Departure(at(created), at(started)) for created, started in pairs]


@pytest.fixture
def pinned() -> Iterator[None]:
    yield
    clock.set_now(None)


# --- pure arithmetic --------------------------------------------------------------------------------------


def test_busy_intervals_skip_idle_time() -> None:
    # Everybody waiting from the start: plain gaps between calls.
    assert estimates.busy_intervals(departures((0, 0), (0, 4), (0, 10))) == [4, 6]
    # The third arrived at 9, after the second was called at 4: only 9 → 10 counts.
    assert estimates.busy_intervals(departures((0, 0), (0, 4), (9, 10))) == [4, 1]
    # Order of the input does not matter.
    assert estimates.busy_intervals(departures((9, 10), (0, 0), (0, 4))) == [4, 1]
    assert estimates.busy_intervals(departures((0, 5))) == []


def test_recent_methods_use_only_the_latest_departures() -> None:
    history = departures((0, 0), (0, 30), (0, 31), (0, 33), (0, 36), (0, 40), (0, 45))
    # average_recent_3: the last 4 departures → intervals 3, 4, 5.
    assert estimates.pace_from_history("average_recent_3", history, at(60)) == 4
    # average_recent_5: the last 6 → 1, 2, 3, 4, 5.
    assert estimates.pace_from_history("average_recent_5", history, at(60)) == 3
    # Too thin: fewer than 3 intervals.
    assert estimates.pace_from_history("average_recent_3", history[:3], at(60)) is None


def test_rolling_average_uses_the_last_hour_anchored_by_the_previous_departure() -> None:
    history = departures((0, 0), (0, 50), (0, 70), (0, 80), (0, 100))
    # now = 110: the window is [50, 110]; the departure at 0 is outside but anchors the interval ending at 50.
    assert estimates.pace_from_history("rolling_average", history, at(110)) == pytest.approx(
        (50 + 20 + 10 + 20) / 4
    )
    # now = 135: the window [75, 135] holds 80 and 100 (anchored by 70): two intervals, too thin.
    assert estimates.pace_from_history("rolling_average", history, at(135)) is None
    # now = 170: nothing in [110, 170] → no pace.
    assert estimates.pace_from_history("rolling_average", history, at(170)) is None
    # Departures after now are ignored (the clock decides).
    assert estimates.pace_from_history("rolling_average", history, at(85)) == pytest.approx(
        (50 + 20 + 10) / 3
    )


def test_pace_falls_back_in_order() -> None:
    rich = departures((0, 0), (0, 2), (0, 4), (0, 6))
    thin = departures((0, 0), (0, 9))
    auto = QueueSettings("average_recent_3", None)
    manual = QueueSettings("average_recent_3", 7)
    assert estimates.pace(auto, rich, thin, at(10)) == 2  # the type's own history
    assert estimates.pace(auto, thin, rich, at(10)) == 2  # else the queue's
    assert estimates.pace(manual, thin, thin, at(10)) == 7  # else manual_wait_minutes
    assert estimates.pace(auto, thin, thin, at(10)) == estimates.DEFAULT_MINUTES_PER_TICKET
    assert estimates.pace(QueueSettings("manual", 3), rich, rich, at(10)) == 3
    assert estimates.pace(QueueSettings("none", 3), rich, rich, at(10)) is None


def test_custom_pace_is_an_extension_point() -> None:
    settings = QueueSettings("custom", None)
    assert estimates.pace(settings, [], [], at(0)) == estimates.DEFAULT_MINUTES_PER_TICKET
    estimates.register_custom_pace(lambda s, by_type, by_queue, now: 1.5)
    try:
        assert estimates.pace(settings, [], [], at(0)) == 1.5
    finally:
        estimates.register_custom_pace(None)


def test_minutes_round_half_up() -> None:
    assert estimates.minutes_for(3, 2.5) == 8
    assert estimates.minutes_for(1, 2.5) == 3
    assert estimates.minutes_for(2, 0.2) == 0
    assert estimates.minutes_for(4, None) is None


# --- through the API --------------------------------------------------------------------------------------


async def line_with_history(
    client: httpx.AsyncClient,
    api: Api,
    db: asyncpg.Connection,
    history: list[tuple[float, float]],
    **queue_fields: Any,
) -> tuple[Tenant, dict[str, Any], dict[str, Any]]:
    """A queue whose past tickets left the line at the given (created, started) minutes after T0."""
    t = await Tenant.create(client, api)
    order = await t.type("order", FOOD_ORDER_FSM)
    queue = await t.queue("Line", **queue_fields)
    for created, started in history:
        ticket = await t.ticket(queue["id"], order["id"])
        await t.move(ticket["id"], "start_preparation")
        await db.execute(
            "UPDATE tickets SET created_at = $2, started_at = $3 WHERE id = $1",
            uuid.UUID(ticket["id"]),
            at(created),
            at(started),
        )
    return t, queue, order


async def waiting_estimates(t: Tenant, queue_id: str, type_id: str, count: int) -> list[dict[str, Any]]:
    return [await t.ticket(queue_id, type_id) for _ in range(count)]


HISTORY = [(0, 0), (0, 30), (0, 31), (0, 33), (0, 36), (0, 40), (0, 45)]


@pytest.mark.parametrize(
    ("method", "fields", "pace"),
    [
        ("average_recent_3", {}, 4.0),
        ("average_recent_5", {}, 3.0),
        ("rolling_average", {}, (30 + 1 + 2 + 3 + 4 + 5) / 6),
        ("manual", {"manual_wait_minutes": 7}, 7.0),
        ("none", {}, None),
        ("custom", {}, estimates.DEFAULT_MINUTES_PER_TICKET),
    ],
)
async def test_every_method_through_the_api(
    client: httpx.AsyncClient,
    api: Api,
    db: asyncpg.Connection,
    pinned: None,
    method: str,
    fields: dict[str, Any],
    pace: float | None,
) -> None:
    clock.set_now(at(50))  # rolling_average's hour: [-10, 50] holds every departure
    t, queue, order = await line_with_history(
        client, api, db, HISTORY, wait_estimation_method=method, **fields
    )
    created = await waiting_estimates(t, queue["id"], order["id"], 3)
    expected = [estimates.minutes_for(p, pace) for p in (1, 2, 3)]
    assert [c["position"] for c in created] == [1, 2, 3]
    assert [c["estimated_wait_minutes"] for c in created] == expected
    assert [c["original_estimated_wait_minutes"] for c in created] == expected
    # The same live figure on every read path.
    for c, want in zip(created, expected, strict=True):
        assert (await t.get(f"/v1/tickets/{c['id']}"))["estimated_wait_minutes"] == want
    listed = await t.get("/v1/tickets", queue_id=queue["id"], state_category="waiting")
    assert [row["estimated_wait_minutes"] for row in listed["data"]] == expected
    line = await t.get(f"/v1/queues/{queue['id']}/tickets")
    assert [
        row["estimated_wait_minutes"] for row in line["data"] if row["state_category"] == "waiting"
    ] == expected
    feed = await t.get(f"/v1/queues/{queue['id']}/monitor")
    assert [e["estimated_wait_minutes"] for e in feed["groups"]["waiting"]] == expected


async def test_custom_method_with_a_registered_function(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, order = await line_with_history(client, api, db, [], wait_estimation_method="custom")
    estimates.register_custom_pace(lambda settings, by_type, by_queue, now: 2.5)
    try:
        created = await waiting_estimates(t, queue["id"], order["id"], 3)
    finally:
        estimates.register_custom_pace(None)
    assert [c["estimated_wait_minutes"] for c in created] == [3, 5, 8]


async def test_estimates_move_with_the_line_and_overrides_win(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, order = await line_with_history(client, api, db, HISTORY[-4:])  # pace 4
    first, second, third = await waiting_estimates(t, queue["id"], order["id"], 3)
    assert second["original_estimated_wait_minutes"] == 8
    # The first is called: everybody moves up; the original estimate stays what it was.
    called = await t.move(first["id"], "start_preparation")
    assert called["estimated_wait_minutes"] is None
    assert called["actual_wait_minutes"] == 0
    assert called["started_at"] is not None
    now_second = await t.get(f"/v1/tickets/{second['id']}")
    assert (now_second["position"], now_second["original_estimated_wait_minutes"]) == (1, 8)
    # One more departure changed the pace: the live estimate follows it.
    pace = estimates.pace_from_history(
        "average_recent_3",
        [
            Departure(*row)
            for row in await db.fetch(
                "SELECT created_at, started_at FROM tickets WHERE queue_id = $1 AND started_at IS NOT NULL",
                uuid.UUID(queue["id"]),
            )
        ],
        datetime.now(UTC),
    )
    assert now_second["estimated_wait_minutes"] == estimates.minutes_for(1, pace)
    # A staff override (or a client's own estimate at creation) wins while the ticket waits.
    overridden = ok(
        await t.client.patch(f"/v1/tickets/{third['id']}", json={"estimated_wait_minutes": 42}, headers=t.h)
    )
    assert overridden["estimated_wait_minutes"] == 42
    assert overridden["original_estimated_wait_minutes"] == 12
    given = await t.ticket(queue["id"], order["id"], estimated_wait_minutes=9)
    assert (given["estimated_wait_minutes"], given["original_estimated_wait_minutes"]) == (9, 9)


async def test_type_history_first_then_the_queue(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, order = await line_with_history(client, api, db, [(0, 0), (0, 2), (0, 4), (0, 6)])  # pace 2
    other = await t.type("other", FOOD_ORDER_FSM)
    mine = await t.ticket(queue["id"], order["id"])
    theirs = await t.ticket(queue["id"], other["id"])
    assert mine["estimated_wait_minutes"] == 2  # its own type's pace
    assert theirs["estimated_wait_minutes"] == 4  # no history of its own: the queue's pace, position 2


async def test_show_wait_time_false_hides_estimates_from_displays(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, order = await line_with_history(client, api, db, HISTORY, show_wait_time=False)
    await waiting_estimates(t, queue["id"], order["id"], 2)
    display = await api.key("tenant", "display", key=t.world.tenant_admin, tenant_id=t.id)
    staff = await api.key("tenant", "staff", key=t.world.tenant_admin, tenant_id=t.id)
    shown = ok(await client.get(f"/v1/queues/{queue['id']}/tickets", headers=auth(display)))["data"]
    waiting = [row for row in shown if row["state_category"] == "waiting"]
    assert len(waiting) == 2
    assert all(row["estimated_wait_minutes"] is None for row in waiting)
    assert all(row["original_estimated_wait_minutes"] is None for row in waiting)
    staffed = ok(await client.get(f"/v1/queues/{queue['id']}/tickets", headers=auth(staff)))["data"]
    assert [row["estimated_wait_minutes"] for row in staffed if row["state_category"] == "waiting"] == [4, 8]
    feed = ok(await client.get(f"/v1/queues/{queue['id']}/monitor", headers=auth(display)))
    assert feed["show_wait_time"] is False
    assert all("estimated_wait_minutes" not in entry for entry in feed["groups"]["waiting"])


async def test_stats_counts_estimate_and_accuracy(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    t, queue, order = await line_with_history(client, api, db, [])
    thin = await t.get(f"/v1/queues/{queue['id']}/stats")
    assert thin["estimation"]["basis"] == "fallback"
    assert thin["accuracy"] == {
        "sample_size": 0,
        "mean_absolute_error_minutes": None,
        "mean_error_minutes": None,
    }

    # 55 served tickets with known estimates and waits; only the latest 50 count.
    served = [await t.ticket(queue["id"], order["id"]) for _ in range(55)]
    errors = []
    for index, ticket in enumerate(served):
        await t.move(ticket["id"], "start_preparation")
        original, actual = 10, 10 + (index % 7) - 3  # errors of -3..+3 minutes
        await db.execute(
            """UPDATE tickets SET created_at = $2, started_at = $3, original_estimated_wait_minutes = $4,
                      actual_wait_minutes = $5 WHERE id = $1""",
            uuid.UUID(ticket["id"]),
            at(index * 2 - actual),
            at(index * 2),
            original,
            actual,
        )
        errors.append(original - actual)
    await t.move(served[-1]["id"], "mark_ready")
    await waiting_estimates(t, queue["id"], order["id"], 1)

    stats = await t.get(f"/v1/queues/{queue['id']}/stats")
    latest = errors[-50:]
    assert stats["accuracy"]["sample_size"] == 50
    assert stats["accuracy"]["mean_absolute_error_minutes"] == pytest.approx(
        sum(abs(e) for e in latest) / 50, abs=0.01
    )
    assert stats["accuracy"]["mean_error_minutes"] == pytest.approx(sum(latest) / 50, abs=0.01)
    assert stats["counts_by_category"]["waiting"] == 1
    assert stats["counts_by_category"]["ready"] == 1
    assert stats["counts_by_category"]["in_service"] == 54
    assert stats["counts_by_state"]["in_progress"] == 54
    assert stats["waiting"] == 1
    assert stats["estimation"]["basis"] == "history"
    # Every departure came 2 minutes after the previous one, with somebody waiting: pace 2.
    assert stats["estimation"]["minutes_per_ticket"] == 2
    assert stats["estimation"]["current_estimate_minutes"] == 4  # (1 waiting + 1) x 2
