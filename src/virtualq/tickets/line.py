"""Queue operations on tickets (PRODUCT §4): call next, reorder, forward, assign, unassign."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from typing import Any

from virtualq.auth.principal import TenantContext
from virtualq.db import Connection, Record
from virtualq.employees import repository as employees
from virtualq.errors import (
    Conflict,
    Forbidden,
    InvalidTransition,
    NotFound,
    QueueDisabled,
    QueueEmpty,
    TypeNotAllowed,
    ValidationFailed,
    not_found,
)
from virtualq.fsm import Category, Machine
from virtualq.kit.ids import new_id
from virtualq.queues import repository as queues
from virtualq.queues.estimates import forget_queue
from virtualq.tickets import line_repository as line
from virtualq.tickets import repository as tickets
from virtualq.tickets.rules import Effects, effects_of
from virtualq.tickets.schemas import CallNextRequest, ForwardRequest, RecallRequest, ReorderRequest
from virtualq.tickets.service import (
    _apply,
    _compile,
    _machine_for,
    annotated,
    check_employee,
    no_way,
    remember_written,
)

# Call next never cancels by default: it prefers service, then ready, then done (docs/decisions.md).
CALL_TARGETS = (Category.IN_SERVICE, Category.READY, Category.DONE)


@dataclass(frozen=True)
class CallPlan:
    """For each (type, type version, waiting state) met in a queue: the transition call-next applies (the
    first declared one into service, else ready, else done) and what it leads to. Learnt per process as
    tickets are called; a ticket the plan does not cover yet is looked up and the call retried."""

    entries: tuple[tuple[uuid.UUID, int, str, str, str, str, Effects], ...] = ()

    @functools.cached_property
    def columns(self) -> list[list[Any]]:
        """The plan as the parallel arrays line_repository.call_first_waiting unnests (worked out once per
        plan: a plan changes only by being replaced)."""
        rows = self.entries
        return [
            [e[0] for e in rows],
            [e[1] for e in rows],
            [e[2] for e in rows],
            [e[3] for e in rows],
            [e[4] for e in rows],
            [e[5] for e in rows],
            [e[6].leaves_waiting for e in rows],
            [e[6].enters_ready for e in rows],
            [e[6].enters_done for e in rows],
            [e[6].enters_cancelled for e in rows],
        ]

    def learn(self, type_id: uuid.UUID, version: int, state: str, machine: Machine, via: str) -> CallPlan:
        target = machine.apply(state, via)
        category = machine.category(target)
        entry = (type_id, version, state, via, target, category.value, effects_of(Category.WAITING, category))
        kept = [e for e in self.entries if e[:3] != entry[:3]][-(MAX_PLAN_ENTRIES - 1) :]  # oldest go first
        return CallPlan((*kept, entry))


MAX_PLAN_ENTRIES = 64
MAX_PLANS = 10_000
CALL_ATTEMPTS = 10
_plans: dict[tuple[uuid.UUID, uuid.UUID], CallPlan] = {}


def forget_plans() -> None:
    _plans.clear()


async def call_next(
    conn: Connection, ctx: TenantContext, queue_id: uuid.UUID, body: CallNextRequest
) -> dict[str, Any]:
    """Take the first waiting ticket nobody else is taking, move it out of waiting, assign the employee.

    One statement without a transaction (tickets/router uses StatementConn) once this process knows the
    transition for the first ticket's type and state; an explicit `transition` takes the locking path."""
    await check_employee(conn, ctx.tenant_id, body.employee_id)
    if body.transition is not None:
        return await _call_named(conn, ctx, queue_id, body)
    employee_id = body.employee_id or ctx.principal.employee_id
    key = (ctx.tenant_id, queue_id)
    if key not in _plans:
        # This process's first call into the queue: learn the first ticket's transition from a look that
        # locks nothing. The call statement would lock it and then leave it (its plan has no entry yet), and
        # a counter calling meanwhile would skip it and take the one behind it: out of line order.
        head = await line.peek_first_waiting(conn, ctx.tenant_id, queue_id)
        if head is not None:
            await _learn(
                conn, key, head["type_definition_id"], head["type_version"], head["current_state"], head["id"]
            )
        elif len(_plans) < MAX_PLANS:
            _plans[key] = CallPlan()  # nobody waits (or no such queue): no look again on the next call
    for _ in range(CALL_ATTEMPTS):
        plan = _plans.get(key, CallPlan())
        row = await line.call_first_waiting(
            conn,
            ctx.tenant_id,
            queue_id,
            plan,
            employee_id=employee_id,
            history_id=new_id(),
            notes=body.notes,
            counter=body.counter,
        )
        if not row["queue_found"]:
            raise not_found("queue")
        if row["candidate_id"] is None:
            raise QueueEmpty("nobody is waiting in this queue", {"queue_id": str(queue_id)})
        if row["id"] is not None:
            remember_written(conn, ctx.tenant_id, row, row["candidate_type_version"])
            if tickets.first_departure(row):
                forget_queue(ctx.tenant_id, queue_id)  # a departure changes the line's pace
            called = dict(row.items())
            for name in line.CALL_FACTS:
                del called[name]
            return await annotated(conn, ctx, called)
        # The plan has no entry for this ticket's type version and state yet: learn it, then call again.
        await _learn(
            conn,
            key,
            row["candidate_type"],
            row["candidate_type_version"],
            row["candidate_state"],
            row["candidate_id"],
        )
    raise Conflict("the line kept changing while calling the next ticket; retry")


async def call_next_for_employee(
    conn: Connection, ctx: TenantContext, employee_id: uuid.UUID, body: CallNextRequest
) -> dict[str, Any]:
    """Call-next across the queues the employee serves (`PUT /v1/employees/{id}/queues`): the waiting ticket
    that comes first in any of them (the earliest to join, unless moved), attributed to the employee. A
    queue that gives nothing (its waiting tickets taken by another counter, or held by another change at
    this instant, as a queue's call-next skips them) or whose first ticket cannot be called is passed over
    for the next; the refusal is the answer only when no queue had a ticket to call."""
    if ctx.principal.employee_id is not None and ctx.principal.employee_id != employee_id:
        raise Forbidden("this key belongs to another employee: it calls for that employee only")
    if body.employee_id is not None and body.employee_id != employee_id:
        raise ValidationFailed("employee_id in the body disagrees with the path", {"field": "employee_id"})
    employee = await employees.get(conn, ctx.tenant_id, employee_id)
    if employee is None:
        raise not_found("employee")
    if not employee["is_active"]:
        raise ValidationFailed("the employee is deactivated", {"field": "employee_id"})
    queue_ids = list(employee["queue_ids"])
    if not queue_ids:
        raise ValidationFailed(
            "the employee serves no queue: bind some with PUT /v1/employees/{id}/queues",
            {"field": "queue_ids"},
        )
    call = body.model_copy(update={"employee_id": employee_id})
    candidates, refused = list(queue_ids), None
    while candidates:  # each pass calls, or drops a queue
        queue_id = await line.first_waiting_queue(conn, ctx.tenant_id, candidates)
        if queue_id is None:
            break
        try:
            return await call_next(conn, ctx, queue_id, call)
        except QueueEmpty:
            candidates.remove(queue_id)
        except InvalidTransition as exc:
            refused = refused or exc
            candidates.remove(queue_id)
    if refused is not None:
        raise refused
    raise QueueEmpty(
        "nobody is waiting in the employee's queues", {"queue_ids": [str(queue) for queue in queue_ids]}
    )


async def _learn(
    conn: Connection,
    key: tuple[uuid.UUID, uuid.UUID],
    type_id: uuid.UUID,
    version: int,
    state: str,
    ticket_id: uuid.UUID,
) -> None:
    """Add to the queue's plan the transition call-next applies to a ticket of this type version and state
    (nothing when that version is gone: the next attempt sees the new one)."""
    machine = await _machine_for(conn, type_id, version)
    if machine is None:
        return
    via = next(
        (t for t in (machine.first_transition_into(state, [c]) for c in CALL_TARGETS) if t is not None),
        None,
    )
    if via is None:  # the refusal names the ticket at the head of the line that cannot be called
        refused = no_way(machine, state, "out of the waiting line")
        refused.details["ticket_id"] = str(ticket_id)
        raise refused
    if len(_plans) >= MAX_PLANS:
        _plans.clear()
    # The plan as it is now (another request may have learnt an entry meanwhile), plus this entry.
    _plans[key] = _plans.get(key, CallPlan()).learn(type_id, version, state, machine, via)


async def _call_named(
    conn: Connection, ctx: TenantContext, queue_id: uuid.UUID, body: CallNextRequest
) -> dict[str, Any]:
    """Call-next with an explicit transition: lock the first waiting ticket, apply that transition."""
    if not conn.is_in_transaction():
        async with conn.transaction():
            return await _call_named(conn, ctx, queue_id, body)
    if await queues.get(conn, ctx.tenant_id, queue_id) is None:
        raise not_found("queue")
    locked = await line.lock_first_waiting(conn, ctx.tenant_id, queue_id)
    if locked is None:
        raise QueueEmpty("nobody is waiting in this queue", {"queue_id": str(queue_id)})
    machine = _compile(
        locked["type_definition_id"],
        locked["type_version"],
        locked["fsm_schema"],
        locked["custom_fields_schema"],
    ).machine
    assert machine is not None
    assert body.transition is not None
    employee_id = body.employee_id or ctx.principal.employee_id
    try:
        return await _apply(
            conn, ctx, locked, machine, body.transition, employee_id, body.notes, body.counter
        )
    except InvalidTransition as refused:  # name the ticket at the head of the line that was refused
        refused.details["ticket_id"] = str(locked["id"])
        raise


async def _locked(conn: Connection, ctx: TenantContext, ticket_id: uuid.UUID) -> Record:
    locked = await tickets.lock_ticket_with_type(conn, ctx.tenant_id, ticket_id)
    if locked is None:
        raise not_found("ticket")
    return locked


async def _key_for(
    conn: Connection, ctx: TenantContext, queue_id: uuid.UUID, ticket_id: uuid.UUID, position: int | None
) -> Any:
    try:
        return await line.key_for_position(conn, ctx.tenant_id, queue_id, ticket_id, position)
    except OverflowError:
        raise Conflict("this line has been reordered too finely; try again after it moves on") from None


async def reorder(
    conn: Connection, ctx: TenantContext, ticket_id: uuid.UUID, body: ReorderRequest
) -> dict[str, Any]:
    locked = await _locked(conn, ctx, ticket_id)
    if locked["state_category"] != Category.WAITING:
        raise ValidationFailed(
            "only a waiting ticket has a place in line",
            {"field": "position", "current_state": locked["current_state"]},
        )
    queue_id = locked["queue_id"]
    await line.lock_queue(conn, ctx.tenant_id, queue_id)
    previous = await line.waiting_position(conn, ctx.tenant_id, queue_id, locked["sort_key"])
    key = await _key_for(conn, ctx, queue_id, ticket_id, body.position)
    extra = {"previous_position": previous, "reason": body.reason}
    row = await line.move(conn, ctx.tenant_id, ticket_id, queue_id, key, "ticket.reordered", extra)
    ticket = await annotated(conn, ctx, row)
    ticket["previous_position"] = previous
    return ticket


async def forward(
    conn: Connection, ctx: TenantContext, ticket_id: uuid.UUID, body: ForwardRequest
) -> dict[str, Any]:
    locked = await _locked(conn, ctx, ticket_id)
    if locked["queue_id"] == body.target_queue_id:
        raise ValidationFailed("the ticket is already in this queue", {"field": "target_queue_id"})
    if Category(locked["state_category"]).is_terminal:
        raise ValidationFailed(
            "a finished or cancelled ticket cannot be forwarded",
            {"field": "ticket_id", "current_state": locked["current_state"]},
        )
    target = await line.lock_queue(conn, ctx.tenant_id, body.target_queue_id)
    if target is None:
        raise NotFound("queue not found", {"field": "target_queue_id"})
    if not target["is_active"]:
        raise QueueDisabled(
            "the target queue is disabled and accepts no forwards", {"queue_id": str(target["id"])}
        )
    allowed = target["allowed_type_definition_ids"]
    if allowed and locked["type_definition_id"] not in allowed:
        raise TypeNotAllowed(
            "the target queue does not accept tickets of this type",
            {"queue_id": str(target["id"]), "type_definition_id": str(locked["type_definition_id"])},
        )
    position = body.position if locked["state_category"] == Category.WAITING else None
    key = await _key_for(conn, ctx, target["id"], ticket_id, position)
    extra = {
        "previous_queue_id": str(locked["queue_id"]),
        "queue_id": str(target["id"]),
        "reason": body.reason,
    }
    row = await line.move(conn, ctx.tenant_id, ticket_id, target["id"], key, "ticket.forwarded", extra)
    ticket = await annotated(conn, ctx, row)
    ticket["previous_queue_id"] = locked["queue_id"]
    return ticket


async def assign(
    conn: Connection, ctx: TenantContext, ticket_id: uuid.UUID, employee_id: uuid.UUID | None
) -> dict[str, Any]:
    """Assign `employee_id`, or unassign with None."""
    locked = await _locked(conn, ctx, ticket_id)
    if employee_id is not None:
        await check_employee(conn, ctx.tenant_id, employee_id)
    row = await line.set_employee(conn, ctx.tenant_id, ticket_id, employee_id, locked["employee_id"])
    return await annotated(conn, ctx, row)


# Who has been called and is still expected at a counter.
CALLED = (Category.IN_SERVICE, Category.READY)


async def recall(
    conn: Connection, ctx: TenantContext, ticket_id: uuid.UUID, body: RecallRequest
) -> dict[str, Any]:
    """Call a called ticket again (the customer did not come): ticket.recalled tells the wall to announce it
    again and the customer's page to say so. The state does not change."""
    # Read before locking: a lock on a waiting ticket would make a call-next at that instant pass it over
    # (SKIP LOCKED) for a recall that is refused anyway; checked again once locked, as it may have moved.
    current = await tickets.get_ticket(conn, ctx.tenant_id, ticket_id)
    if current is None:
        raise not_found("ticket")
    _check_called(current)
    _check_called(await _locked(conn, ctx, ticket_id))
    row = await line.recall(conn, ctx.tenant_id, ticket_id, body.counter, ctx.principal.employee_id)
    return await annotated(conn, ctx, row)


def _check_called(ticket: Record) -> None:
    if Category(ticket["state_category"]) not in CALLED:
        raise Conflict(
            "only a called ticket (in service or ready) can be recalled",
            {"current_state": ticket["current_state"], "state_category": ticket["state_category"]},
        )
