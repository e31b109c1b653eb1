"""Tenant-defined state machines (PRODUCT §2): validation, categories, and transitions.

Pure domain code: no web or database imports. A `Machine` is built once per type-definition version and
shared by every request that uses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MAX_NAME_LENGTH = 32
MAX_STATES = 100
MAX_TRANSITIONS = 500
ANY_STATE = "*"
ALLOWED_KEYS = frozenset({"init", "states", "transitions", "categories"})


class Category(StrEnum):
    WAITING = "waiting"
    IN_SERVICE = "in_service"
    READY = "ready"
    DONE = "done"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (Category.DONE, Category.CANCELLED)


class MachineInvalid(ValueError):
    """The schema is not a valid machine; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class TransitionRejected(ValueError):
    def __init__(self, current_state: str, transition: str, valid_transitions: list[str]) -> None:
        super().__init__(f"transition {transition!r} is not possible from state {current_state!r}")
        self.current_state = current_state
        self.transition = transition
        self.valid_transitions = valid_transitions


@dataclass(frozen=True)
class Transition:
    name: str
    sources: tuple[str, ...] | None  # None means "*": every non-terminal state
    target: str


@dataclass(frozen=True)
class Machine:
    init: str
    states: tuple[str, ...]
    transitions: tuple[Transition, ...]
    categories: Mapping[str, Category]
    # state -> {transition name -> target}, with "*" expanded
    _moves: Mapping[str, Mapping[str, str]] = field(repr=False, compare=False)

    @classmethod
    def from_schema(cls, schema: Any) -> Machine:
        """Validate `schema` (the javascript-state-machine JSON shape) and build the machine."""
        problems: list[str] = []
        if not isinstance(schema, Mapping):
            raise MachineInvalid(["fsm_schema must be an object"])
        unknown = sorted(set(schema) - ALLOWED_KEYS)
        if unknown:
            problems.append(f"unknown keys: {', '.join(unknown)}")
        states = _check_states(schema.get("states"), problems)
        state_set = set(states)
        init = schema.get("init")
        if not isinstance(init, str):
            problems.append("init must be a state name")
        elif init not in state_set:
            problems.append(f"init {init!r} is not one of the states")
        transitions = _check_transitions(schema.get("transitions"), state_set, problems)
        declared = _check_categories(schema.get("categories", {}), state_set, problems)
        if problems:
            # Categories cannot be inferred from a broken machine, so '*' cannot be expanded yet; duplicates
            # among explicit sources are still reported now, with everything else.
            _check_explicit_duplicates(transitions, problems)
            raise MachineInvalid(problems)
        assert isinstance(init, str)
        categories = infer_categories(init, states, transitions, declared)
        moves = _expand(states, transitions, categories, problems)
        if problems:
            raise MachineInvalid(problems)
        return cls(init, tuple(states), tuple(transitions), categories, moves)

    def category(self, state: str) -> Category:
        return self.categories[state]

    def is_terminal(self, state: str) -> bool:
        return self.categories[state].is_terminal

    def transitions_from(self, state: str) -> list[str]:
        """Names of the transitions that leave `state`, in declaration order."""
        return list(self._moves.get(state, {}))

    def apply(self, state: str, transition: str) -> str:
        """The state after `transition`, or TransitionRejected listing the valid ones."""
        target = self._moves.get(state, {}).get(transition)
        if target is None:
            raise TransitionRejected(state, transition, self.transitions_from(state))
        return target

    def first_transition_into(self, state: str, categories: Iterable[Category]) -> str | None:
        """The first declared transition from `state` whose target has one of `categories`."""
        wanted = set(categories)
        for name, target in self._moves.get(state, {}).items():
            if self.categories[target] in wanted:
                return name
        return None

    def cancel_transition(self, state: str) -> str | None:
        return self.first_transition_into(state, [Category.CANCELLED])

    def states_in(self, category: Category) -> list[str]:
        return [state for state in self.states if self.categories[state] is category]


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME_LENGTH and value.strip() == value


def _check_states(raw: Any, problems: list[str]) -> list[str]:
    if not isinstance(raw, list) or not raw:
        problems.append("states must be a non-empty list of state names")
        return []
    if len(raw) > MAX_STATES:
        problems.append(f"at most {MAX_STATES} states are allowed (got {len(raw)})")
    states: list[str] = []
    seen: set[str] = set()
    for index, state in enumerate(raw):
        if not _is_name(state):
            problems.append(
                f"states[{index}] must be a non-empty string of at most {MAX_NAME_LENGTH} characters"
            )
        elif state == ANY_STATE:
            problems.append(f"states[{index}]: '*' is reserved")
        elif state in seen:
            problems.append(f"state {state!r} is listed twice")
        else:
            seen.add(state)
            states.append(state)
    return states


def _check_transitions(raw: Any, states: set[str], problems: list[str]) -> list[Transition]:
    if not isinstance(raw, list):
        problems.append("transitions must be a list")
        return []
    if len(raw) > MAX_TRANSITIONS:
        problems.append(f"at most {MAX_TRANSITIONS} transitions are allowed (got {len(raw)})")
    transitions: list[Transition] = []
    for index, item in enumerate(raw):
        where = f"transitions[{index}]"
        if not isinstance(item, Mapping):
            problems.append(f"{where} must be an object with name, from and to")
            continue
        extra = sorted(set(item) - {"name", "from", "to"})
        if extra:
            problems.append(f"{where}: unknown keys: {', '.join(extra)}")
        name, source, target = item.get("name"), item.get("from"), item.get("to")
        ok = True
        if not _is_name(name):
            problems.append(
                f"{where}.name must be a non-empty string of at most {MAX_NAME_LENGTH} characters"
            )
            ok = False
        if not isinstance(target, str) or target not in states:
            problems.append(f"{where}.to {target!r} is not a state")
            ok = False
        sources: tuple[str, ...] | None
        if source == ANY_STATE:
            sources = None
        elif isinstance(source, str):
            sources = (source,)
        elif isinstance(source, list) and source and all(isinstance(s, str) for s in source):
            sources = tuple(dict.fromkeys(source))
        else:
            problems.append(f"{where}.from must be a state, a non-empty list of states, or '*'")
            continue
        for state in sources or ():
            if state not in states:
                problems.append(f"{where}.from {state!r} is not a state")
                ok = False
        if ok:
            assert isinstance(name, str)
            assert isinstance(target, str)
            transitions.append(Transition(name, sources, target))
    return transitions


def _check_categories(raw: Any, states: set[str], problems: list[str]) -> dict[str, Category]:
    if not isinstance(raw, Mapping):
        problems.append("categories must be an object mapping states to categories")
        return {}
    declared: dict[str, Category] = {}
    valid = ", ".join(category.value for category in Category)
    for state, category in raw.items():
        if state not in states:
            problems.append(f"categories: {state!r} is not a state")
        elif category not in {c.value for c in Category}:
            problems.append(f"categories: {category!r} for {state!r} is not one of {valid}")
        else:
            declared[state] = Category(category)
    return declared


def infer_categories(
    init: str, states: list[str], transitions: list[Transition], declared: Mapping[str, Category]
) -> dict[str, Category]:
    """Declared categories win; otherwise the rules of PRODUCT §2, in order.

    "No outgoing transition" counts only explicit sources: a '*' transition leaves every non-terminal
    state, so it cannot be what makes a state non-terminal.
    """
    has_exit = {state for t in transitions for state in (t.sources or ())}
    categories: dict[str, Category] = {}
    for state in states:
        if state in declared:
            categories[state] = declared[state]
        elif state == init:
            categories[state] = Category.WAITING
        elif state.lower() in ("cancelled", "canceled"):
            categories[state] = Category.CANCELLED
        elif state not in has_exit:
            categories[state] = Category.DONE
        elif state.lower() == "ready":
            categories[state] = Category.READY
        else:
            categories[state] = Category.IN_SERVICE
    return categories


def _check_explicit_duplicates(transitions: list[Transition], problems: list[str]) -> None:
    seen: set[tuple[str, str]] = set()
    for transition in transitions:
        for source in transition.sources or ():
            if (source, transition.name) in seen:
                problems.append(f"two transitions named {transition.name!r} leave state {source!r}")
            seen.add((source, transition.name))


def _expand(
    states: list[str], transitions: list[Transition], categories: Mapping[str, Category], problems: list[str]
) -> dict[str, dict[str, str]]:
    moves: dict[str, dict[str, str]] = {state: {} for state in states}
    for transition in transitions:
        sources = transition.sources
        if sources is None:
            sources = tuple(state for state in states if not categories[state].is_terminal)
        for source in sources:
            existing = moves[source].get(transition.name)
            if existing is not None:
                problems.append(f"two transitions named {transition.name!r} leave state {source!r}")
                continue
            moves[source][transition.name] = transition.target
    return moves
