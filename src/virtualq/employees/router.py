from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request, Response, status

from virtualq.auth.principal import StaffOrAdmin, TenantAdmin, TenantStaff, invalidate_keys, resolve_tenant
from virtualq.db import ReadConn, WriteConn, use_tenant
from virtualq.employees import service
from virtualq.employees.schemas import Employee, EmployeeCreate, EmployeeQueues, EmployeeUpdate
from virtualq.errors import Forbidden, not_found
from virtualq.kit.pagination import PageQuery, page_envelope
from virtualq.kit.routing import READ_ERRORS, WRITE_ERRORS, CommonFilterQuery
from virtualq.kit.schemas import Page

router = APIRouter(tags=["employees"])


@router.post(
    "/v1/employees", status_code=status.HTTP_201_CREATED, response_model=Employee, responses=WRITE_ERRORS
)
async def create_employee(body: EmployeeCreate, ctx: TenantAdmin, conn: WriteConn) -> Any:
    """Add a staff member to the tenant; email is unique among the tenant's active employees (409)."""
    return await service.create_employee(conn, ctx, body)


@router.get("/v1/employees", response_model=Page[Employee], responses=READ_ERRORS)
async def list_employees(
    ctx: TenantStaff, conn: ReadConn, page: PageQuery, filters: CommonFilterQuery
) -> Any:
    rows, total = await service.list_employees(conn, ctx, filters, page)
    return page_envelope(rows, total, page)


@router.get(
    "/v1/tenants/{tenant_id}/employees",
    response_model=Page[Employee],
    responses=READ_ERRORS,
    tags=["tenants"],
)
async def list_tenant_employees(
    tenant_id: uuid.UUID,
    request: Request,
    principal: StaffOrAdmin,
    conn: ReadConn,
    page: PageQuery,
    filters: CommonFilterQuery,
) -> Any:
    """The employees of the tenant in the path (same as /v1/employees with that tenant)."""
    try:
        ctx = await resolve_tenant(request, principal, tenant_id)
    except Forbidden:
        # A tenant named in the path that the key cannot see is, for that key, not there.
        raise not_found("tenant") from None
    await use_tenant(conn, ctx.tenant_id)
    rows, total = await service.list_employees(conn, ctx, filters, page)
    return page_envelope(rows, total, page)


@router.get("/v1/employees/{employee_id}", response_model=Employee, responses=READ_ERRORS)
async def get_employee(employee_id: uuid.UUID, ctx: TenantStaff, conn: ReadConn) -> Any:
    return await service.get_employee(conn, ctx, employee_id)


@router.patch("/v1/employees/{employee_id}", response_model=Employee, responses=WRITE_ERRORS)
@router.put("/v1/employees/{employee_id}", response_model=Employee, responses=WRITE_ERRORS)
async def update_employee(
    employee_id: uuid.UUID, body: EmployeeUpdate, request: Request, ctx: TenantAdmin, conn: WriteConn
) -> Any:
    """Partial update; PUT is accepted with the same meaning. API keys attributed to a deactivated
    employee are refused (403) until the employee is active again."""
    result = await service.update_employee(conn, ctx, employee_id, body)
    if body.is_active is not None:
        invalidate_keys(request)
    return result


@router.delete("/v1/employees/{employee_id}", status_code=status.HTTP_204_NO_CONTENT, responses=WRITE_ERRORS)
async def deactivate_employee(
    employee_id: uuid.UUID, request: Request, ctx: TenantAdmin, conn: WriteConn
) -> Response:
    """Deactivate; API keys attributed to the employee are refused (403) from then on."""
    await service.deactivate_employee(conn, ctx, employee_id)
    invalidate_keys(request)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/v1/employees/{employee_id}/queues", response_model=Employee, responses=WRITE_ERRORS)
@router.post("/v1/employees/{employee_id}/assign-queues", response_model=Employee, responses=WRITE_ERRORS)
async def set_employee_queues(
    employee_id: uuid.UUID, body: EmployeeQueues, ctx: TenantAdmin, conn: WriteConn
) -> Any:
    """Bind the employee to these queues of the tenant (replacing the current set); POST assign-queues is
    an alias."""
    return await service.set_queues(conn, ctx, employee_id, body.queue_ids)
