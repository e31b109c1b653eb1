"""Wait estimates (PRODUCT §4, docs/estimates.md), from the pure pace arithmetic to every read path.

The API tests build a queue's history by hand: tickets are created and called through the API, then their
`created_at` / `started_at` are set to exact instants relative to a pinned clock, so every pace below is
computed by hand from those instants. Tickets called through the API after the clock was pinned leave the
line "after now" and so never count as history.
"""

from __future__ import annotations

import statistics
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from tests.helpers import Api, auth
from tests.test_ticket_flows import DMV_FSM, FOOD_ORDER_FSM, Tenant, ok
from virtualq.kit import clock
from virtualq.queues import estimates
from virtualq.queues.estimates import Departure, QueueSettings

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def deps(*pairs: tuple[float, float]) -> list[Departure]:
    """Departures given as (created, started) minutes after T0."""
    return [Departure(at(created), at(started)) for created, started in pairs]


@pytest.fixture
def custom_pace() -> Iterator[list[tuple[Any, ...]]]:
    """Calls made to a registered custom pace function; the function is always unregistered afterwards."""
    calls: list[tuple[Any, ...]] = []
    try:
        yield calls
    finally:
        estimates.register_custom_pace(None)


# --- pure arithmetic: busy intervals ----------------------------------------------------------------------


def test_busy_intervals_with_overlapping_arrivals_are_plain_gaps() -> None:
    # Each ticket arrived before the previous one was called: the line was busy the whole time.
    assert estimates.busy_intervals(deps((0, 2), (1, 4), (2, 10), (3, 11))) == [2, 6, 1]


def test_busy_intervals_do_not_count_idle_gaps() -> None:
    # The third ticket arrived at 20, long after the second was called at 4: only 20 -> 23 counts.
    assert estimates.busy_intervals(deps((0, 0), (0, 4), (20, 23))) == [4, 3]
    # Arriving exactly when the previous one was called: the whole gap counts.
    assert estimates.busy_intervals(deps((0, 3), (3, 8), (5, 12))) == [5, 4]
    # Called the moment it arrived, into an empty line: no busy time at all.
    assert estimates.busy_intervals(deps((0, 0), (5, 5), (5, 12))) == [0, 7]


def test_busy_intervals_sort_by_departure_and_handle_edges() -> None:
    assert estimates.busy_intervals(deps((20, 23), (0, 0), (0, 4))) == [4, 3]
    assert estimates.busy_intervals([]) == []
    assert estimates.busy_intervals(deps((0, 5))) == []
    # Two called at the same instant (two counters): a zero interval, never negative.
    assert estimates.busy_intervals(deps((0, 2), (0, 2), (1, 3))) == [0, 1]
    # Seconds count as fractions of a minute.
    assert estimates.busy_intervals(deps((0, 0), (0, 1.5))) == [1.5]


# --- pure arithmetic: pace from history -------------------------------------------------------------------

# Departures 0, 30, 31, 33, 36, 40, 45, 51 (everybody waiting): intervals 30, 1, 2, 3, 4, 5, 6.
LONG = deps((0, 0), (0, 30), (0, 31), (0, 33), (0, 36), (0, 40), (0, 45), (0, 51))


def test_average_recent_3_uses_only_the_latest_four_departures() -> None:
    assert estimates.pace_from_history("average_recent_3", LONG, at(60)) == pytest.approx((4 + 5 + 6) / 3)
    # Exactly four departures: three intervals, enough.
    assert estimates.pace_from_history("average_recent_3", LONG[-4:], at(60)) == pytest.approx(5)
    # The input order does not matter.
    assert estimates.pace_from_history("average_recent_3", LONG[::-1], at(60)) == pytest.approx(5)


def test_average_recent_5_uses_only_the_latest_six_departures() -> None:
    assert estimates.pace_from_history("average_recent_5", LONG, at(60)) == pytest.approx(
        (2 + 3 + 4 + 5 + 6) / 5
    )
    # Without the newest: the latest six are 30 .. 45 -> 1, 2, 3, 4, 5; the older 30-minute interval is out.
    assert estimates.pace_from_history("average_recent_5", LONG[:-1], at(60)) == pytest.approx(3)
    # Four departures are three intervals: the minimum sample, used as is.
    assert estimates.pace_from_history("average_recent_5", LONG[-4:], at(60)) == pytest.approx(5)


def test_thin_history_gives_no_pace() -> None:
    assert estimates.MIN_SAMPLES == 3
    for method in ("average_recent_3", "average_recent_5", "rolling_average"):
        assert estimates.pace_from_history(method, [], at(60)) is None
        assert estimates.pace_from_history(method, LONG[-1:], at(60)) is None
        assert estimates.pace_from_history(method, LONG[-3:], at(60)) is None  # two intervals
    # Methods without history.
    for method in ("manual", "none", "custom"):
        assert estimates.pace_from_history(method, LONG, at(60)) is None


def test_rolling_average_uses_the_last_hour_anchored_by_the_departure_before_it() -> None:
    history = deps((0, 0), (0, 50), (0, 70), (0, 80), (0, 100), (95, 104))
    # now = 110: the window [50, 110] holds 50, 70, 80, 100, 104; the departure at 0 anchors the first.
    # Intervals 50, 20, 10, 20 and 4 (104 arrived at 95, before 100 was called: max(100, 95) = 100).
    assert estimates.pace_from_history("rolling_average", history, at(110)) == pytest.approx(
        (50 + 20 + 10 + 20 + 4) / 5
    )
    # now = 150: the window [90, 150] holds 100 and 104, anchored by 80: intervals 20, 4 -> too thin.
    assert estimates.pace_from_history("rolling_average", history, at(150)) is None
    # now = 200: nothing in [140, 200].
    assert estimates.pace_from_history("rolling_average", history, at(200)) is None
    # now = 85: departures after now do not count: 50, 70, 80 in [25, 85], anchored by 0.
    assert estimates.pace_from_history("rolling_average", history, at(85)) == pytest.approx(
        (50 + 20 + 10) / 3
    )


def test_rolling_average_window_edges() -> None:
    history = deps((0, 0), (0, 10), (0, 20), (0, 30), (0, 45))  # intervals 10, 10, 10, 15
    # now = 45: the departure exactly at now counts; the first departure ever has nothing to anchor it.
    assert estimates.pace_from_history("rolling_average", history, at(45)) == pytest.approx(45 / 4)
    # now = 70: the departure exactly 60 minutes before now (10) is inside, anchored by the one at 0.
    assert estimates.pace_from_history("rolling_average", history, at(70)) == pytest.approx(45 / 4)
    # now = 71: 10 is out of the window, but still anchors 20: intervals 10, 10, 15.
    assert estimates.pace_from_history("rolling_average", history, at(71)) == pytest.approx(35 / 3)
    # An idle hour before the window: only busy time counts, even in the anchoring interval.
    idle = deps((0, 0), (58, 60), (60, 63), (61, 66), (62, 70))
    assert estimates.pace_from_history("rolling_average", idle, at(100)) == pytest.approx((2 + 3 + 3 + 4) / 4)


# --- pure arithmetic: pace and its fallbacks --------------------------------------------------------------

RICH = deps((0, 0), (0, 2), (0, 4), (0, 6))  # pace 2
OTHER = deps((0, 0), (0, 3), (0, 6), (0, 9))  # pace 3
THIN = deps((0, 0), (0, 9))  # one interval


def test_pace_falls_back_from_type_to_queue_to_manual_to_default() -> None:
    auto = QueueSettings("average_recent_3", None)
    manual_7 = QueueSettings("average_recent_3", 7)
    assert estimates.pace(auto, RICH, OTHER, at(10)) == 2  # the type's own history first
    assert estimates.pace(auto, THIN, OTHER, at(10)) == 3  # then the whole queue's
    assert estimates.pace(auto, [], OTHER, at(10)) == 3
    assert estimates.pace(manual_7, THIN, THIN, at(10)) == 7  # then manual_wait_minutes
    assert estimates.pace(auto, THIN, THIN, at(10)) == estimates.DEFAULT_MINUTES_PER_TICKET == 5.0
    assert estimates.pace(auto, [], [], at(10)) == 5.0
    # manual_wait_minutes 0 is a real value, not "unset".
    assert estimates.pace(QueueSettings("average_recent_5", 0), [], [], at(10)) == 0.0
    # rolling_average falls back the same way when the last hour is empty.
    assert estimates.pace(QueueSettings("rolling_average", 4), RICH, RICH, at(500)) == 4


def test_manual_and_none_ignore_history() -> None:
    assert estimates.pace(QueueSettings("manual", 3), RICH, OTHER, at(10)) == 3
    assert estimates.pace(QueueSettings("manual", 0), RICH, OTHER, at(10)) == 0
    assert estimates.pace(QueueSettings("manual", None), RICH, OTHER, at(10)) == 5.0
    assert estimates.pace(QueueSettings("none", 3), RICH, OTHER, at(10)) is None
    assert estimates.pace(QueueSettings("none", None), [], [], at(10)) is None


def test_custom_pace_is_a_registered_function(custom_pace: list[tuple[Any, ...]]) -> None:
    settings = QueueSettings("custom", None)
    # Nothing registered: the fallback (manual_wait_minutes, else the default).
    assert estimates.pace(settings, RICH, OTHER, at(10)) == 5.0
    assert estimates.pace(QueueSettings("custom", 8), RICH, OTHER, at(10)) == 8

    def measured(
        s: QueueSettings, by_type: Sequence[Departure], by_queue: Sequence[Departure], now: datetime
    ) -> float | None:
        custom_pace.append((s, list(by_type), list(by_queue), now))
        return None if not by_type else 1.25 * len(by_type)

    estimates.register_custom_pace(measured)
    assert estimates.pace(settings, RICH, OTHER, at(10)) == 5.0  # 4 departures x 1.25
    assert custom_pace == [(settings, RICH, OTHER, at(10))]
    # The function may decline (None): the fallback applies.
    assert estimates.pace(QueueSettings("custom", 6), [], OTHER, at(10)) == 6
    assert estimates.pace(settings, [], OTHER, at(10)) == 5.0
    # Registration only affects `custom` queues.
    assert estimates.pace(QueueSettings("average_recent_3", None), RICH, OTHER, at(10)) == 2
    estimates.register_custom_pace(None)
    assert estimates.pace(QueueSettings("custom", 8), RICH, OTHER, at(10)) == 8


def test_minutes_for_rounds_halves_up() -> None:
    assert estimates.minutes_for(1, 2.5) == 3  # Python's round() would say 2
    assert estimates.minutes_for(3, 2.5) == 8
    assert estimates.minutes_for(2, 1.25) == 3
    assert estimates.minutes_for(1, 1.49) == 1
    assert estimates.minutes_for(3, 52 / 6) == 26
    assert estimates.minutes_for(2, 6.4) == 13
    assert estimates.minutes_for(2, 0.2) == 0
    assert estimates.minutes_for(5, 0.0) == 0
    assert estimates.minutes_for(4, None) is None


def test_history_needed_loads_one_more_departure_than_intervals() -> None:
    assert estimates.history_needed("average_recent_3") == 4
    assert estimates.history_needed("average_recent_5") == 6
    assert estimates.history_needed("rolling_average") == estimates.ROLLING_MAX_SAMPLES + 1
    assert estimates.history_needed("manual") == 0
    assert estimates.history_needed("none") == 0


# --- through the API ----------------------------------------------------------------------------------------


@pytest.fixture
async def now(db: asyncpg.Connection) -> AsyncIterator[datetime]:
    """The clock pinned to the database's present (whole seconds), released afterwards."""
    pinned: datetime = await db.fetchval("SELECT date_trunc('second', now())")
    clock.set_now(pinned)
    try:
        yield pinned
    finally:
        clock.set_now(None)


def minutes(now: datetime, offset: float) -> datetime:
    return now + timedelta(minutes=offset)


async def add_history(
    t: Tenant,
    db: asyncpg.Connection,
    queue_id: str,
    type_id: str,
    now: datetime,
    history: Sequence[tuple[float, float]],
    transition: str = "start_preparation",
) -> list[str]:
    """Tickets that left the line: (created, started) in minutes relative to `now` (negative = before)."""
    made = []
    for created, started in history:
        ticket = await t.ticket(queue_id, type_id)
        await t.move(ticket["id"], transition)
        await db.execute(
            """UPDATE tickets SET created_at = $2, started_at = $3, actual_wait_minutes = $4
                WHERE id = $1""",
            uuid.UUID(ticket["id"]),
            minutes(now, created),
            minutes(now, started),
            round(started - created),
        )
        made.append(ticket["id"])
    return made


# Relative to now. Intervals (oldest first): 30, 20, 8, 12, 4, 5 (arrived at -10, after -26's call), 3.
# The last departure (+10) is after now: it never counts.
HISTORY = [(-200, -100), (-120, -70), (-90, -50), (-60, -42), (-45, -30), (-35, -26), (-10, -5), (-8, -2)]
FUTURE = (-1, 10)
PACE_RECENT_3 = (4 + 5 + 3) / 3  # 4.0
PACE_RECENT_5 = (8 + 12 + 4 + 5 + 3) / 5  # 6.4
PACE_ROLLING = (20 + 8 + 12 + 4 + 5 + 3) / 6  # [-60, 0] holds -50 .. -2, anchored by -70: 8.67
PACE_ALL = (30 + 20 + 8 + 12 + 4 + 5 + 3) / 7  # every interval: 11.71


async def line(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, now: datetime, **queue_fields: Any
) -> tuple[Tenant, dict[str, Any], dict[str, Any], list[str]]:
    t = await Tenant.create(client, api)
    order = await t.type("order", FOOD_ORDER_FSM)
    queue = await t.queue("Line", **queue_fields)
    served = await add_history(t, db, queue["id"], order["id"], now, [*HISTORY, FUTURE])
    return t, queue, order, served


async def estimates_everywhere(
    t: Tenant, queue_id: str, waiting_ids: list[str], served_ids: list[str]
) -> dict[str, list[Any]]:
    """The estimates of `waiting_ids` as each read path reports them; served tickets must have none."""
    seen: dict[str, list[Any]] = {}
    got = [await t.get(f"/v1/tickets/{i}") for i in waiting_ids]
    seen["get"] = [x["estimated_wait_minutes"] for x in got]
    # The customer's own page (no API key, the ticket's token).
    seen["public"] = []
    for x in got:
        token = x["customer_page"].split("token=")[1]
        public = ok(await t.client.get(f"/v1/public/tickets/{x['id']}", params={"token": token}))
        assert public["position"] == x["position"]
        seen["public"].append(public["estimated_wait_minutes"])
    for i in served_ids[-2:]:
        assert (await t.get(f"/v1/tickets/{i}"))["estimated_wait_minutes"] is None

    listed = {row["id"]: row for row in (await t.get("/v1/tickets", queue_id=queue_id, limit=100))["data"]}
    seen["list"] = [listed[i]["estimated_wait_minutes"] for i in waiting_ids]
    assert all(listed[i]["estimated_wait_minutes"] is None for i in served_ids)

    in_line = (await t.get(f"/v1/queues/{queue_id}/tickets", limit=100))["data"]
    waiting = [row for row in in_line if row["state_category"] == "waiting"]
    assert [row["id"] for row in waiting] == waiting_ids
    assert [row["position"] for row in waiting] == list(range(1, len(waiting_ids) + 1))
    seen["queue"] = [row["estimated_wait_minutes"] for row in waiting]
    others = [row for row in in_line if row["state_category"] != "waiting"]
    assert {row["id"] for row in others} == set(served_ids)
    assert all(row["estimated_wait_minutes"] is None and row["position"] is None for row in others)

    feed = await t.get(f"/v1/queues/{queue_id}/monitor")
    assert [e["id"] for e in feed["groups"]["waiting"]] == waiting_ids
    assert [e["position"] for e in feed["groups"]["waiting"]] == list(range(1, len(waiting_ids) + 1))
    seen["monitor"] = [e["estimated_wait_minutes"] for e in feed["groups"]["waiting"]]
    assert len(feed["groups"]["in_service"]) == len(served_ids)
    assert all(e["estimated_wait_minutes"] is None for e in feed["groups"]["in_service"])
    return seen


METHODS = [
    # method, queue fields, expected estimates at positions 1..3, stats basis, minutes per ticket,
    # current estimate for a 4th ticket, fallback minutes per ticket
    ("average_recent_3", {}, [4, 8, 12], "history", 4.0, 16, 5.0),
    ("average_recent_5", {}, [6, 13, 19], "history", 6.4, 26, 5.0),
    ("rolling_average", {}, [9, 17, 26], "history", 8.67, 35, 5.0),
    ("average_recent_3", {"manual_wait_minutes": 9}, [4, 8, 12], "history", 4.0, 16, 9.0),
    ("manual", {"manual_wait_minutes": 7}, [7, 14, 21], "manual", 7.0, 28, 7.0),
    ("manual", {"manual_wait_minutes": 0}, [0, 0, 0], "manual", 0.0, 0, 0.0),
    ("none", {}, [None, None, None], "none", None, None, 5.0),
    ("custom", {}, [5, 10, 15], "custom", 5.0, 20, 5.0),  # nothing registered: the default
    ("custom", {"manual_wait_minutes": 3}, [3, 6, 9], "custom", 3.0, 12, 3.0),
]


@pytest.mark.parametrize(
    ("method", "fields", "expected", "basis", "per_ticket", "current", "fallback"),
    METHODS,
    ids=[f"{m[0]}-{i}" for i, m in enumerate(METHODS)],
)
async def test_each_method_on_every_read_path(
    client: httpx.AsyncClient,
    api: Api,
    db: asyncpg.Connection,
    now: datetime,
    method: str,
    fields: dict[str, Any],
    expected: list[int | None],
    basis: str,
    per_ticket: float | None,
    current: int | None,
    fallback: float,
) -> None:
    t, queue, order, served = await line(client, api, db, now, wait_estimation_method=method, **fields)
    created = [await t.ticket(queue["id"], order["id"]) for _ in range(3)]
    assert [c["position"] for c in created] == [1, 2, 3]
    assert [c["estimated_wait_minutes"] for c in created] == expected
    assert [c["original_estimated_wait_minutes"] for c in created] == expected
    waiting_ids = [c["id"] for c in created]
    seen = await estimates_everywhere(t, queue["id"], waiting_ids, served)
    assert seen == {key: expected for key in ("get", "public", "list", "queue", "monitor")}

    stats = await t.get(f"/v1/queues/{queue['id']}/stats")
    assert stats["waiting"] == 3
    assert stats["estimation"] == {
        "method": method,
        "basis": basis,
        "minutes_per_ticket": per_ticket,
        "fallback_minutes_per_ticket": fallback,
        "current_estimate_minutes": current,
    }


async def test_custom_method_uses_the_registered_function(
    client: httpx.AsyncClient,
    api: Api,
    db: asyncpg.Connection,
    now: datetime,
    custom_pace: list[tuple[Any, ...]],
) -> None:
    def mean_busy_time(
        s: QueueSettings, by_type: Sequence[Departure], by_queue: Sequence[Departure], at_now: datetime
    ) -> float | None:
        custom_pace.append((s, list(by_type), list(by_queue), at_now))
        history = by_type or by_queue
        return statistics.mean(estimates.busy_intervals(history)) if len(history) > 1 else None

    estimates.register_custom_pace(mean_busy_time)
    t, queue, order, served = await line(client, api, db, now, wait_estimation_method="custom")
    custom_pace.clear()
    created = [await t.ticket(queue["id"], order["id"]) for _ in range(3)]
    expected = [12, 23, 35]  # 1, 2, 3 x 11.71
    assert [c["estimated_wait_minutes"] for c in created] == expected
    assert [c["original_estimated_wait_minutes"] for c in created] == expected
    # The function was given the queue's settings, every departure up to now (not the future one), and now.
    settings, by_type, by_queue, given_now = custom_pace[0]
    assert settings == QueueSettings("custom", None)
    assert given_now == now
    past = sorted(minutes(now, started) for _, started in HISTORY)
    assert sorted(d.started_at for d in by_type) == past
    assert sorted(d.started_at for d in by_queue) == past
    seen = await estimates_everywhere(t, queue["id"], [c["id"] for c in created], served)
    assert seen == {key: expected for key in ("get", "public", "list", "queue", "monitor")}
    stats = await t.get(f"/v1/queues/{queue['id']}/stats")
    assert stats["estimation"]["basis"] == "custom"
    assert stats["estimation"]["minutes_per_ticket"] == round(PACE_ALL, 2)
    assert stats["estimation"]["current_estimate_minutes"] == 47  # 4 x 11.71

    # A function that declines falls back to the default.
    estimates.register_custom_pace(lambda s, by_type, by_queue, at_now: None)
    assert (await t.get(f"/v1/tickets/{created[1]['id']}"))["estimated_wait_minutes"] == 10


async def test_history_of_the_type_first_then_the_queue_then_the_fallbacks(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, now: datetime
) -> None:
    t = await Tenant.create(client, api)
    a = await t.type("type_a", FOOD_ORDER_FSM)
    b = await t.type("type_b", FOOD_ORDER_FSM)
    c = await t.type("type_c", FOOD_ORDER_FSM)
    queue = await t.queue("Mixed", manual_wait_minutes=7)
    # Type A: intervals 2, 3, 5 -> pace 10/3.
    await add_history(t, db, queue["id"], a["id"], now, [(-60, -40), (-50, -38), (-45, -35), (-44, -30)])
    # Type B: one departure, too thin on its own.
    await add_history(t, db, queue["id"], b["id"], now, [(-30, -20)])
    # Queue-wide, the latest four: A -38, A -35, A -30, B -20 -> intervals 3, 5, 10 -> pace 6.
    first_a = await t.ticket(queue["id"], a["id"])
    first_b = await t.ticket(queue["id"], b["id"])
    first_c = await t.ticket(queue["id"], c["id"])
    second_a = await t.ticket(queue["id"], a["id"])
    expected = [3, 12, 18, 13]  # 1 x 3.33, 2 x 6, 3 x 6, 4 x 3.33
    created = [first_a, first_b, first_c, second_a]
    assert [x["estimated_wait_minutes"] for x in created] == expected
    assert [x["original_estimated_wait_minutes"] for x in created] == expected
    ids_ = [x["id"] for x in created]
    assert [(await t.get(f"/v1/tickets/{i}"))["estimated_wait_minutes"] for i in ids_] == expected
    feed = await t.get(f"/v1/queues/{queue['id']}/monitor")
    assert [e["estimated_wait_minutes"] for e in feed["groups"]["waiting"]] == expected
    in_line = (await t.get(f"/v1/queues/{queue['id']}/tickets"))["data"]
    assert [r["estimated_wait_minutes"] for r in in_line if r["state_category"] == "waiting"] == expected
    # Stats use the queue-wide pace.
    stats = await t.get(f"/v1/queues/{queue['id']}/stats")
    assert stats["estimation"]["basis"] == "history"
    assert stats["estimation"]["minutes_per_ticket"] == 6.0
    assert stats["estimation"]["current_estimate_minutes"] == 30  # (4 + 1) x 6

    # A queue whose whole history is thin: manual_wait_minutes, else the default.
    manual = await t.queue("Thin manual", manual_wait_minutes=7)
    plain = await t.queue("Thin plain")
    for q in (manual, plain):
        await add_history(t, db, q["id"], a["id"], now, [(-30, -20), (-25, -15), (-20, -10)])
    assert [(await t.ticket(manual["id"], a["id"]))["estimated_wait_minutes"] for _ in range(2)] == [7, 14]
    assert [(await t.ticket(plain["id"], a["id"]))["estimated_wait_minutes"] for _ in range(2)] == [5, 10]
    for q, per_ticket in ((manual, 7.0), (plain, 5.0)):
        stats = await t.get(f"/v1/queues/{q['id']}/stats")
        assert stats["estimation"]["basis"] == "fallback"
        assert stats["estimation"]["minutes_per_ticket"] == per_ticket
        assert stats["estimation"]["current_estimate_minutes"] == round(3 * per_ticket)

    # rolling_average: a rich history, but all of it older than an hour -> the fallback.
    old = await t.queue("Old history", wait_estimation_method="rolling_average")
    await add_history(
        t, db, old["id"], a["id"], now, [(-200, -190), (-200, -180), (-200, -170), (-200, -160)]
    )
    assert (await t.ticket(old["id"], a["id"]))["estimated_wait_minutes"] == 5
    assert (await t.get(f"/v1/queues/{old['id']}/stats"))["estimation"]["basis"] == "fallback"
    # ... and the same history seen from 30 minutes after its last departure is used.
    clock.set_now(minutes(now, -130))
    fresh = await t.get(f"/v1/tickets/{(await t.ticket(old['id'], a['id']))['id']}")
    assert (fresh["position"], fresh["estimated_wait_minutes"]) == (2, 20)  # 2 x 10
    assert (await t.get(f"/v1/queues/{old['id']}/stats"))["estimation"]["basis"] == "history"


async def test_original_estimate_is_fixed_and_the_live_one_follows_the_line(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, now: datetime
) -> None:
    t, queue, order, _ = await line(client, api, db, now)  # average_recent_3: pace 4
    first, second, third, fourth = [await t.ticket(queue["id"], order["id"]) for _ in range(4)]
    assert [x["original_estimated_wait_minutes"] for x in (first, second, third, fourth)] == [4, 8, 12, 16]

    # The first one waited 17 minutes and is called by a transition; the second, 42 minutes, by call-next.
    for ticket, waited in ((first, 17), (second, 42)):
        await db.execute(
            "UPDATE tickets SET created_at = now() - make_interval(mins => $2) WHERE id = $1",
            uuid.UUID(ticket["id"]),
            waited,
        )
    called = await t.move(first["id"], "start_preparation")
    assert called["state_category"] == "in_service"
    assert called["position"] is None
    assert called["estimated_wait_minutes"] is None
    assert called["original_estimated_wait_minutes"] == 4
    assert called["actual_wait_minutes"] == 17
    assert called["started_at"] is not None
    nexted = ok(await client.post(f"/v1/queues/{queue['id']}/call-next", json={}, headers=t.h))
    assert nexted["id"] == second["id"]
    assert nexted["estimated_wait_minutes"] is None
    assert nexted["actual_wait_minutes"] == 42
    assert nexted["original_estimated_wait_minutes"] == 8

    # Those two left "after now", so the pace is still 4; the others moved up two places.
    for ticket, position, live, original in ((third, 1, 4, 12), (fourth, 2, 8, 16)):
        got = await t.get(f"/v1/tickets/{ticket['id']}")
        assert (got["position"], got["estimated_wait_minutes"]) == (position, live)
        assert got["original_estimated_wait_minutes"] == original
        assert got["actual_wait_minutes"] is None
    for ticket, original, actual in ((first, 4, 17), (second, 8, 42)):
        got = await t.get(f"/v1/tickets/{ticket['id']}")
        assert (got["estimated_wait_minutes"], got["original_estimated_wait_minutes"]) == (None, original)
        assert got["actual_wait_minutes"] == actual

    # Later steps do not touch the wait figures.
    ready = await t.move(first["id"], "mark_ready")
    assert (ready["actual_wait_minutes"], ready["original_estimated_wait_minutes"]) == (17, 4)
    assert ready["started_at"] == called["started_at"]

    # Moved to the front of the line: the live estimate follows the new position; the original stays.
    moved = ok(await client.post(f"/v1/tickets/{fourth['id']}/reorder", json={"position": 1}, headers=t.h))
    assert (moved["position"], moved["estimated_wait_minutes"]) == (1, 4)
    assert moved["original_estimated_wait_minutes"] == 16
    got = await t.get(f"/v1/tickets/{third['id']}")
    assert (got["position"], got["estimated_wait_minutes"]) == (2, 8)
    ok(await client.post(f"/v1/tickets/{fourth['id']}/reorder", json={"position": 2}, headers=t.h))

    # When the pace changes (the clock moves past the newest departures), the originals stay.
    clock.set_now(minutes(now, -20))  # history up to -26: pace of -42, -30, -26 with -50 -> (8 + 12 + 4) / 3
    got = await t.get(f"/v1/tickets/{fourth['id']}")
    assert (got["estimated_wait_minutes"], got["original_estimated_wait_minutes"]) == (16, 16)
    got = await t.get(f"/v1/tickets/{third['id']}")
    assert (got["estimated_wait_minutes"], got["original_estimated_wait_minutes"]) == (8, 12)


async def test_a_departure_or_a_queue_change_shows_at_once_with_the_real_clock(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection
) -> None:
    """With an unpinned clock paces are cached briefly; a ticket leaving the line or a change of the
    queue's settings must not be hidden by that cache."""
    clock.set_now(None)
    t = await Tenant.create(client, api)
    order = await t.type("order", FOOD_ORDER_FSM)
    queue = await t.queue("Live")
    now: datetime = await db.fetchval("SELECT now()")
    # Intervals 10, 10, 19: pace 13.
    await add_history(t, db, queue["id"], order["id"], now, [(-60, -40), (-60, -30), (-60, -20), (-60, -1)])
    w1, w2, w3 = [await t.ticket(queue["id"], order["id"]) for _ in range(3)]
    assert [w["estimated_wait_minutes"] for w in (w1, w2, w3)] == [13, 26, 39]
    assert (await t.get(f"/v1/tickets/{w3['id']}"))["estimated_wait_minutes"] == 39
    # w1 arrived after the last departure and is called a moment later: a busy interval of ~0, so the
    # pace becomes (10 + 19 + ~0) / 3 = 9.67.
    await t.move(w1["id"], "start_preparation")
    assert (await t.get(f"/v1/tickets/{w2['id']}"))["estimated_wait_minutes"] == 10
    assert (await t.get(f"/v1/tickets/{w3['id']}"))["estimated_wait_minutes"] == 19
    feed = await t.get(f"/v1/queues/{queue['id']}/monitor")
    assert [e["estimated_wait_minutes"] for e in feed["groups"]["waiting"]] == [10, 19]
    # The queue switches to a manual pace of 2 minutes.
    ok(
        await client.patch(
            f"/v1/queues/{queue['id']}",
            json={"wait_estimation_method": "manual", "manual_wait_minutes": 2},
            headers=t.h,
        )
    )
    assert (await t.get(f"/v1/tickets/{w3['id']}"))["estimated_wait_minutes"] == 4
    feed = await t.get(f"/v1/queues/{queue['id']}/monitor")
    assert [e["estimated_wait_minutes"] for e in feed["groups"]["waiting"]] == [2, 4]


async def test_given_and_overridden_estimates_win_while_waiting(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, now: datetime
) -> None:
    t, queue, order, served = await line(client, api, db, now)  # pace 4
    plain = await t.ticket(queue["id"], order["id"])
    given = await t.ticket(queue["id"], order["id"], estimated_wait_minutes=25)
    patched = await t.ticket(queue["id"], order["id"])
    assert (given["estimated_wait_minutes"], given["original_estimated_wait_minutes"]) == (25, 25)
    assert (patched["estimated_wait_minutes"], patched["original_estimated_wait_minutes"]) == (12, 12)

    response = await client.patch(
        f"/v1/tickets/{patched['id']}", json={"estimated_wait_minutes": 42}, headers=t.h
    )
    overridden = ok(response)
    assert overridden["estimated_wait_minutes"] == 42
    assert overridden["original_estimated_wait_minutes"] == 12
    ids_ = [plain["id"], given["id"], patched["id"]]
    seen = await estimates_everywhere(t, queue["id"], ids_, served)
    assert seen == {key: [4, 25, 42] for key in ("get", "public", "list", "queue", "monitor")}

    # The override stays put when the line moves; the computed one moves.
    await t.move(plain["id"], "start_preparation")
    assert (await t.get(f"/v1/tickets/{given['id']}"))["estimated_wait_minutes"] == 25
    assert (await t.get(f"/v1/tickets/{patched['id']}"))["estimated_wait_minutes"] == 42
    # Clearing the override brings back the live figure (position 2 x 4).
    cleared = ok(
        await client.patch(f"/v1/tickets/{patched['id']}", json={"estimated_wait_minutes": None}, headers=t.h)
    )
    assert (cleared["position"], cleared["estimated_wait_minutes"]) == (2, 8)
    assert cleared["original_estimated_wait_minutes"] == 12
    # An overridden ticket that leaves the line has no estimate any more.
    called = await t.move(given["id"], "start_preparation")
    assert called["estimated_wait_minutes"] is None
    assert (await t.get(f"/v1/tickets/{given['id']}"))["estimated_wait_minutes"] is None
    feed = await t.get(f"/v1/queues/{queue['id']}/monitor")
    shown = {e["id"]: e["estimated_wait_minutes"] for g in feed["groups"].values() for e in g}
    assert shown[given["id"]] is None
    assert shown[patched["id"]] == 4  # now first in line


# A type whose tickets start out in service (a kitchen order that never waits in a line).
KITCHEN_FSM: dict[str, Any] = {
    "init": "in_kitchen",
    "states": ["in_kitchen", "done"],
    "transitions": [{"name": "finish", "from": "in_kitchen", "to": "done"}],
    "categories": {"in_kitchen": "in_service"},
}


async def test_a_ticket_that_never_waits_has_no_estimate(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, now: datetime
) -> None:
    t, queue, _, _ = await line(client, api, db, now)  # a line with history: pace 4
    kitchen = await t.type("kitchen", KITCHEN_FSM)
    plain = await t.ticket(queue["id"], kitchen["id"])
    assert (plain["state_category"], plain["position"]) == ("in_service", None)
    assert plain["estimated_wait_minutes"] is None
    assert plain["original_estimated_wait_minutes"] is None
    assert plain["actual_wait_minutes"] == 0
    assert plain["started_at"] is not None

    # The client's own estimate is kept as the original, but a ticket that is not waiting has no live one,
    # on creation as on every read.
    given = await t.ticket(queue["id"], kitchen["id"], estimated_wait_minutes=9)
    assert given["original_estimated_wait_minutes"] == 9
    got = await t.get(f"/v1/tickets/{given['id']}")
    assert got["estimated_wait_minutes"] is None
    assert got["original_estimated_wait_minutes"] == 9
    assert given["estimated_wait_minutes"] is None, (
        "POST /v1/tickets echoes the client's estimated_wait_minutes for a ticket created outside the "
        f"waiting line, while GET says null: created {given['estimated_wait_minutes']!r}"
    )


async def test_show_wait_time_false_hides_estimates_from_displays(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, now: datetime
) -> None:
    t, queue, order, served = await line(client, api, db, now, show_wait_time=False)  # pace 4
    created = [await t.ticket(queue["id"], order["id"]) for _ in range(2)]
    display = await api.key("tenant", "display", key=t.world.tenant_admin, tenant_id=t.id)
    staff = await api.key("tenant", "staff", key=t.world.tenant_admin, tenant_id=t.id)

    shown = ok(await client.get(f"/v1/queues/{queue['id']}/tickets", headers=auth(display)))["data"]
    assert [row["id"] for row in shown if row["state_category"] == "waiting"] == [c["id"] for c in created]
    assert len(shown) == 2 + len(served)
    for row in shown:
        assert row["estimated_wait_minutes"] is None
        assert row["original_estimated_wait_minutes"] is None
        assert row["actual_wait_minutes"] is None

    feed = ok(await client.get(f"/v1/queues/{queue['id']}/monitor", headers=auth(display)))
    assert feed["show_wait_time"] is False
    assert len(feed["groups"]["waiting"]) == 2
    assert len(feed["groups"]["in_service"]) == len(served)
    for group in feed["groups"].values():
        for entry in group:
            assert "estimated_wait_minutes" not in entry
    # The monitor leaves the field out whoever reads it.
    staff_feed = ok(await client.get(f"/v1/queues/{queue['id']}/monitor", headers=auth(staff)))
    assert all("estimated_wait_minutes" not in e for e in staff_feed["groups"]["waiting"])

    # Staff still see the estimates on the queue's list and on the ticket.
    staffed = ok(await client.get(f"/v1/queues/{queue['id']}/tickets", headers=auth(staff)))["data"]
    waiting = [row for row in staffed if row["state_category"] == "waiting"]
    assert [row["estimated_wait_minutes"] for row in waiting] == [4, 8]
    assert [row["original_estimated_wait_minutes"] for row in waiting] == [4, 8]
    one = ok(await client.get(f"/v1/tickets/{created[1]['id']}", headers=auth(staff)))
    assert one["estimated_wait_minutes"] == 8

    # Turning show_wait_time on shows them to the display too.
    ok(await client.patch(f"/v1/queues/{queue['id']}", json={"show_wait_time": True}, headers=t.h))
    shown = ok(await client.get(f"/v1/queues/{queue['id']}/tickets", headers=auth(display)))["data"]
    assert [row["estimated_wait_minutes"] for row in shown if row["state_category"] == "waiting"] == [4, 8]
    feed = ok(await client.get(f"/v1/queues/{queue['id']}/monitor", headers=auth(display)))
    assert feed["show_wait_time"] is True
    assert [e["estimated_wait_minutes"] for e in feed["groups"]["waiting"]] == [4, 8]


# --- stats --------------------------------------------------------------------------------------------------


async def test_stats_counts_by_state_and_category(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, now: datetime
) -> None:
    t = await Tenant.create(client, api)
    order = await t.type("order", FOOD_ORDER_FSM)
    dmv = await t.type("dmv", DMV_FSM)
    queue = await t.queue("Counts", manual_wait_minutes=3)
    orders = [await t.ticket(queue["id"], order["id"]) for _ in range(8)]
    plates = [await t.ticket(queue["id"], dmv["id"]) for _ in range(6)]
    for ticket in orders[3:8]:
        await t.move(ticket["id"], "start_preparation")  # 3 received, 5 in_progress ...
    for ticket in orders[5:7]:
        await t.move(ticket["id"], "mark_ready")  # ... 3 in_progress, 2 ready ...
    await t.move(orders[6]["id"], "pickup")  # ... 1 ready, 1 picked_up
    ok(await client.delete(f"/v1/tickets/{orders[7]['id']}", headers=t.h))  # in_progress -> cancelled
    # orders: received 3, in_progress 2, ready 1, picked_up 1, cancelled 1
    await t.move(plates[2]["id"], "verify")
    for transition in ("verify", "pay"):
        await t.move(plates[3]["id"], transition)
    for transition in ("verify", "pay", "issue"):
        await t.move(plates[4]["id"], transition)
    ok(await client.delete(f"/v1/tickets/{plates[5]['id']}", headers=t.h))
    # plates: submitted 2, documents_verified 1, fee_paid 1, plates_issued 1, cancelled 1
    # A ticket finished on an earlier day is not counted; an active one from then still is.
    old_done = await t.ticket(queue["id"], order["id"])
    for transition in ("start_preparation", "mark_ready", "pickup"):
        await t.move(old_done["id"], transition)
    old_waiting = await t.ticket(queue["id"], dmv["id"])
    for ticket in (old_done, old_waiting):
        await db.execute(
            "UPDATE tickets SET local_date = local_date - 1, created_at = created_at - interval '1 day' "
            "WHERE id = $1",
            uuid.UUID(ticket["id"]),
        )

    stats = await t.get(f"/v1/queues/{queue['id']}/stats")
    assert stats["queue_id"] == queue["id"]
    assert stats["counts_by_state"] == {
        "received": 3,
        "in_progress": 2,
        "ready": 1,
        "picked_up": 1,
        "cancelled": 2,
        "submitted": 3,
        "documents_verified": 1,
        "fee_paid": 1,
        "plates_issued": 1,
    }
    assert stats["counts_by_category"] == {
        "waiting": 6,
        "in_service": 4,
        "ready": 1,
        "done": 2,
        "cancelled": 2,
    }
    assert stats["waiting"] == 6
    # Everything left the line after the pinned now: no history, manual_wait_minutes is the fallback.
    assert stats["estimation"] == {
        "method": "average_recent_3",
        "basis": "fallback",
        "minutes_per_ticket": 3.0,
        "fallback_minutes_per_ticket": 3.0,
        "current_estimate_minutes": 21,  # (6 + 1) x 3
    }
    # Every departure has an original estimate and an actual wait of 0, but they are after now.
    assert stats["accuracy"]["sample_size"] == 0
    # Seen from an hour later they are history, and accuracy covers every one of them.
    clock.set_now(now + timedelta(hours=1))
    later = await t.get(f"/v1/queues/{queue['id']}/stats")
    assert later["estimation"]["basis"] == "history"
    left = await db.fetch(
        "SELECT original_estimated_wait_minutes AS o, actual_wait_minutes AS a FROM tickets "
        "WHERE queue_id = $1 AND started_at IS NOT NULL",
        uuid.UUID(queue["id"]),
    )
    assert later["accuracy"]["sample_size"] == len(left) == 10  # a cancel from the line is a departure too
    assert later["accuracy"]["mean_absolute_error_minutes"] == round(
        sum(abs(r["o"] - r["a"]) for r in left) / len(left), 2
    )


async def test_stats_basis_follows_the_amount_of_history(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, now: datetime
) -> None:
    t = await Tenant.create(client, api)
    order = await t.type("order", FOOD_ORDER_FSM)
    queue = await t.queue("Growing")
    await add_history(t, db, queue["id"], order["id"], now, [(-40, -30), (-40, -28), (-40, -25)])
    await t.ticket(queue["id"], order["id"])
    thin = await t.get(f"/v1/queues/{queue['id']}/stats")
    assert thin["estimation"]["basis"] == "fallback"  # two intervals
    assert thin["estimation"]["minutes_per_ticket"] == 5.0
    assert thin["estimation"]["current_estimate_minutes"] == 10  # (1 + 1) x 5
    await add_history(t, db, queue["id"], order["id"], now, [(-40, -21)])
    rich = await t.get(f"/v1/queues/{queue['id']}/stats")
    assert rich["estimation"]["basis"] == "history"  # intervals 2, 3, 4
    assert rich["estimation"]["minutes_per_ticket"] == 3.0
    assert rich["estimation"]["current_estimate_minutes"] == 6


async def test_stats_accuracy_over_the_latest_fifty_departures(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, now: datetime
) -> None:
    t = await Tenant.create(client, api)
    order = await t.type("order", FOOD_ORDER_FSM)
    queue = await t.queue("Accuracy")
    empty = await t.get(f"/v1/queues/{queue['id']}/stats")
    assert empty["accuracy"] == {
        "sample_size": 0,
        "mean_absolute_error_minutes": None,
        "mean_error_minutes": None,
    }
    assert empty["counts_by_category"] == dict.fromkeys(
        ("waiting", "in_service", "ready", "done", "cancelled"), 0
    )
    assert empty["counts_by_state"] == {}

    served = [await t.ticket(queue["id"], order["id"]) for _ in range(58)]
    for ticket in served:
        await t.move(ticket["id"], "start_preparation")
    rows: list[tuple[uuid.UUID, datetime, datetime, int | None, int]] = []
    errors = []
    for index, ticket in enumerate(served[:55]):
        started = minutes(now, -2 * (55 - index))  # every 2 minutes, the last at -2
        actual = 7 + index % 7
        # The five oldest were far off: they must fall out of the sample of 50.
        original = 100 if index < 5 else 10
        rows.append((uuid.UUID(ticket["id"]), started - timedelta(minutes=actual), started, original, actual))
        errors.append(original - actual)
    # The three newest departures have no original estimate (or no actual): not part of the sample at all.
    for index, ticket in enumerate(served[55:]):
        started = minutes(now, -1 + index * 0.25)
        rows.append((uuid.UUID(ticket["id"]), started - timedelta(minutes=3), started, None, 3))
    await db.executemany(
        """UPDATE tickets SET created_at = $2, started_at = $3, original_estimated_wait_minutes = $4,
                  actual_wait_minutes = $5 WHERE id = $1""",
        rows,
    )
    await db.execute(
        "UPDATE tickets SET original_estimated_wait_minutes = 3, actual_wait_minutes = NULL WHERE id = $1",
        uuid.UUID(served[57]["id"]),
    )
    await t.ticket(queue["id"], order["id"])
    await t.ticket(queue["id"], order["id"])

    stats = await t.get(f"/v1/queues/{queue['id']}/stats")
    latest = errors[-50:]
    assert all(e in range(-3, 4) for e in latest)
    assert stats["accuracy"]["sample_size"] == 50
    assert stats["accuracy"]["mean_absolute_error_minutes"] == round(sum(abs(e) for e in latest) / 50, 2)
    assert stats["accuracy"]["mean_error_minutes"] == round(sum(latest) / 50, 2)
    assert stats["counts_by_category"]["in_service"] == 58
    assert stats["counts_by_category"]["waiting"] == 2
    # The newest departures came at -1, -0.75, -0.5 (each arrived 3 minutes earlier): intervals 0.25 ... and
    # the one before them at -2: 1, 0.25, 0.25 -> pace 0.5; (2 + 1) x 0.5 = 1.5 -> 2.
    assert stats["estimation"]["basis"] == "history"
    assert stats["estimation"]["minutes_per_ticket"] == 0.5
    assert stats["estimation"]["current_estimate_minutes"] == 2


async def test_a_ticket_forwarded_after_its_call_stays_a_departure_of_the_line_it_left(
    client: httpx.AsyncClient, api: Api, db: asyncpg.Connection, now: datetime
) -> None:
    """PRODUCT §4: the pace of "the same queue". Departures were looked up by the ticket's current queue,
    so a kitchen order started and then forwarded to pickup (kept in service) became pickup's newest
    departure: pickup's pace went from 10 to 7 minutes a ticket with nobody called there, and the kitchen
    lost it. A departure now belongs to the queue whose line the ticket left, for the estimates and the
    accuracy figures alike; a ticket forwarded while waiting leaves the line it was forwarded to."""
    t = await Tenant.create(client, api)
    order = await t.type("order", FOOD_ORDER_FSM)
    kitchen, pickup = await t.queue("Kitchen"), await t.queue("Pickup")
    await add_history(t, db, pickup["id"], order["id"], now, [(-60, -40), (-60, -30), (-60, -20), (-60, -10)])
    waiting = await t.ticket(pickup["id"], order["id"])
    assert (await t.get(f"/v1/tickets/{waiting['id']}"))["estimated_wait_minutes"] == 10
    before = await t.get(f"/v1/queues/{pickup['id']}/stats")
    assert before["estimation"]["minutes_per_ticket"] == 10.0

    [cooked] = await add_history(t, db, kitchen["id"], order["id"], now, [(-9, -8)])
    kitchen_stats = await t.get(f"/v1/queues/{kitchen['id']}/stats")
    ok(
        await client.post(
            f"/v1/tickets/{cooked}/forward", json={"target_queue_id": pickup["id"]}, headers=t.h
        )
    )
    after = await t.get(f"/v1/queues/{pickup['id']}/stats")
    assert after["estimation"] == before["estimation"]
    assert after["accuracy"] == before["accuracy"]
    assert (await t.get(f"/v1/tickets/{waiting['id']}"))["estimated_wait_minutes"] == 10
    assert (await t.get(f"/v1/queues/{kitchen['id']}/stats"))["estimation"] == kitchen_stats["estimation"]
    rows = await db.fetch("SELECT queue_id, departed_queue_id FROM tickets WHERE id = $1", uuid.UUID(cooked))
    assert [(str(r["queue_id"]), str(r["departed_queue_id"])) for r in rows] == [
        (pickup["id"], kitchen["id"])
    ]

    # Forwarded while waiting, then called: a departure of the line it was called from.
    moved = await t.ticket(kitchen["id"], order["id"])
    ok(
        await client.post(
            f"/v1/tickets/{moved['id']}/forward", json={"target_queue_id": pickup["id"]}, headers=t.h
        )
    )
    await t.move(moved["id"], "start_preparation")
    departed = await db.fetchval(
        "SELECT departed_queue_id FROM tickets WHERE id = $1", uuid.UUID(moved["id"])
    )
    assert str(departed) == pickup["id"]
