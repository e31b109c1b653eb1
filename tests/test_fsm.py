"""The state machine as pure code: validation, categories, transitions, and properties of random machines."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtualq.fsm import Category, Machine, MachineInvalid, TransitionRejected

COFFEE: dict[str, Any] = {
    "init": "received",
    "states": ["received", "in_progress", "ready", "picked_up", "cancelled"],
    "transitions": [
        {"name": "start_preparation", "from": "received", "to": "in_progress"},
        {"name": "mark_ready", "from": "in_progress", "to": "ready"},
        {"name": "pickup", "from": "ready", "to": "picked_up"},
        {"name": "cancel", "from": ["received", "in_progress"], "to": "cancelled"},
    ],
    "categories": {"ready": "ready"},
}


def test_coffee_machine_categories_are_inferred() -> None:
    machine = Machine.from_schema(COFFEE)
    assert machine.categories == {
        "received": Category.WAITING,
        "in_progress": Category.IN_SERVICE,
        "ready": Category.READY,
        "picked_up": Category.DONE,
        "cancelled": Category.CANCELLED,
    }
    assert machine.is_terminal("picked_up")
    assert not machine.is_terminal("ready")


def test_apply_follows_the_declared_transitions() -> None:
    machine = Machine.from_schema(COFFEE)
    assert machine.apply("received", "start_preparation") == "in_progress"
    assert machine.apply("in_progress", "cancel") == "cancelled"
    assert machine.transitions_from("received") == ["start_preparation", "cancel"]


def test_rejected_transition_lists_the_valid_ones() -> None:
    machine = Machine.from_schema(COFFEE)
    with pytest.raises(TransitionRejected) as caught:
        machine.apply("ready", "cancel")
    assert caught.value.current_state == "ready"
    assert caught.value.transition == "cancel"
    assert caught.value.valid_transitions == ["pickup"]


def test_terminal_states_have_no_transitions() -> None:
    machine = Machine.from_schema(COFFEE)
    with pytest.raises(TransitionRejected) as caught:
        machine.apply("picked_up", "pickup")
    assert caught.value.valid_transitions == []


def test_wildcard_source_means_every_non_terminal_state() -> None:
    schema = {
        "init": "waiting",
        "states": ["waiting", "serving", "served", "canceled"],
        "transitions": [
            {"name": "serve", "from": "waiting", "to": "serving"},
            {"name": "finish", "from": "serving", "to": "served"},
            {"name": "cancel", "from": "*", "to": "canceled"},
        ],
    }
    machine = Machine.from_schema(schema)
    assert machine.category("canceled") is Category.CANCELLED
    assert machine.transitions_from("waiting") == ["serve", "cancel"]
    assert machine.transitions_from("serving") == ["finish", "cancel"]
    assert machine.transitions_from("served") == []
    assert machine.transitions_from("canceled") == []
    assert machine.cancel_transition("serving") == "cancel"


def test_declared_categories_win_over_inference() -> None:
    schema = {
        "init": "submitted",
        "states": ["submitted", "ready", "closed"],
        "transitions": [{"name": "go", "from": "submitted", "to": "ready"}],
        "categories": {"ready": "in_service", "submitted": "waiting", "closed": "cancelled"},
    }
    machine = Machine.from_schema(schema)
    assert machine.category("ready") is Category.IN_SERVICE
    assert machine.category("closed") is Category.CANCELLED


def test_first_transition_into_a_category() -> None:
    machine = Machine.from_schema(COFFEE)
    assert (
        machine.first_transition_into("received", [Category.IN_SERVICE, Category.READY])
        == "start_preparation"
    )
    assert machine.first_transition_into("ready", [Category.IN_SERVICE]) is None


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ([], "must be an object"),
        ({"init": "a", "states": []}, "states must be a non-empty list"),
        ({"init": "x", "states": ["a"], "transitions": []}, "init 'x' is not one of the states"),
        ({"init": "a", "states": ["a", "a"], "transitions": []}, "listed twice"),
        ({"init": "a", "states": ["a", ""], "transitions": []}, "states[1] must be a non-empty string"),
        ({"init": "a", "states": ["a", "b" * 33], "transitions": []}, "at most 32 characters"),
        ({"init": "a", "states": ["a", 7], "transitions": []}, "states[1]"),
        ({"init": "a", "states": ["a"], "transitions": {}}, "transitions must be a list"),
        (
            {"init": "a", "states": ["a"], "transitions": [{"name": "t", "from": "a", "to": "zz"}]},
            "transitions[0].to 'zz' is not a state",
        ),
        (
            {"init": "a", "states": ["a", "b"], "transitions": [{"name": "t", "from": "q", "to": "b"}]},
            "transitions[0].from 'q' is not a state",
        ),
        (
            {"init": "a", "states": ["a", "b"], "transitions": [{"name": "t", "from": [], "to": "b"}]},
            "from must be a state, a non-empty list",
        ),
        (
            {"init": "a", "states": ["a", "b"], "transitions": [{"name": "", "from": "a", "to": "b"}]},
            "transitions[0].name",
        ),
        (
            {"init": "a", "states": ["a", "b"], "transitions": [{"name": "t" * 33, "from": "a", "to": "b"}]},
            "transitions[0].name",
        ),
        (
            {
                "init": "a",
                "states": ["a", "b", "c"],
                "transitions": [{"name": "t", "from": "a", "to": "b"}, {"name": "t", "from": "a", "to": "c"}],
            },
            "two transitions named 't' leave state 'a'",
        ),
        (
            {"init": "a", "states": ["a"], "transitions": [], "categories": {"zz": "done"}},
            "categories: 'zz' is not a state",
        ),
        (
            {"init": "a", "states": ["a"], "transitions": [], "categories": {"a": "finished"}},
            "'finished' for 'a' is not one of",
        ),
        ({"init": "a", "states": ["a"], "transitions": [], "methods": {}}, "unknown keys: methods"),
        ({"init": "a", "states": [f"s{i}" for i in range(101)], "transitions": []}, "at most 100 states"),
        (
            {
                "init": "a",
                "states": ["a"],
                "transitions": [{"name": f"t{i}", "from": "a", "to": "a"} for i in range(501)],
            },
            "at most 500 transitions",
        ),
    ],
)
def test_invalid_machines_are_rejected_with_the_reason(schema: Any, problem: str) -> None:
    with pytest.raises(MachineInvalid) as caught:
        Machine.from_schema(schema)
    assert any(problem in reason for reason in caught.value.problems), caught.value.problems


def test_every_problem_is_listed_not_just_the_first() -> None:
    schema = {
        "init": "nope",
        "states": ["a", "a"],
        "transitions": [{"name": "t", "from": "x", "to": "y"}],
        "categories": {"a": "bogus"},
    }
    with pytest.raises(MachineInvalid) as caught:
        Machine.from_schema(schema)
    assert len(caught.value.problems) >= 4


# --- properties over random machines ---------------------------------------------------------------------

NAMES = st.text(alphabet="abcdefgh_", min_size=1, max_size=6)


@st.composite
def machines(draw: st.DrawFn) -> dict[str, Any]:
    states = draw(st.lists(NAMES, min_size=1, max_size=8, unique=True))
    init = draw(st.sampled_from(states))
    transition_names = draw(st.lists(NAMES, min_size=1, max_size=6, unique=True))
    transitions = []
    used: set[tuple[str, str]] = set()
    for _ in range(draw(st.integers(0, 15))):
        name = draw(st.sampled_from(transition_names))
        sources = draw(st.lists(st.sampled_from(states), min_size=1, max_size=3, unique=True))
        sources = [source for source in sources if (name, source) not in used]
        if not sources:
            continue
        used.update((name, source) for source in sources)
        target = draw(st.sampled_from(states))
        transitions.append({"name": name, "from": sources if len(sources) > 1 else sources[0], "to": target})
    return {"init": init, "states": states, "transitions": transitions}


def _oracle_moves(schema: dict[str, Any], state: str) -> dict[str, str]:
    moves = {}
    for transition in schema["transitions"]:
        sources = transition["from"] if isinstance(transition["from"], list) else [transition["from"]]
        if state in sources:
            moves[transition["name"]] = transition["to"]
    return moves


@settings(max_examples=200, deadline=None)
@given(schema=machines(), data=st.data())
def test_random_walks_stay_in_declared_states(schema: dict[str, Any], data: st.DataObject) -> None:
    machine = Machine.from_schema(schema)
    state = machine.init
    names = sorted({t["name"] for t in schema["transitions"]} | {"not_a_transition"})
    for _ in range(data.draw(st.integers(1, 30))):
        name = data.draw(st.sampled_from(names))
        expected = _oracle_moves(schema, state)
        if name in expected:
            state = machine.apply(state, name)
            assert state == expected[name]
        else:
            with pytest.raises(TransitionRejected) as caught:
                machine.apply(state, name)
            assert set(caught.value.valid_transitions) == set(expected)
        assert state in schema["states"]


@settings(max_examples=200, deadline=None)
@given(schema=machines())
def test_every_state_gets_exactly_one_category(schema: dict[str, Any]) -> None:
    machine = Machine.from_schema(schema)
    assert set(machine.categories) == set(schema["states"])
    assert machine.category(machine.init) is Category.WAITING
    for state in schema["states"]:
        if not _oracle_moves(schema, state) and state != machine.init:
            assert machine.is_terminal(state)
