"""Ticket rules: creation checks, transitions through the type's machine, cancellation, updates."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from virtualq.auth.principal import TenantContext
from virtualq.db import Connection, Record, acquire
from virtualq.errors import (
    Conflict,
    InvalidTransition,
    NotFound,
    QueueDisabled,
    TypeNotAllowed,
    ValidationFailed,
    not_found,
)
from virtualq.fsm import Category, Machine, TransitionRejected
from virtualq.kit.ids import new_id
from virtualq.kit.pagination import PageParams
from virtualq.kit.responses import record_dict
from virtualq.pool import Pool
from virtualq.queues import repository as queues
from virtualq.queues.estimates import Estimator, minutes_for
from virtualq.tickets import repository
from virtualq.tickets.batching import Batching
from virtualq.tickets.etag import check_version
from virtualq.tickets.reads import ReadBatching
from virtualq.tickets.rules import effects_of
from virtualq.tickets.schemas import TicketCreate, TicketUpdate, TransitionRequest
from virtualq.type_definitions import repository as types
from virtualq.type_definitions.compiled import CompiledType, cached, compiled

log = structlog.get_logger("virtualq.tickets")


def _compile(type_id: uuid.UUID, version: int, fsm_schema: Any, custom_fields_schema: Any) -> CompiledType:
    return compiled(type_id, version, fsm_schema, custom_fields_schema)


def check_custom_data(compiled_type: CompiledType, data: dict[str, Any]) -> None:
    errors = compiled_type.custom_data_errors(data)
    if errors:
        raise ValidationFailed("custom_data does not match the type's schema", {"custom_data": errors})


async def check_employee(conn: Connection, tenant_id: uuid.UUID, employee_id: uuid.UUID | None) -> None:
    if employee_id is None:
        return
    active = await conn.fetchval(
        "SELECT is_active FROM employees WHERE tenant_id = $1 AND id = $2", tenant_id, employee_id
    )
    if not active:
        raise ValidationFailed(
            "employee_id names no active employee of this tenant", {"field": "employee_id"}
        )


# How often a create starts again because its ticket's type changed after it was read (each time, someone
# changed the type's machine within one round trip).
CREATE_ATTEMPTS = 5


async def create_ticket(
    conn: Connection, ctx: TenantContext, body: TicketCreate, batching: Batching
) -> dict[str, Any]:
    for _ in range(CREATE_ATTEMPTS):
        try:
            return await _create_ticket(conn, ctx, body, batching)
        except repository.TypeChanged:
            continue  # read the queue and the type again: the start state may be another one now
    raise Conflict("the ticket's type kept changing while the ticket was being created; retry")


async def _create_ticket(
    conn: Connection, ctx: TenantContext, body: TicketCreate, batching: Batching
) -> dict[str, Any]:
    if body.tenant_id is not None and body.tenant_id != ctx.tenant_id:
        raise ValidationFailed(
            "tenant_id in the body disagrees with the tenant context", {"field": "tenant_id"}
        )
    queue = await queues.get_for_new_ticket(conn, ctx.tenant_id, body.queue_id, body.type_definition_id)
    if queue is None:  # 404 as a forward's target (PRODUCT §4); the field says which id it was
        raise NotFound("queue not found", {"field": "queue_id"})
    if not queue["is_active"]:
        raise QueueDisabled(
            "the queue is disabled and accepts no new tickets", {"queue_id": str(queue["id"])}
        )
    no_type = ValidationFailed(
        "type_definition_id names no active type of this tenant", {"field": "type_definition_id"}
    )
    if queue["type_id"] is None or not queue["type_is_active"]:
        raise no_type
    allowed = queue["allowed_type_definition_ids"]
    if allowed and queue["type_id"] not in allowed:
        raise TypeNotAllowed(
            "this queue does not accept tickets of this type",
            {"queue_id": str(queue["id"]), "type_definition_id": str(queue["type_id"])},
        )
    compiled_type = cached(queue["type_id"], queue["type_version"])
    if compiled_type is None:  # first use of this type version in this process
        type_row = await types.get_visible(conn, ctx.tenant_id, queue["type_id"])
        if type_row is None or not type_row["is_active"]:
            raise no_type
        compiled_type = _compile(
            type_row["id"], type_row["version"], type_row["fsm_schema"], type_row["custom_fields_schema"]
        )
    if compiled_type.machine is None:
        raise ValidationFailed(
            "this type has no state machine, so it cannot be a ticket type", {"field": "type_definition_id"}
        )
    check_custom_data(compiled_type, body.custom_data)
    if body.customer_id is not None:
        visible = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM customers WHERE id = $1 AND account_id = $2 AND is_active)",
            body.customer_id,
            ctx.account_id,
        )
        if not visible:
            raise ValidationFailed(
                "customer_id names no active customer of this account", {"field": "customer_id"}
            )
    if body.references_ticket_id is not None and not await repository.ticket_exists(
        conn, ctx.tenant_id, body.references_ticket_id
    ):
        raise ValidationFailed(
            "references_ticket_id names no ticket of this tenant", {"field": "references_ticket_id"}
        )
    timezone = queue["timezone"]
    machine = compiled_type.machine
    category = machine.category(machine.init)
    pace: float | None = None
    if category is Category.WAITING:
        # Before the insert, which holds the queue's counter lock until it commits; the pace does not
        # depend on the new ticket.
        estimator = Estimator(conn, ctx.tenant_id)
        estimator.remember_queue(queue)
        await estimator.paces_for([(queue["id"], compiled_type.id)])
        pace = estimator.pace_of(queue["id"], compiled_type.id)
    fields = body.model_dump(exclude={"tenant_id", "queue_id"})
    effects = effects_of(None, category)
    row = await batching.insert(
        conn,
        tenant_id=ctx.tenant_id,
        queue_id=queue["id"],
        timezone=timezone,
        prefix=queue["ticket_prefix"],
        ticket={
            "id": new_id(),
            "history_id": new_id(),
            "type_definition_id": fields["type_definition_id"],
            "type_version": compiled_type.version,
            "current_state": machine.init,
            "state_category": category.value,
            "customer_id": fields.get("customer_id"),
            "references_ticket_id": fields.get("references_ticket_id"),
            "estimated_wait_minutes": fields.get("estimated_wait_minutes"),
            "ttl_minutes": fields.get("ttl_minutes"),
            "custom_data": fields.get("custom_data", {}),
            "leaves": effects.leaves_waiting,
            "ready": effects.enters_ready,
            "done": effects.enters_done,
            "cancelled": effects.enters_cancelled,
            "pace": pace,
        },
    )
    remember_written(conn, ctx.tenant_id, row, compiled_type.version)
    ticket = record_dict(row)
    if category is Category.WAITING:
        if ticket["estimated_wait_minutes"] is None:
            ticket["estimated_wait_minutes"] = minutes_for(ticket["position"], pace)
    else:
        ticket["estimated_wait_minutes"] = None  # not in line: no live estimate (its original is kept)
    return ticket


def event_data(ticket: dict[str, Any] | Record, **extra: Any) -> dict[str, Any]:
    """The display-safe summary carried by ticket events (no customer, custom data or employee)."""
    data = {
        "display_code": ticket["display_code"],
        "number": ticket["number"],
        "current_state": ticket["current_state"],
        "state_category": ticket["state_category"],
        "type_definition_id": str(ticket["type_definition_id"]),
        "version": ticket["version"],
    }
    data.update(extra)
    return data


async def annotated(conn: Connection, ctx: TenantContext, row: Record | dict[str, Any]) -> dict[str, Any]:
    """One ticket with its live estimate."""
    return (await Estimator(conn, ctx.tenant_id).annotate([row]))[0]


async def get_ticket(conn: Connection, ctx: TenantContext, ticket_id: uuid.UUID) -> dict[str, Any]:
    row = await repository.get_ticket(conn, ctx.tenant_id, ticket_id)
    if row is None:
        raise not_found("ticket")
    return await annotated(conn, ctx, row)


async def read_ticket(
    pool: Pool, ctx: TenantContext, ticket_id: uuid.UUID, batching: ReadBatching
) -> dict[str, Any]:
    """GET /v1/tickets/{id}: as get_ticket, on a connection of its own or in a statement shared with other
    reads of the tenant arriving together (tickets/reads.py)."""

    async def fetch(ticket_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
        async with acquire(pool, transaction=False) as conn:
            if len(ticket_ids) == 1:
                row = await repository.get_ticket(conn, ctx.tenant_id, ticket_ids[0])
                rows = [] if row is None else [row]
            else:
                rows = await repository.get_tickets(conn, ctx.tenant_id, ticket_ids)
            tickets = await Estimator(conn, ctx.tenant_id).annotate(rows)
        return {ticket["id"]: ticket for ticket in tickets}

    ticket = await batching.read(ctx.tenant_id, ticket_id, fetch)
    if ticket is None:
        raise not_found("ticket")
    return ticket


async def _locked_machine(
    conn: Connection, ctx: TenantContext, ticket_id: uuid.UUID
) -> tuple[Record, Machine]:
    locked = await repository.lock_ticket_with_type(conn, ctx.tenant_id, ticket_id)
    if locked is None:
        raise not_found("ticket")
    machine = _compile(
        locked["type_definition_id"],
        locked["type_version"],
        locked["fsm_schema"],
        locked["custom_fields_schema"],
    ).machine
    assert machine is not None  # ticket types always have a machine
    return locked, machine


# A change that reads without locking retries when another change came first; this bounds the retries.
CHANGE_ATTEMPTS = 50


class Superseded(Exception):
    """Another change reached the ticket (or its type) between reading it and writing."""


# What this process last committed per ticket: (tenant, ticket) -> (version, state, category, type, type
# version). A change starts from it instead of reading the ticket when it has it; the write happens only if
# the ticket is still at that version, so an entry another process (or the sweeper) made stale costs a
# missed write and then the read, never a wrong change: versions only grow, every change of the state
# raises it, and only committed writes are remembered. Bounded (about 1.7 MB); the oldest entries go first,
# which only costs their next change a read.
LAST_WRITTEN_MAX = 4096
_last_written: dict[tuple[uuid.UUID, uuid.UUID], tuple[int, str, str, uuid.UUID, int]] = {}


def forget_last_written() -> None:
    _last_written.clear()


def remember_written(conn: Connection, tenant_id: uuid.UUID, row: Any, type_version: int) -> None:
    """Remember a ticket as a change left it, once that change has committed (autocommit only: a transaction
    could still roll back, and a version remembered from it could later name another state)."""
    if conn.is_in_transaction():
        return
    key = (tenant_id, row["id"])
    _last_written.pop(key, None)
    if len(_last_written) >= LAST_WRITTEN_MAX:
        del _last_written[next(iter(_last_written))]
    _last_written[key] = (
        row["version"],
        sys.intern(row["current_state"]),  # a type's few states, shared by every entry
        sys.intern(row["state_category"]),
        row["type_definition_id"],
        type_version,
    )


async def _change_as_last_written(
    conn: Connection,
    ctx: TenantContext,
    ticket_id: uuid.UUID,
    choose: Callable[[Machine, str], str],
    employee_id: uuid.UUID | None,
    notes: str | None,
    counter: str | None = None,
) -> dict[str, Any] | None:
    """The change applied to the ticket as this process last wrote it, in one statement; None when this
    process has not written it, or it changed since, or the change would be refused from that state (the
    caller then reads the ticket: a refusal must come from what is stored, not from what was remembered)."""
    entry = _last_written.pop((ctx.tenant_id, ticket_id), None)
    if entry is None:
        return None
    version, state, category, type_id, type_version = entry
    found = cached(type_id, type_version)
    machine = found.machine if found is not None else None
    if machine is None:
        return None
    current = {
        "id": ticket_id,
        "current_state": state,
        "state_category": category,
        "version": version,
        "type_version": type_version,
    }
    try:
        return await _apply(conn, ctx, current, machine, choose(machine, state), employee_id, notes, counter)
    except (Superseded, InvalidTransition, Conflict):
        # Refused from memory (it may be stale: another process moved the ticket), or overtaken: the
        # change starts again from the database, which decides.
        return None


async def _machine_for(conn: Connection, type_id: uuid.UUID, version: int) -> Machine | None:
    """The state machine of a ticket type at `version` (None: the type has changed since; read again)."""
    found = cached(type_id, version)
    if found is None:
        row = await repository.type_schemas(conn, type_id)
        if row is None or row["version"] != version:
            return None
        found = _compile(type_id, version, row["fsm_schema"], row["custom_fields_schema"])
    assert found.machine is not None  # ticket types always have a machine
    return found.machine


async def transition_ticket(
    conn: Connection,
    ctx: TenantContext,
    ticket_id: uuid.UUID,
    request: TransitionRequest,
    if_match: str | None = None,
) -> dict[str, Any]:
    """Apply a named transition (see _change)."""
    await check_employee(conn, ctx.tenant_id, request.employee_id)
    return await _change(
        conn,
        ctx,
        ticket_id,
        lambda _, __: request.transition,
        request.employee_id,
        request.notes,
        if_match,
        request.counter,
    )


async def cancel_ticket(
    conn: Connection, ctx: TenantContext, ticket_id: uuid.UUID, if_match: str | None = None
) -> dict[str, Any]:
    """Apply the transition from the current state into a cancelled-category state (see _change)."""

    def cancel(machine: Machine, state: str) -> str:
        transition = machine.cancel_transition(state)
        if transition is None:
            raise no_way(machine, state, "to a cancelled state")
        return transition

    return await _change(conn, ctx, ticket_id, cancel, None, None, if_match)


LEFT_NOTE = "left the line (the customer's page)"


async def leave_line(conn: Connection, ctx: TenantContext, ticket_id: uuid.UUID) -> dict[str, Any]:
    """The customer leaves the line from their own page: the cancel transition, only while the ticket is
    waiting (once called, staff decide). A call-next at the same instant wins or loses as a whole: the
    write checks the version read."""

    def leave(machine: Machine, state: str) -> str:
        if machine.category(state) is not Category.WAITING:
            raise Conflict(
                "only a ticket still in line can leave it; ask at the counter",
                {"current_state": state, "state_category": machine.category(state).value},
            )
        transition = machine.cancel_transition(state)
        if transition is None:
            raise Conflict("this kind of ticket cannot leave the line here; ask at the counter")
        return transition

    return await _change(conn, ctx, ticket_id, leave, None, LEFT_NOTE, None)


async def _change(
    conn: Connection,
    ctx: TenantContext,
    ticket_id: uuid.UUID,
    choose: Callable[[Machine, str], str],
    employee_id: uuid.UUID | None,
    notes: str | None,
    if_match: str | None,
    counter: str | None = None,
) -> dict[str, Any]:
    """Read the ticket (no lock), apply the transition `choose` picks for the state read, and write only if
    the ticket is still at the version read — one statement; when another change came first, read again and
    retry. Two round trips without a transaction (the routes use StatementConn), and the row is locked only
    for the instant of its update."""
    if if_match is None:
        changed = await _change_as_last_written(conn, ctx, ticket_id, choose, employee_id, notes, counter)
        if changed is not None:
            return changed
    for _ in range(CHANGE_ATTEMPTS):
        current = await repository.current_ticket(conn, ctx.tenant_id, ticket_id)
        if current is None:
            raise not_found("ticket")
        check_version(if_match, current["version"])
        machine = await _machine_for(conn, current["type_definition_id"], current["type_version"])
        if machine is None:
            continue
        transition = choose(machine, current["current_state"])
        try:
            return await _apply(conn, ctx, current, machine, transition, employee_id, notes, counter)
        except Superseded:
            continue
    raise Conflict("the ticket kept changing while this change was being applied; retry")


async def _apply(
    conn: Connection,
    ctx: TenantContext,
    locked: Record | dict[str, Any],
    machine: Machine,
    transition: str,
    employee_id: uuid.UUID | None,
    notes: str | None,
    counter: str | None = None,
) -> dict[str, Any]:
    """Apply `transition` to the ticket as read in `locked` (locked by the caller, or checked by version)."""
    current = locked["current_state"]
    try:
        new_state = machine.apply(current, transition)
    except TransitionRejected as exc:
        raise InvalidTransition(
            str(exc),
            {
                "current_state": exc.current_state,
                "transition": exc.transition,
                "valid_transitions": exc.valid_transitions,
            },
        ) from None
    previous_category = Category(locked["state_category"])
    category = machine.category(new_state)
    row = await repository.apply_transition(
        conn,
        tenant_id=ctx.tenant_id,
        ticket_id=locked["id"],
        history_id=new_id(),
        previous_state=current,
        new_state=new_state,
        category=category.value,
        transition=transition,
        effects=effects_of(previous_category, category),
        assign_employee_id=employee_id,
        actor_employee_id=employee_id or ctx.principal.employee_id,
        notes=notes,
        counter=counter,
        expected_version=locked["version"],
        type_version=locked["type_version"],
    )
    if row is None:
        raise Superseded
    remember_written(conn, ctx.tenant_id, row, locked["type_version"])
    if conn.is_in_transaction():
        return await annotated(conn, ctx, row)
    # Without a transaction the change has committed already: an estimate that cannot be computed now must
    # not turn it into an error, or the client would retry a change that stands.
    try:
        return await annotated(conn, ctx, row)
    except Exception:
        log.warning("estimate_after_commit_failed", ticket_id=str(row["id"]), exc_info=True)
        return {**dict(row), "estimated_wait_minutes": None}


def no_way(machine: Machine, state: str, where: str) -> InvalidTransition:
    """400 invalid_transition when no transition leads from `state` where an operation needs to go."""
    return InvalidTransition(
        f"no transition leads from {state!r} {where}",
        {"current_state": state, "transition": None, "valid_transitions": machine.transitions_from(state)},
    )


async def update_ticket(
    conn: Connection, ctx: TenantContext, ticket_id: uuid.UUID, body: TicketUpdate
) -> dict[str, Any]:
    changes = body.changes()
    locked, _ = await _locked_machine(conn, ctx, ticket_id)
    if not changes:
        return await get_ticket(conn, ctx, ticket_id)
    if "custom_data" in changes:
        check_custom_data(
            _compile(
                locked["type_definition_id"],
                locked["type_version"],
                locked["fsm_schema"],
                locked["custom_fields_schema"],
            ),
            changes["custom_data"],
        )
    row = await repository.update_ticket(conn, ctx.tenant_id, ticket_id, changes)
    return await annotated(conn, ctx, row)


async def list_tickets(
    conn: Connection,
    ctx: TenantContext,
    filters: dict[str, Any],
    params: PageParams,
    fields: tuple[str, ...] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """The page (with `fields`, only those, in their order) and the total."""
    rows, total = await repository.list_tickets(conn, ctx.tenant_id, filters, params)
    return await Estimator(conn, ctx.tenant_id).annotate(rows, fields), total


async def count_tickets(conn: Connection, ctx: TenantContext, filters: dict[str, Any]) -> int:
    return await repository.count_tickets(conn, ctx.tenant_id, filters)


async def ticket_history(conn: Connection, ctx: TenantContext, ticket_id: uuid.UUID) -> list[Record]:
    if not await repository.ticket_exists(conn, ctx.tenant_id, ticket_id):
        raise not_found("ticket")
    return await repository.history(conn, ctx.tenant_id, ticket_id)


async def queue_tickets(
    conn: Connection,
    ctx: TenantContext,
    queue_id: uuid.UUID,
    params: PageParams,
    fields: tuple[str, ...] | None = None,
) -> tuple[list[dict[str, Any]], int, bool]:
    """The page (with `fields`, only those, in their order), the total, and whether the queue shows wait
    times."""
    queue = await queues.get(conn, ctx.tenant_id, queue_id)
    if queue is None:
        raise not_found("queue")
    rows, total = await repository.queue_tickets(conn, ctx.tenant_id, queue_id, params)
    estimator = Estimator(conn, ctx.tenant_id)
    estimator.remember_queue(queue)
    return await estimator.annotate(rows, fields), total, queue["show_wait_time"]


async def employee_tickets(
    conn: Connection,
    ctx: TenantContext,
    employee_id: uuid.UUID,
    current_state: str | None,
    state_category: Category | None,
    params: PageParams,
) -> tuple[list[dict[str, Any]], int]:
    found = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM employees WHERE tenant_id = $1 AND id = $2)", ctx.tenant_id, employee_id
    )
    if not found:
        raise not_found("employee")
    filters: dict[str, Any] = {"employee_id": employee_id, "current_state": current_state}
    if state_category is not None:
        filters["state_category"] = state_category
    return await list_tickets(conn, ctx, {k: v for k, v in filters.items() if v is not None}, params)
