"""Who may see and change which accounts: platform admins all of them, account admins their own."""

from __future__ import annotations

import uuid

from virtualq.accounts import repository
from virtualq.accounts.schemas import AccountCreate, AccountUpdate
from virtualq.auth.principal import Principal
from virtualq.db import Connection, Record
from virtualq.errors import Forbidden, not_found
from virtualq.kit.ids import new_id
from virtualq.kit.pagination import PageParams
from virtualq.kit.schemas import CommonFilters
from virtualq.kit.sql import Where


async def create_account(conn: Connection, principal: Principal, body: AccountCreate) -> Record:
    """The route lets only platform admins here (its dependency: the caller is refused before the body)."""
    return await repository.insert(conn, new_id(), body.model_dump())


async def get_account(conn: Connection, principal: Principal, account_id: uuid.UUID) -> Record:
    row = await repository.get(conn, account_id) if principal.covers_account(account_id) else None
    if row is None:
        raise not_found("account")
    return row


async def list_accounts(
    conn: Connection, principal: Principal, filters: CommonFilters, params: PageParams
) -> tuple[list[Record], int]:
    where = Where()
    if not principal.is_platform:
        where.add("id = {}", principal.account_id)
    where.add_if("is_active = {}", filters.is_active)
    where.add_if("created_at > {}", filters.created_after)
    where.add_if("created_at < {}", filters.created_before)
    return await repository.list_page(conn, where, params)


async def update_account(
    conn: Connection, principal: Principal, account_id: uuid.UUID, body: AccountUpdate
) -> Record:
    current = await get_account(conn, principal, account_id)
    changes = body.changes()
    if "is_active" in changes and not principal.is_platform:
        raise Forbidden("only platform admins activate or deactivate accounts")
    if not changes:
        return current
    row = await repository.update(conn, account_id, changes)
    assert row is not None
    return row


async def deactivate_account(conn: Connection, principal: Principal, account_id: uuid.UUID) -> None:
    """The route lets only platform admins here (its dependency)."""
    await get_account(conn, principal, account_id)
    await repository.update(conn, account_id, {"is_active": False})
