"""`kit.application.Application` and `kit.appstate.AppState`: the app object with a shorter way in."""

from __future__ import annotations

import pytest
from starlette.datastructures import State
from starlette.middleware.errors import ServerErrorMiddleware

from tests.conftest import make_settings
from virtualq.app import create_app
from virtualq.kit.application import Application
from virtualq.kit.appstate import AppState
from virtualq.kit.middleware import RequestContextMiddleware


def test_every_write_and_delete_is_seen_by_attribute_item_and_iteration() -> None:
    state = AppState()
    state.a = 1
    state["b"] = 2
    assert (state.a, state["a"], state.b, state["b"]) == (1, 1, 2, 2)
    assert sorted(state) == ["a", "b"]
    assert len(state) == 2
    # found by the ordinary lookup, without Starlette's __getattr__ fallback
    assert vars(state)["a"] == 1
    assert vars(state)["b"] == 2

    state.a = 10
    state["b"] = 20
    assert (state.a, state["a"], state.b, state["b"]) == (10, 10, 20, 20)

    del state.a
    del state["b"]
    assert len(state) == 0
    assert "a" not in vars(state)
    assert "b" not in vars(state)
    for missing in ("a", "b"):
        with pytest.raises(AttributeError, match=f"'AppState' object has no attribute '{missing}'"):
            getattr(state, missing)
        with pytest.raises(KeyError):
            state[missing]
        with pytest.raises(KeyError):
            del state[missing]
    assert getattr(state, "a", "default") == "default"
    assert not hasattr(state, "b")


def test_the_app_state_is_an_app_state_holding_what_the_app_stored() -> None:
    app = create_app(make_settings(), dsn="postgresql://unused")  # nothing connects before the lifespan
    assert isinstance(app.state, AppState)
    assert isinstance(app.state, State)
    assert vars(app.state)["settings"] is app.state.settings is app.state["settings"]
    assert {"settings", "metrics", "key_cache", "tenant_accounts", "read_batching"} <= set(app.state)


def test_the_stack_starts_with_the_500_layer_then_our_request_context() -> None:
    """FastAPI's exception-telemetry layer (a no-op with telemetry off) is not on the path; Starlette's
    last-resort 500 still wraps everything. If a FastAPI upgrade reshapes its stack, this says so."""
    app = create_app(make_settings(), dsn="postgresql://unused")
    assert isinstance(app, Application)
    stack = app.build_middleware_stack()
    assert isinstance(stack, ServerErrorMiddleware)
    assert isinstance(stack.app, RequestContextMiddleware)
