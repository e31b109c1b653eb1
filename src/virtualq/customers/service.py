"""Customers are account data: a key sees the customers of its own account (platform keys: all)."""

from __future__ import annotations

import uuid

from virtualq.auth.principal import Principal
from virtualq.customers import repository
from virtualq.customers.schemas import CustomerCreate, CustomerUpdate
from virtualq.db import Connection, Record
from virtualq.errors import Conflict, Forbidden, ValidationFailed, not_found
from virtualq.kit.ids import new_id
from virtualq.kit.pagination import PageParams
from virtualq.kit.schemas import CommonFilters
from virtualq.kit.sql import Where


def _account_scope(principal: Principal) -> uuid.UUID | None:
    """The account a key is confined to; None for platform keys."""
    return None if principal.is_platform else principal.account_id


async def create_customer(conn: Connection, principal: Principal, body: CustomerCreate) -> Record:
    account_id = body.account_id or principal.account_id
    if account_id is None:
        raise ValidationFailed(
            "account_id is required in the body: customers belong to an account, and a platform key has none",
            {"field": "account_id"},
        )
    if not principal.covers_account(account_id):
        raise Forbidden("this key may not create customers in that account")
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM accounts WHERE id = $1)", account_id):
        raise ValidationFailed("account_id names no account", {"field": "account_id"})
    fields = body.model_dump(exclude={"id", "account_id"})
    row = await repository.insert(conn, body.id or new_id(), account_id, fields)
    if row is None:
        raise Conflict("a customer with this id already exists", {"field": "id"})
    return row


async def get_customer(conn: Connection, principal: Principal, customer_id: uuid.UUID) -> Record:
    row = await repository.get(conn, _account_scope(principal), customer_id)
    if row is None:
        raise not_found("customer")
    return row


async def list_customers(
    conn: Connection,
    principal: Principal,
    account_id: uuid.UUID | None,
    filters: CommonFilters,
    params: PageParams,
) -> tuple[list[Record], int]:
    if account_id is not None and not principal.covers_account(account_id):
        raise Forbidden("this key may not list customers of that account")
    where = Where()
    where.add_if("account_id = {}", _account_scope(principal))
    where.add_if("account_id = {}", account_id)
    where.add_if("is_active = {}", filters.is_active)
    where.add_if("created_at > {}", filters.created_after)
    where.add_if("created_at < {}", filters.created_before)
    return await repository.list_page(conn, where, params)


async def update_customer(
    conn: Connection, principal: Principal, customer_id: uuid.UUID, body: CustomerUpdate
) -> Record:
    current = await get_customer(conn, principal, customer_id)
    changes = body.changes()
    if not changes:
        return current
    row = await repository.update(conn, customer_id, changes)
    assert row is not None
    return row


async def deactivate_customer(conn: Connection, principal: Principal, customer_id: uuid.UUID) -> None:
    await get_customer(conn, principal, customer_id)
    await repository.update(conn, customer_id, {"is_active": False})
