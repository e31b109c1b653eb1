from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status

from virtualq.auth.principal import StaffOrAdmin
from virtualq.customers import service
from virtualq.customers.schemas import Customer, CustomerCreate, CustomerUpdate
from virtualq.db import ReadConn, WriteConn
from virtualq.kit.pagination import PageQuery, page_envelope
from virtualq.kit.routing import READ_ERRORS, WRITE_ERRORS, CommonFilterQuery
from virtualq.kit.schemas import Page

router = APIRouter(prefix="/v1/customers", tags=["customers"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Customer, responses=WRITE_ERRORS)
async def create_customer(body: CustomerCreate, principal: StaffOrAdmin, conn: WriteConn) -> Any:
    """Create a customer of an account; an `id` you supply is kept (409 if taken)."""
    return await service.create_customer(conn, principal, body)


@router.get("", response_model=Page[Customer], responses=READ_ERRORS)
async def list_customers(
    principal: StaffOrAdmin,
    conn: ReadConn,
    page: PageQuery,
    filters: CommonFilterQuery,
    account_id: Annotated[uuid.UUID | None, Query(description="Only customers of this account.")] = None,
) -> Any:
    rows, total = await service.list_customers(conn, principal, account_id, filters, page)
    return page_envelope(rows, total, page)


@router.get("/{customer_id}", response_model=Customer, responses=READ_ERRORS)
async def get_customer(customer_id: uuid.UUID, principal: StaffOrAdmin, conn: ReadConn) -> Any:
    return await service.get_customer(conn, principal, customer_id)


@router.patch("/{customer_id}", response_model=Customer, responses=WRITE_ERRORS)
@router.put("/{customer_id}", response_model=Customer, responses=WRITE_ERRORS)
async def update_customer(
    customer_id: uuid.UUID, body: CustomerUpdate, principal: StaffOrAdmin, conn: WriteConn
) -> Any:
    """Partial update; PUT is accepted with the same meaning."""
    return await service.update_customer(conn, principal, customer_id, body)


@router.delete("/{customer_id}", status_code=status.HTTP_204_NO_CONTENT, responses=WRITE_ERRORS)
async def deactivate_customer(customer_id: uuid.UUID, principal: StaffOrAdmin, conn: WriteConn) -> Response:
    await service.deactivate_customer(conn, principal, customer_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
