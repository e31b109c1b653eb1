from __future__ import annotations

import uuid

import asyncpg

from virtualq.auth.principal import TenantContext
from virtualq.db import Connection, Record
from virtualq.employees import repository
from virtualq.employees.schemas import EmployeeCreate, EmployeeUpdate
from virtualq.errors import Conflict, ValidationFailed, not_found
from virtualq.kit.ids import new_id
from virtualq.kit.pagination import PageParams
from virtualq.kit.schemas import CommonFilters

EMAIL_TAKEN = "an active employee of this tenant already has this email"


async def create_employee(conn: Connection, ctx: TenantContext, body: EmployeeCreate) -> Record:
    if body.tenant_id is not None and body.tenant_id != ctx.tenant_id:
        raise ValidationFailed(
            "tenant_id in the body disagrees with the tenant context", {"field": "tenant_id"}
        )
    try:
        async with conn.transaction():  # a savepoint, so the request transaction survives the violation
            return await repository.insert(
                conn, ctx.tenant_id, new_id(), body.model_dump(exclude={"tenant_id"})
            )
    except asyncpg.UniqueViolationError:
        raise Conflict(EMAIL_TAKEN, {"field": "email"}) from None


async def get_employee(conn: Connection, ctx: TenantContext, employee_id: uuid.UUID) -> Record:
    row = await repository.get(conn, ctx.tenant_id, employee_id)
    if row is None:
        raise not_found("employee")
    return row


async def list_employees(
    conn: Connection, ctx: TenantContext, filters: CommonFilters, params: PageParams
) -> tuple[list[Record], int]:
    return await repository.list_page(conn, ctx.tenant_id, filters, params)


async def update_employee(
    conn: Connection, ctx: TenantContext, employee_id: uuid.UUID, body: EmployeeUpdate
) -> Record:
    current = await get_employee(conn, ctx, employee_id)
    changes = body.changes()
    if not changes:
        return current
    try:
        async with conn.transaction():
            row = await repository.update(conn, ctx.tenant_id, employee_id, changes)
    except asyncpg.UniqueViolationError:
        raise Conflict(EMAIL_TAKEN, {"field": "email"}) from None
    assert row is not None
    return row


async def deactivate_employee(conn: Connection, ctx: TenantContext, employee_id: uuid.UUID) -> None:
    await get_employee(conn, ctx, employee_id)
    await repository.update(conn, ctx.tenant_id, employee_id, {"is_active": False})


async def set_queues(
    conn: Connection, ctx: TenantContext, employee_id: uuid.UUID, queue_ids: list[uuid.UUID]
) -> Record:
    await get_employee(conn, ctx, employee_id)
    wanted = list(dict.fromkeys(queue_ids))
    found = await conn.fetchval(
        "SELECT count(*) FROM queues WHERE tenant_id = $1 AND id = ANY($2::uuid[])", ctx.tenant_id, wanted
    )
    if found != len(wanted):
        raise ValidationFailed("queue_ids must name queues of this tenant", {"field": "queue_ids"})
    row = await repository.update(conn, ctx.tenant_id, employee_id, {"queue_ids": wanted})
    if row is None:
        raise not_found("employee")
    return row
