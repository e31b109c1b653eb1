from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status

from virtualq.auth import service
from virtualq.auth.principal import AdminOnly, AnyRole, Role, invalidate_keys, named_tenant
from virtualq.auth.schemas import ApiKey, ApiKeyCreate, ApiKeyCreated, ApiKeyLimits, Me
from virtualq.db import ReadConn, WriteConn, use_tenant
from virtualq.employees import repository as employees
from virtualq.kit.pagination import PageQuery, page_envelope
from virtualq.kit.routing import READ_ERRORS, WRITE_ERRORS
from virtualq.kit.schemas import Page

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])
me_router = APIRouter(tags=["api keys"])


@me_router.get("/v1/me", response_model=Me, responses=READ_ERRORS)
async def who_am_i(principal: AnyRole, conn: ReadConn) -> Any:
    """The calling key: its scope, role, account and tenant, and the employee it acts as (any role; no
    employee for display keys). A console shows whom it calls as; an integration checks its key before it
    starts. The tenant context (`X-Tenant-ID`) is not read here: a request naming a tenant is checked by
    the endpoint it goes to."""
    employee = None
    # Staff names are personal data: not for display keys (docs/access.md), even one made with an employee.
    if (
        principal.employee_id is not None
        and principal.tenant_id is not None
        and principal.role is not Role.DISPLAY
    ):
        await use_tenant(conn, principal.tenant_id)  # employees sit behind row-level security
        employee = await employees.get(conn, principal.tenant_id, principal.employee_id)
    return {
        "key_id": principal.key_id,
        "scope": principal.scope,
        "role": principal.role,
        "account_id": principal.account_id,
        "tenant_id": principal.tenant_id,
        "employee": None if employee is None else dict(employee),
    }


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated, responses=WRITE_ERRORS)
async def create_api_key(
    body: ApiKeyCreate,
    request: Request,
    principal: AdminOnly,
    conn: WriteConn,
    x_tenant_id: Annotated[
        uuid.UUID | None,
        Header(description="For a tenant-scoped key: its tenant, when the body gives no `tenant_id`."),
    ] = None,
    tenant_id: Annotated[uuid.UUID | None, Query(description="As the X-Tenant-ID header.")] = None,
) -> Any:
    """Issue a key within the caller's scope. The secret `key` is returned once and stored only as a hash
    (a retry with the same Idempotency-Key gets the key's record, not the secret again)."""
    request.state.idempotency_redact = "key"
    named = named_tenant(x_tenant_id, tenant_id)
    row, secret = await service.create_key(conn, principal, body, named)
    return {**dict(row), "key": secret}


@router.get("", response_model=Page[ApiKey], responses=READ_ERRORS)
async def list_api_keys(
    principal: AdminOnly,
    conn: ReadConn,
    page: PageQuery,
    include_revoked: Annotated[bool, Query(description="Also list revoked keys.")] = False,
) -> Any:
    rows, total = await service.list_keys(conn, principal, include_revoked, page)
    return page_envelope(rows, total, page)


@router.get("/{key_id}", response_model=ApiKey, responses=READ_ERRORS)
async def get_api_key(key_id: uuid.UUID, principal: AdminOnly, conn: ReadConn) -> Any:
    return await service.get_key(conn, principal, key_id)


@router.patch("/{key_id}", response_model=ApiKey, responses=WRITE_ERRORS)
@router.put("/{key_id}", response_model=ApiKey, responses=WRITE_ERRORS)
async def update_api_key(
    key_id: uuid.UUID, body: ApiKeyLimits, request: Request, principal: AdminOnly, conn: WriteConn
) -> Any:
    """Change a key's rate limits (platform admins). Takes effect in every server process within a second."""
    row = await service.set_limits(conn, principal, key_id, body)
    invalidate_keys(request)
    return row


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT, responses=WRITE_ERRORS)
async def revoke_api_key(
    key_id: uuid.UUID, request: Request, principal: AdminOnly, conn: WriteConn
) -> Response:
    """Revoke a key; requests with it are refused (401) from now on, in every server process."""
    await service.revoke_key(conn, principal, key_id)
    invalidate_keys(request)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
