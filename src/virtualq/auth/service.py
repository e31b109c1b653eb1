"""Issuing and revoking keys. A key can only create keys within its own scope."""

from __future__ import annotations

import uuid
from typing import Any

from virtualq.auth import keys, repository
from virtualq.auth.principal import Principal, Scope
from virtualq.auth.schemas import ApiKeyCreate, ApiKeyLimits
from virtualq.db import Connection, Record, use_tenant
from virtualq.errors import Forbidden, ValidationFailed, not_found
from virtualq.kit.ids import new_id
from virtualq.kit.pagination import PageParams
from virtualq.kit.sql import Where


async def _resolve_owner(
    conn: Connection, principal: Principal, body: ApiKeyCreate, named_tenant: uuid.UUID | None = None
) -> dict[str, Any]:
    """Fill in account_id/tenant_id from the creator's scope and check the new key stays inside it. A tenant
    key's tenant: the body's `tenant_id`, else the X-Tenant-ID header (`named_tenant`), else the creator's."""
    account_id, tenant_id = body.account_id, body.tenant_id
    if body.scope is Scope.PLATFORM:
        if not principal.is_platform:
            raise Forbidden("only platform keys create platform keys")
        return {}
    if body.scope is Scope.TENANT:
        if tenant_id is not None and named_tenant is not None and tenant_id != named_tenant:
            raise ValidationFailed(
                "tenant_id in the body disagrees with the X-Tenant-ID header", {"field": "tenant_id"}
            )
        tenant_id = tenant_id or named_tenant or principal.tenant_id
        if tenant_id is None:
            raise ValidationFailed("tenant_id is required for a tenant-scoped key", {"field": "tenant_id"})
        tenant_account = await repository.tenant_account(conn, tenant_id)
        if tenant_account is None or not principal.covers_tenant(tenant_id, tenant_account):
            if principal.is_platform:
                raise ValidationFailed("tenant_id names no tenant", {"field": "tenant_id"})
            raise Forbidden("this key may not create keys for that tenant")
        if account_id is not None and account_id != tenant_account:
            raise ValidationFailed("account_id does not own tenant_id", {"field": "account_id"})
        if body.employee_id:
            await use_tenant(conn, tenant_id)  # employees sit behind row-level security
        if body.employee_id and not await repository.employee_exists(conn, tenant_id, body.employee_id):
            raise ValidationFailed(
                "employee_id names no active employee of the tenant", {"field": "employee_id"}
            )
        return {"account_id": tenant_account, "tenant_id": tenant_id}
    # Account scope.
    if principal.scope is Scope.TENANT:
        raise Forbidden("a tenant-scoped key cannot create account keys")
    account_id = account_id or principal.account_id
    if account_id is None:
        raise ValidationFailed("account_id is required for an account-scoped key", {"field": "account_id"})
    if not principal.covers_account(account_id):
        raise Forbidden("this key may not create keys for that account")
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM accounts WHERE id = $1)", account_id):
        raise ValidationFailed("account_id names no account", {"field": "account_id"})
    return {"account_id": account_id}


def _check_may_set_limits(principal: Principal) -> None:
    if not principal.is_platform:
        raise Forbidden("only platform admins set rate limits on keys")


async def create_key(
    conn: Connection, principal: Principal, body: ApiKeyCreate, named_tenant: uuid.UUID | None = None
) -> tuple[Record, str]:
    if body.rate_limit_per_minute is not None or body.rate_limit_burst is not None:
        _check_may_set_limits(principal)
    owner = await _resolve_owner(conn, principal, body, named_tenant)
    secret = keys.generate_key()
    fields = {
        "name": body.name,
        "scope": body.scope.value,
        "role": body.role.value,
        "employee_id": body.employee_id,
        "created_by": principal.key_id,
        "rate_limit_per_minute": body.rate_limit_per_minute,
        "rate_limit_burst": body.rate_limit_burst,
        **owner,
    }
    row = await repository.insert(conn, new_id(), keys.hash_key(secret), keys.display_prefix(secret), fields)
    return row, secret


def _scope_filter(principal: Principal) -> Where:
    where = Where()
    if principal.scope is Scope.ACCOUNT:
        where.add("account_id = {}", principal.account_id)
    elif principal.scope is Scope.TENANT:
        where.add("tenant_id = {}", principal.tenant_id)
    return where


async def list_keys(
    conn: Connection, principal: Principal, include_revoked: bool, params: PageParams
) -> tuple[list[Record], int]:
    where = _scope_filter(principal)
    if not include_revoked:
        where.add_constant("revoked_at IS NULL")
    return await repository.list_page(conn, where, params)


def _visible(principal: Principal, row: Record) -> bool:
    if principal.scope is Scope.ACCOUNT:
        return bool(row["account_id"] == principal.account_id)
    if principal.scope is Scope.TENANT:
        return bool(row["tenant_id"] == principal.tenant_id)
    return True


async def get_key(conn: Connection, principal: Principal, key_id: uuid.UUID) -> Record:
    row = await repository.get(conn, key_id)
    if row is None or not _visible(principal, row):
        raise not_found("API key")
    return row


async def set_limits(conn: Connection, principal: Principal, key_id: uuid.UUID, body: ApiKeyLimits) -> Record:
    _check_may_set_limits(principal)
    await get_key(conn, principal, key_id)
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise ValidationFailed("nothing to change: send rate_limit_per_minute and/or rate_limit_burst")
    return await repository.set_limits(conn, key_id, changes)


async def revoke_key(conn: Connection, principal: Principal, key_id: uuid.UUID) -> None:
    await get_key(conn, principal, key_id)
    await repository.revoke(conn, key_id)


async def create_key_from_cli(conn: Connection, fields: dict[str, Any]) -> tuple[Record, str]:
    """The CLI acts as a platform admin (it already holds the database)."""
    from virtualq.auth.principal import PLATFORM_ADMIN

    return await create_key(conn, PLATFORM_ADMIN, ApiKeyCreate(**fields))
