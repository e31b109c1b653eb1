from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from virtualq.auth.principal import MaybeTenantAdmin, MaybeTenantStaff, StaffOrAdmin, resolve_tenant
from virtualq.db import ReadConn, WriteConn, use_tenant
from virtualq.errors import Forbidden, not_found
from virtualq.kit.pagination import PageQuery, page_envelope
from virtualq.kit.routing import READ_ERRORS, WRITE_ERRORS, CommonFilterQuery
from virtualq.kit.schemas import Page
from virtualq.type_definitions import service
from virtualq.type_definitions.schemas import TypeDefinition, TypeDefinitionCreate, TypeDefinitionUpdate

router = APIRouter(tags=["type definitions"])
IncludeSystem = Annotated[bool, Query(description="Include system types (visible to every tenant).")]


@router.post(
    "/v1/type-definitions",
    status_code=status.HTTP_201_CREATED,
    response_model=TypeDefinition,
    responses=WRITE_ERRORS,
)
async def create_type_definition(body: TypeDefinitionCreate, ctx: MaybeTenantAdmin, conn: WriteConn) -> Any:
    """Create a ticket or item type for the tenant; platform admins create system types with
    `is_system_defined: true`. The state machine and JSON Schema are validated and every problem listed."""
    return service.to_output(await service.create_type(conn, ctx, body))


@router.get("/v1/type-definitions", response_model=Page[TypeDefinition], responses=READ_ERRORS)
async def list_type_definitions(
    ctx: MaybeTenantStaff,
    conn: ReadConn,
    page: PageQuery,
    filters: CommonFilterQuery,
    include_system: IncludeSystem = True,
) -> Any:
    """The tenant's types and the system types (without a tenant: system types only)."""
    rows, total = await service.list_types(conn, ctx, filters, include_system, page)
    return page_envelope([service.to_output(row) for row in rows], total, page)


@router.get(
    "/v1/tenants/{tenant_id}/type-definitions",
    response_model=Page[TypeDefinition],
    responses=READ_ERRORS,
    tags=["tenants"],
)
async def list_tenant_type_definitions(
    tenant_id: uuid.UUID,
    request: Request,
    principal: StaffOrAdmin,
    conn: ReadConn,
    page: PageQuery,
    filters: CommonFilterQuery,
    include_system: IncludeSystem = True,
) -> Any:
    try:
        ctx = await resolve_tenant(request, principal, tenant_id)
    except Forbidden:
        raise not_found("tenant") from None
    await use_tenant(conn, ctx.tenant_id)
    rows, total = await service.list_types(conn, ctx, filters, include_system, page)
    return page_envelope([service.to_output(row) for row in rows], total, page)


@router.get("/v1/type-definitions/{type_id}", response_model=TypeDefinition, responses=READ_ERRORS)
async def get_type_definition(type_id: uuid.UUID, ctx: MaybeTenantStaff, conn: ReadConn) -> Any:
    return service.to_output(await service.get_type(conn, ctx, type_id))


@router.patch("/v1/type-definitions/{type_id}", response_model=TypeDefinition, responses=WRITE_ERRORS)
@router.put("/v1/type-definitions/{type_id}", response_model=TypeDefinition, responses=WRITE_ERRORS)
async def update_type_definition(
    type_id: uuid.UUID, body: TypeDefinitionUpdate, ctx: MaybeTenantAdmin, conn: WriteConn
) -> Any:
    """Partial update. Dropping a state that live tickets or items are in is 409 listing those states."""
    return service.to_output(await service.update_type(conn, ctx, type_id, body))


@router.delete(
    "/v1/type-definitions/{type_id}", status_code=status.HTTP_204_NO_CONTENT, responses=WRITE_ERRORS
)
async def deactivate_type_definition(type_id: uuid.UUID, ctx: MaybeTenantAdmin, conn: WriteConn) -> Response:
    await service.deactivate_type(conn, ctx, type_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
