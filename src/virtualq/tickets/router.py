from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from virtualq.auth.principal import (
    STAFF_ROLES,
    Role,
    TenantAnyRole,
    TenantContext,
    TenantStaff,
    act_for_tenant,
)
from virtualq.db import ReadConn, StatementConn, WriteConn, get_pool, reading, writing_statement
from virtualq.fsm import Category
from virtualq.kit.fastpath import fast_path, json_body, named_tenant, no_query, path_uuid, single_header
from virtualq.kit.pagination import PageQuery, page_envelope
from virtualq.kit.responses import fields_of, project, trusted_json
from virtualq.kit.routing import READ_ERRORS, WRITE_ERRORS, error_responses
from virtualq.kit.schemas import Instant, Page
from virtualq.queues.feed_cache import FeedCache
from virtualq.tickets import items_service, line, service
from virtualq.tickets.etag import IfMatch, check_if_match, etag, tag
from virtualq.tickets.schemas import (
    AssignRequest,
    CallNextRequest,
    ForwardedTicket,
    ForwardRequest,
    HistoryEntry,
    Item,
    ItemCreate,
    ItemUpdate,
    RecallRequest,
    ReorderedTicket,
    ReorderRequest,
    Ticket,
    TicketCount,
    TicketCreate,
    TicketFilters,
    TicketUpdate,
    TransitionedItem,
    TransitionedTicket,
    TransitionRequest,
)

router = APIRouter(tags=["tickets"])
TRANSITION_ERRORS = error_responses(400, 401, 403, 404, 409, 413)
# Mutations of one ticket honour If-Match.
TICKET_WRITE_ERRORS = {**WRITE_ERRORS, **error_responses(412)}
TICKET_TRANSITION_ERRORS = {**TRANSITION_ERRORS, **error_responses(412)}
# Fields a display-role key never sees: they identify or describe a person.
PERSONAL_FIELDS = ("customer_id", "custom_data", "employee_id")
# The hot read endpoints send rows as they are (no second validation); the models still document them.
TICKET_FIELDS = fields_of(Ticket)
TRANSITIONED_FIELDS = fields_of(TransitionedTicket)


def _ticket_answer(ticket: Any, fields: tuple[str, ...], status_code: int = 200) -> Response:
    """A fast path's answer: the response model's fields, as the route would send them, with the ETag."""
    return trusted_json(project(ticket, fields), status_code, etag(ticket["version"]))


async def _ticket_filters(
    queue_id: uuid.UUID | None = None,
    current_state: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
    state_category: Category | None = None,
    customer_id: uuid.UUID | None = None,
    employee_id: uuid.UUID | None = None,
    type_definition_id: uuid.UUID | None = None,
    created_after: Annotated[Instant | None, Query(description="RFC 3339 timestamp, exclusive.")] = None,
    created_before: Annotated[Instant | None, Query(description="RFC 3339 timestamp, exclusive.")] = None,
    expires_before: Annotated[Instant | None, Query(description="RFC 3339 timestamp, exclusive.")] = None,
) -> TicketFilters:
    try:
        return TicketFilters(
            queue_id=queue_id,
            current_state=current_state,
            state_category=state_category,
            customer_id=customer_id,
            employee_id=employee_id,
            type_definition_id=type_definition_id,
            created_after=created_after,
            created_before=created_before,
            expires_before=expires_before,
        )
    except ValidationError as exc:  # what the model adds to the query's own checks (a blank state name)
        raise RequestValidationError(
            [{**error, "loc": ("query", *error["loc"])} for error in exc.errors(include_url=False)]
        ) from None


@router.post("/v1/tickets", status_code=201, response_model=Ticket, responses=TRANSITION_ERRORS)
async def create_ticket(
    body: TicketCreate, request: Request, response: Response, ctx: TenantStaff, conn: StatementConn
) -> Any:
    """Join a queue: the ticket starts in its machine's init state with a number and a place in line."""
    return tag(response, await service.create_ticket(conn, ctx, body, request.app.state.create_batching))


@fast_path(router, create_ticket)
async def _create_ticket_fast(request: Request) -> Response:
    no_query(request)
    tenant_id = named_tenant(request)
    body = await json_body(request, TicketCreate)
    ctx = await act_for_tenant(request, STAFF_ROLES, tenant_id)
    async with writing_statement(request) as conn:
        ticket = await service.create_ticket(conn, ctx, body, request.app.state.create_batching)
    return _ticket_answer(ticket, TICKET_FIELDS, 201)


@router.get("/v1/tickets", response_model=Page[Ticket], responses=READ_ERRORS)
async def list_tickets(
    ctx: TenantStaff,
    conn: ReadConn,
    page: PageQuery,
    filters: Annotated[TicketFilters, Depends(_ticket_filters)],
) -> Any:
    filtered = filters.model_dump(exclude_none=True)
    rows, total = await service.list_tickets(conn, ctx, filtered, page, TICKET_FIELDS)
    return trusted_json(page_envelope(rows, total, page))


@router.post("/v1/tickets/count", response_model=TicketCount, responses=READ_ERRORS)
async def count_tickets(body: TicketFilters, ctx: TenantStaff, conn: ReadConn) -> Any:
    """Count tickets matching the same filters as the list, given in the body."""
    return {"count": await service.count_tickets(conn, ctx, body.model_dump(exclude_none=True))}


@router.get("/v1/tickets/{ticket_id}", response_model=Ticket, responses=READ_ERRORS)
async def get_ticket(ticket_id: uuid.UUID, request: Request, ctx: TenantStaff) -> Any:
    """The ticket, with its `ETag`: send it back as `If-Match` to change it only if nobody else did."""
    ticket = await service.read_ticket(get_pool(request), ctx, ticket_id, request.app.state.read_batching)
    return trusted_json(project(ticket, TICKET_FIELDS), etag=etag(ticket["version"]))


@fast_path(router, get_ticket)
async def _get_ticket_fast(request: Request) -> Response:
    ticket_id = path_uuid(request, "ticket_id")
    no_query(request)
    ctx = await act_for_tenant(request, STAFF_ROLES, named_tenant(request))
    ticket = await service.read_ticket(get_pool(request), ctx, ticket_id, request.app.state.read_batching)
    return _ticket_answer(ticket, TICKET_FIELDS)


@router.patch("/v1/tickets/{ticket_id}", response_model=Ticket, responses=TICKET_WRITE_ERRORS)
@router.put("/v1/tickets/{ticket_id}", response_model=Ticket, responses=TICKET_WRITE_ERRORS)
async def update_ticket(
    ticket_id: uuid.UUID,
    body: TicketUpdate,
    response: Response,
    ctx: TenantStaff,
    conn: WriteConn,
    if_match: IfMatch = None,
) -> Any:
    """Change custom_data (re-validated), estimated_wait_minutes or ttl_minutes; PUT means the same."""
    await check_if_match(conn, ctx, ticket_id, if_match)
    return tag(response, await service.update_ticket(conn, ctx, ticket_id, body))


@router.delete(
    "/v1/tickets/{ticket_id}", response_model=TransitionedTicket, responses=TICKET_TRANSITION_ERRORS
)
async def cancel_ticket(
    ticket_id: uuid.UUID, response: Response, ctx: TenantStaff, conn: StatementConn, if_match: IfMatch = None
) -> Any:
    """Cancel: apply the transition into a cancelled-category state; the ticket stays readable."""
    return tag(response, await service.cancel_ticket(conn, ctx, ticket_id, if_match))


@router.post(
    "/v1/tickets/{ticket_id}/transition",
    response_model=TransitionedTicket,
    responses=TICKET_TRANSITION_ERRORS,
)
async def transition_ticket(
    ticket_id: uuid.UUID,
    body: TransitionRequest,
    response: Response,
    ctx: TenantStaff,
    conn: StatementConn,
    if_match: IfMatch = None,
) -> Any:
    """Apply a named transition of the ticket's state machine; 400 invalid_transition lists the valid ones."""
    return tag(response, await service.transition_ticket(conn, ctx, ticket_id, body, if_match))


@fast_path(router, transition_ticket)
async def _transition_ticket_fast(request: Request) -> Response:
    ticket_id = path_uuid(request, "ticket_id")
    no_query(request)
    tenant_id = named_tenant(request)
    if_match = single_header(request, "if-match", 1024)
    body = await json_body(request, TransitionRequest)
    ctx = await act_for_tenant(request, STAFF_ROLES, tenant_id)
    async with writing_statement(request) as conn:
        ticket = await service.transition_ticket(conn, ctx, ticket_id, body, if_match)
    return _ticket_answer(ticket, TRANSITIONED_FIELDS)


@router.get("/v1/tickets/{ticket_id}/history", response_model=list[HistoryEntry], responses=READ_ERRORS)
async def ticket_history(ticket_id: uuid.UUID, ctx: TenantStaff, conn: ReadConn) -> Any:
    """Every state change, oldest first (the first entry has previous_state null)."""
    return await service.ticket_history(conn, ctx, ticket_id)


@router.post(
    "/v1/queues/{queue_id}/call-next",
    response_model=TransitionedTicket,
    responses=error_responses(400, 401, 403, 404, 409, 413),
    tags=["queues"],
)
async def call_next(
    queue_id: uuid.UUID,
    response: Response,
    ctx: TenantStaff,
    conn: StatementConn,
    body: Annotated[CallNextRequest | None, Body()] = None,
) -> Any:
    """Take the first waiting ticket and move it out of the line (404 queue_empty when nobody waits).

    Two counters calling at the same instant never receive the same ticket. The employee (given, or the one
    the API key is bound to) is assigned and recorded in the history. A disabled queue can still be served.
    Every field is optional, and so is the body.
    """
    return tag(response, await line.call_next(conn, ctx, queue_id, body or CallNextRequest()))


@fast_path(router, call_next)
async def _call_next_fast(request: Request) -> Response:
    queue_id = path_uuid(request, "queue_id")
    no_query(request)
    tenant_id = named_tenant(request)
    body = await json_body(request, CallNextRequest)
    ctx = await act_for_tenant(request, STAFF_ROLES, tenant_id)
    async with writing_statement(request) as conn:
        ticket = await line.call_next(conn, ctx, queue_id, body)
    return _ticket_answer(ticket, TRANSITIONED_FIELDS)


@router.post(
    "/v1/employees/{employee_id}/call-next",
    response_model=TransitionedTicket,
    responses=TRANSITION_ERRORS,
    tags=["employees"],
)
async def call_next_for_employee(
    employee_id: uuid.UUID,
    response: Response,
    ctx: TenantStaff,
    conn: StatementConn,
    body: Annotated[CallNextRequest | None, Body()] = None,
) -> Any:
    """Call-next across the queues this employee serves (`PUT /v1/employees/{id}/queues`): the waiting
    ticket that comes first in any of them, assigned to the employee; the body as for a queue's call-next.
    400 when the employee serves no queue, 404 queue_empty when nobody waits in any."""
    return tag(response, await line.call_next_for_employee(conn, ctx, employee_id, body or CallNextRequest()))


@router.post(
    "/v1/tickets/{ticket_id}/reorder", response_model=ReorderedTicket, responses=TICKET_TRANSITION_ERRORS
)
async def reorder_ticket(
    ticket_id: uuid.UUID,
    body: ReorderRequest,
    response: Response,
    ctx: TenantStaff,
    conn: WriteConn,
    if_match: IfMatch = None,
) -> Any:
    """Move a waiting ticket to a 1-based position (clamped to the line); the others shift."""
    await check_if_match(conn, ctx, ticket_id, if_match)
    return tag(response, await line.reorder(conn, ctx, ticket_id, body))


@router.post(
    "/v1/tickets/{ticket_id}/forward", response_model=ForwardedTicket, responses=TICKET_TRANSITION_ERRORS
)
async def forward_ticket(
    ticket_id: uuid.UUID,
    body: ForwardRequest,
    response: Response,
    ctx: TenantStaff,
    conn: WriteConn,
    if_match: IfMatch = None,
) -> Any:
    """Send the ticket to another queue of the tenant; it keeps its state, number and display code."""
    await check_if_match(conn, ctx, ticket_id, if_match)
    return tag(response, await line.forward(conn, ctx, ticket_id, body))


@router.post("/v1/tickets/{ticket_id}/assign", response_model=Ticket, responses=TICKET_WRITE_ERRORS)
async def assign_ticket(
    ticket_id: uuid.UUID,
    body: AssignRequest,
    response: Response,
    ctx: TenantStaff,
    conn: WriteConn,
    if_match: IfMatch = None,
) -> Any:
    """Assign an active employee of the tenant (400 otherwise)."""
    await check_if_match(conn, ctx, ticket_id, if_match)
    return tag(response, await line.assign(conn, ctx, ticket_id, body.employee_id))


@router.post("/v1/tickets/{ticket_id}/recall", response_model=Ticket, responses=TICKET_WRITE_ERRORS)
async def recall_ticket(
    ticket_id: uuid.UUID,
    response: Response,
    ctx: TenantStaff,
    conn: WriteConn,
    body: Annotated[RecallRequest | None, Body()] = None,
    if_match: IfMatch = None,
) -> Any:
    """Call a ticket that was called (in service or ready) again, when its customer has not come: the wall
    display announces it again, the customer's page says so, and `ticket.recalled` goes to the stream and
    webhooks (for a text message, say). The state stays; `counter` changes where to go. 409 for a ticket
    not called. The body is optional."""
    await check_if_match(conn, ctx, ticket_id, if_match)
    return tag(response, await line.recall(conn, ctx, ticket_id, body or RecallRequest()))


@router.post("/v1/tickets/{ticket_id}/unassign", response_model=Ticket, responses=TICKET_WRITE_ERRORS)
async def unassign_ticket(
    ticket_id: uuid.UUID, response: Response, ctx: TenantStaff, conn: WriteConn, if_match: IfMatch = None
) -> Any:
    await check_if_match(conn, ctx, ticket_id, if_match)
    return tag(response, await line.assign(conn, ctx, ticket_id, None))


@router.get(
    "/v1/employees/{employee_id}/tickets",
    response_model=Page[Ticket],
    responses=READ_ERRORS,
    tags=["employees"],
)
async def employee_tickets(
    employee_id: uuid.UUID,
    ctx: TenantStaff,
    conn: ReadConn,
    page: PageQuery,
    current_state: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
    state_category: Category | None = None,
) -> Any:
    """The tickets assigned to an employee, oldest first; filter by state or category."""
    rows, total = await service.employee_tickets(conn, ctx, employee_id, current_state, state_category, page)
    return page_envelope(rows, total, page)


@router.get(
    "/v1/queues/{queue_id}/tickets", response_model=Page[Ticket], responses=READ_ERRORS, tags=["queues"]
)
async def queue_tickets(queue_id: uuid.UUID, request: Request, ctx: TenantAnyRole, page: PageQuery) -> Any:
    """The queue's active tickets in line order: waiting ones by position, then those in service or ready.
    Display-role keys get no personal data (customer, custom data, employee are null/empty), and no
    estimates when the queue's show_wait_time is false."""
    cache: FeedCache = request.app.state.feed_cache
    key = ("queue tickets", queue_id, ctx.principal.role, page.page, page.limit)

    async def compute() -> bytes:
        async with reading(request) as conn:  # a shared answer needs no connection
            rows, total, show_wait_time = await service.queue_tickets(
                conn, ctx, queue_id, page, TICKET_FIELDS
            )
        data = [_redact(ctx, row, show_wait_time) for row in rows]
        return bytes(trusted_json(page_envelope(data, total, page)).body)

    return Response(await cache.answer(ctx.tenant_id, key, compute), media_type="application/json")


def _redact(ctx: TenantContext, row: dict[str, Any], show_wait_time: bool) -> dict[str, Any]:
    """What a display-role key may see: no personal data, and no estimates when the queue hides them."""
    if ctx.principal.role is not Role.DISPLAY:
        return row
    row.update(customer_id=None, employee_id=None, custom_data={}, customer_page=None)
    if not show_wait_time:
        row.update(
            estimated_wait_minutes=None, original_estimated_wait_minutes=None, actual_wait_minutes=None
        )
    return row


@router.post(
    "/v1/tickets/{ticket_id}/items",
    status_code=201,
    response_model=Item,
    responses=TRANSITION_ERRORS,
    tags=["items"],
)
async def add_item(ticket_id: uuid.UUID, body: ItemCreate, ctx: TenantStaff, conn: WriteConn) -> Any:
    """Add an item; the ticket type's item_definition_ids must list its type (else 400 type_not_allowed)."""
    return await items_service.add_item(conn, ctx, ticket_id, body)


@router.get("/v1/tickets/{ticket_id}/items", response_model=list[Item], responses=READ_ERRORS, tags=["items"])
async def list_items(ticket_id: uuid.UUID, ctx: TenantStaff, conn: ReadConn) -> Any:
    return await items_service.list_items(conn, ctx, ticket_id)


@router.get("/v1/items/{item_id}", response_model=Item, responses=READ_ERRORS, tags=["items"])
async def get_item(item_id: uuid.UUID, ctx: TenantStaff, conn: ReadConn) -> Any:
    return await items_service.get_item(conn, ctx, item_id)


@router.patch("/v1/items/{item_id}", response_model=Item, responses=WRITE_ERRORS, tags=["items"])
@router.put("/v1/items/{item_id}", response_model=Item, responses=WRITE_ERRORS, tags=["items"])
async def update_item(item_id: uuid.UUID, body: ItemUpdate, ctx: TenantStaff, conn: WriteConn) -> Any:
    return await items_service.update_item(conn, ctx, item_id, body)


@router.delete("/v1/items/{item_id}", status_code=204, responses=WRITE_ERRORS, tags=["items"])
async def delete_item(item_id: uuid.UUID, ctx: TenantStaff, conn: WriteConn) -> Response:
    """Remove the item from its ticket (kept, with its history, for the record)."""
    await items_service.delete_item(conn, ctx, item_id)
    return Response(status_code=204)


@router.post(
    "/v1/items/{item_id}/transition",
    response_model=TransitionedItem,
    responses=TRANSITION_ERRORS,
    tags=["items"],
)
async def transition_item(
    item_id: uuid.UUID, body: TransitionRequest, ctx: TenantStaff, conn: WriteConn
) -> Any:
    """Apply a transition of the item's own machine, whatever the ticket's state."""
    return await items_service.transition_item(conn, ctx, item_id, body)


@router.get(
    "/v1/items/{item_id}/history", response_model=list[HistoryEntry], responses=READ_ERRORS, tags=["items"]
)
async def item_history(item_id: uuid.UUID, ctx: TenantStaff, conn: ReadConn) -> Any:
    return await items_service.item_history(conn, ctx, item_id)
