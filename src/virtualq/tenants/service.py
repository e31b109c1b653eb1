from __future__ import annotations

import uuid

from virtualq.auth.principal import Principal, Scope
from virtualq.db import Connection, Record
from virtualq.errors import Forbidden, ValidationFailed, not_found
from virtualq.kit.ids import new_id
from virtualq.kit.pagination import PageParams
from virtualq.kit.schemas import CommonFilters
from virtualq.kit.sql import Where
from virtualq.tenants import repository
from virtualq.tenants.schemas import TenantCreate, TenantUpdate


async def _check_timezone(conn: Connection, name: str) -> None:
    if not await repository.knows_timezone(conn, name):
        raise ValidationFailed(
            f"timezone {name!r} is not known to the database; use an IANA name such as 'Europe/Tallinn'",
            {"field": "timezone"},
        )


def _visible(principal: Principal, row: Record) -> bool:
    return principal.covers_tenant(row["id"], row["account_id"])


async def create_tenant(conn: Connection, principal: Principal, body: TenantCreate) -> Record:
    """The route keeps tenant-scoped keys out (its dependency: the caller is refused before the body)."""
    account_id = body.account_id or principal.account_id
    if account_id is None:
        raise ValidationFailed("account_id is required", {"field": "account_id"})
    if not principal.covers_account(account_id):
        raise Forbidden("this key may not create tenants in that account")
    active = await repository.account_is_active(conn, account_id)
    if active is None:
        raise ValidationFailed("account_id names no account", {"field": "account_id"})
    if not active:
        raise ValidationFailed("the account is deactivated", {"field": "account_id"})
    await _check_timezone(conn, body.timezone)
    return await repository.insert(conn, new_id(), account_id, body.model_dump(exclude={"account_id"}))


async def get_tenant(conn: Connection, principal: Principal, tenant_id: uuid.UUID) -> Record:
    row = await repository.get(conn, tenant_id)
    if row is None or not _visible(principal, row):
        raise not_found("tenant")
    return row


async def list_tenants(
    conn: Connection,
    principal: Principal,
    account_id: uuid.UUID | None,
    filters: CommonFilters,
    params: PageParams,
) -> tuple[list[Record], int]:
    where = Where()
    if principal.scope is Scope.TENANT:
        where.add("id = {}", principal.tenant_id)
    elif principal.scope is Scope.ACCOUNT:
        where.add("account_id = {}", principal.account_id)
    where.add_if("account_id = {}", account_id)
    where.add_if("is_active = {}", filters.is_active)
    where.add_if("created_at > {}", filters.created_after)
    where.add_if("created_at < {}", filters.created_before)
    return await repository.list_page(conn, where, params)


async def list_account_tenants(
    conn: Connection, principal: Principal, account_id: uuid.UUID, filters: CommonFilters, params: PageParams
) -> tuple[list[Record], int]:
    exists = await repository.account_is_active(conn, account_id) is not None
    if not exists or not principal.covers_account(account_id):
        raise not_found("account")
    return await list_tenants(conn, principal, account_id, filters, params)


async def update_tenant(
    conn: Connection, principal: Principal, tenant_id: uuid.UUID, body: TenantUpdate
) -> Record:
    current = await get_tenant(conn, principal, tenant_id)
    changes = body.changes()
    if "is_active" in changes and principal.scope is Scope.TENANT:
        raise Forbidden("a tenant-scoped key cannot activate or deactivate its tenant")
    if not changes:
        return current
    if "timezone" in changes:
        await _check_timezone(conn, changes["timezone"])
    row = await repository.update(conn, tenant_id, changes)
    assert row is not None
    return row


async def deactivate_tenant(conn: Connection, principal: Principal, tenant_id: uuid.UUID) -> None:
    """The route keeps tenant-scoped keys out (its dependency)."""
    await get_tenant(conn, principal, tenant_id)
    await repository.update(conn, tenant_id, {"is_active": False})
