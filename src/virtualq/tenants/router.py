from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from virtualq.auth.principal import (
    ABOVE_TENANT,
    AdminOnly,
    Principal,
    Role,
    StaffOrAdmin,
    invalidate_keys,
    require_scopes,
)
from virtualq.db import ReadConn, WriteConn
from virtualq.kit.pagination import PageQuery, page_envelope
from virtualq.kit.routing import READ_ERRORS, WRITE_ERRORS, CommonFilterQuery
from virtualq.kit.schemas import Page
from virtualq.tenants import service
from virtualq.tenants.schemas import Tenant, TenantCreate, TenantUpdate

router = APIRouter(tags=["tenants"])

TenantCreator = Annotated[
    Principal, require_scopes(ABOVE_TENANT, "a tenant-scoped key cannot create tenants", Role.ADMIN)
]
TenantDeactivator = Annotated[
    Principal, require_scopes(ABOVE_TENANT, "a tenant-scoped key cannot deactivate its tenant", Role.ADMIN)
]


@router.post(
    "/v1/tenants", status_code=status.HTTP_201_CREATED, response_model=Tenant, responses=WRITE_ERRORS
)
async def create_tenant(body: TenantCreate, principal: TenantCreator, conn: WriteConn) -> Any:
    """Create a tenant in an account (platform or account admins)."""
    return await service.create_tenant(conn, principal, body)


@router.get("/v1/tenants", response_model=Page[Tenant], responses=READ_ERRORS)
async def list_tenants(
    principal: StaffOrAdmin,
    conn: ReadConn,
    page: PageQuery,
    filters: CommonFilterQuery,
    account_id: Annotated[uuid.UUID | None, Query(description="Only tenants of this account.")] = None,
) -> Any:
    rows, total = await service.list_tenants(conn, principal, account_id, filters, page)
    return page_envelope(rows, total, page)


@router.get(
    "/v1/accounts/{account_id}/tenants", response_model=Page[Tenant], responses=READ_ERRORS, tags=["accounts"]
)
async def list_account_tenants(
    account_id: uuid.UUID,
    principal: StaffOrAdmin,
    conn: ReadConn,
    page: PageQuery,
    filters: CommonFilterQuery,
) -> Any:
    rows, total = await service.list_account_tenants(conn, principal, account_id, filters, page)
    return page_envelope(rows, total, page)


@router.get("/v1/tenants/{tenant_id}", response_model=Tenant, responses=READ_ERRORS)
async def get_tenant(tenant_id: uuid.UUID, principal: StaffOrAdmin, conn: ReadConn) -> Any:
    return await service.get_tenant(conn, principal, tenant_id)


@router.patch("/v1/tenants/{tenant_id}", response_model=Tenant, responses=WRITE_ERRORS)
@router.put("/v1/tenants/{tenant_id}", response_model=Tenant, responses=WRITE_ERRORS)
async def update_tenant(
    tenant_id: uuid.UUID, body: TenantUpdate, request: Request, principal: AdminOnly, conn: WriteConn
) -> Any:
    """Partial update; PUT is accepted with the same meaning."""
    result = await service.update_tenant(conn, principal, tenant_id, body)
    if body.is_active is not None:
        invalidate_keys(request)
    return result


@router.delete("/v1/tenants/{tenant_id}", status_code=status.HTTP_204_NO_CONTENT, responses=WRITE_ERRORS)
async def deactivate_tenant(
    tenant_id: uuid.UUID, request: Request, principal: TenantDeactivator, conn: WriteConn
) -> Response:
    await service.deactivate_tenant(conn, principal, tenant_id)
    invalidate_keys(request)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
