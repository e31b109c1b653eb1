from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response, status

from virtualq.accounts import service
from virtualq.accounts.schemas import Account, AccountCreate, AccountUpdate
from virtualq.auth.principal import (
    ABOVE_TENANT,
    Principal,
    Role,
    Scope,
    invalidate_keys,
    require_scopes,
)
from virtualq.db import ReadConn, WriteConn
from virtualq.kit.pagination import PageQuery, page_envelope
from virtualq.kit.routing import READ_ERRORS, WRITE_ERRORS, CommonFilterQuery
from virtualq.kit.schemas import Page

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])

PlatformAdmin = Annotated[
    Principal, require_scopes((Scope.PLATFORM,), "only platform admins create accounts", Role.ADMIN)
]
AccountDeactivator = Annotated[
    Principal, require_scopes((Scope.PLATFORM,), "only platform admins deactivate accounts", Role.ADMIN)
]
AccountsAdmin = Annotated[
    Principal, require_scopes(ABOVE_TENANT, "a tenant-scoped key cannot manage accounts", Role.ADMIN)
]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Account, responses=WRITE_ERRORS)
async def create_account(body: AccountCreate, principal: PlatformAdmin, conn: WriteConn) -> Any:
    """Create an account (platform admins)."""
    return await service.create_account(conn, principal, body)


@router.get("", response_model=Page[Account], responses=READ_ERRORS)
async def list_accounts(
    principal: AccountsAdmin, conn: ReadConn, page: PageQuery, filters: CommonFilterQuery
) -> Any:
    """Accounts visible to the key: all for platform admins, its own for account admins."""
    rows, total = await service.list_accounts(conn, principal, filters, page)
    return page_envelope(rows, total, page)


@router.get("/{account_id}", response_model=Account, responses=READ_ERRORS)
async def get_account(account_id: uuid.UUID, principal: AccountsAdmin, conn: ReadConn) -> Any:
    return await service.get_account(conn, principal, account_id)


@router.patch("/{account_id}", response_model=Account, responses=WRITE_ERRORS)
@router.put("/{account_id}", response_model=Account, responses=WRITE_ERRORS)
async def update_account(
    account_id: uuid.UUID, body: AccountUpdate, request: Request, principal: AccountsAdmin, conn: WriteConn
) -> Any:
    """Partial update; PUT is accepted with the same meaning."""
    result = await service.update_account(conn, principal, account_id, body)
    if body.is_active is not None:
        invalidate_keys(request)
    return result


@router.delete("/{account_id}", status_code=status.HTTP_204_NO_CONTENT, responses=WRITE_ERRORS)
async def deactivate_account(
    account_id: uuid.UUID, request: Request, principal: AccountDeactivator, conn: WriteConn
) -> Response:
    """Deactivate (soft delete) an account (platform admins)."""
    await service.deactivate_account(conn, principal, account_id)
    invalidate_keys(request)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
