"""Self-service join: the page at a queue's `join_page`, its QR code, and the public API behind them (no API
key; the link's token says which queue). See queues/self_join.py and docs/workflows.md."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections import OrderedDict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from virtualq.auth.principal import act_by_link
from virtualq.customers import repository as customers
from virtualq.db import acquire, get_pool, request_state, writing_transaction
from virtualq.errors import Conflict, NotFound, QueueDisabled, RateLimited, TypeNotAllowed, ValidationFailed
from virtualq.kit.ids import new_id
from virtualq.kit.ratelimit import Policy
from virtualq.kit.routing import error_responses
from virtualq.kit.schemas import InputModel, JsonObject, Name
from virtualq.queues import self_join
from virtualq.queues.estimates import Estimator, minutes_for
from virtualq.tickets import service as tickets
from virtualq.tickets.schemas import TicketCreate
from virtualq.web.router import PAGE_HEADERS, PAGES

pages = APIRouter(include_in_schema=False)
public = APIRouter(tags=["customer"])

# A token as new_token() makes them; anything else is refused (400) before any database read.
Token = Annotated[
    str,
    Path(
        min_length=16,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The token in the queue's join_page link.",
    ),
]
NOT_IN_USE = self_join.NOT_IN_USE


class FormField(BaseModel):
    name: str = Field(description="The custom_data key.")
    title: str = Field(description="The schema's title, else the name.")
    kind: Literal["text", "integer", "number", "boolean", "choice"]
    choices: list[Any] | None = Field(default=None, description="For a choice: the values to offer.")
    min_length: int | None = None
    max_length: int | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None


class JoinForm(BaseModel):
    queue_name: str
    accepting: bool = Field(
        description="False while the queue is disabled, or its self-join type is deactivated or no longer "
        "fits (changed since it was chosen): a join is refused with 409."
    )
    waiting: int = Field(description="Tickets in line now.")
    estimated_wait_minutes: int | None = Field(
        description="For someone joining now; null when the queue hides wait times or has no estimate."
    )
    show_wait_time: bool
    fields: list[FormField] = Field(
        description="What to ask for in custom_data: the type's required fields (optional ones are staff's)."
    )


class JoinRequest(InputModel):
    fname: Name | None = Field(default=None, examples=["Ana"], description='Shown on the wall as "Ana L.".')
    lname: Name | None = Field(default=None, examples=["Lopez"])
    custom_data: JsonObject = Field(
        default_factory=dict, description="The form's fields, validated against the type's schema."
    )


class JoinedTicket(BaseModel):
    id: Any
    display_code: str
    queue_name: str
    position: int | None
    estimated_wait_minutes: int | None = Field(description="Null when the queue hides wait times.")
    customer_page: str = Field(description="The customer's own page for this ticket (its token included).")


def _page(name: str) -> FileResponse:
    return FileResponse(PAGES / name, media_type="text/html", headers=PAGE_HEADERS)


@pages.get("/join/{token}")
async def join_page(token: str) -> FileResponse:
    # Any token: a link that is not (or no longer) in use gets the page, which says so.
    return _page("join.html")


# A base longer than this (a forged or odd Host header, without PUBLIC_BASE_URL) makes no QR code.
MAX_QR_BASE = 200
_qr_cache: OrderedDict[str, bytes] = OrderedDict()
QR_CACHE_SIZE = 256


@pages.get("/join/{token}/qr.svg")
async def join_qr(token: Token, request: Request) -> Response:
    """The join link as a QR code to print (SVG). The link is absolute: PUBLIC_BASE_URL if set, else the
    address this request came to (set PUBLIC_BASE_URL before printing one)."""
    async with acquire(get_pool(request), transaction=False, system=True) as conn:
        queue = await self_join.queue_by_token(conn, token)
    if queue is None:
        raise NotFound(NOT_IN_USE)
    await _take(request, "read", queue["id"], READS_PER_JOIN)
    base = request.app.state.settings.public_base_url or str(request.base_url).rstrip("/")
    if len(base) > MAX_QR_BASE:
        raise ValidationFailed(
            "this address is too long for a QR code; set PUBLIC_BASE_URL", {"field": "Host"}
        )
    link = f"{base}/join/{token}"
    svg = _qr_cache.get(link)
    if svg is None:
        svg = await asyncio.to_thread(_qr_svg, link)  # ~15 ms of pure Python: off the event loop
        _qr_cache[link] = svg
        if len(_qr_cache) > QR_CACHE_SIZE:
            _qr_cache.popitem(last=False)
    return Response(
        svg,
        media_type="image/svg+xml",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


def _qr_svg(text: str) -> bytes:
    import qrcode  # type: ignore[import-untyped]  # only the printing of a code needs it
    from qrcode.image.svg import SvgPathFillImage  # type: ignore[import-untyped]

    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=4)
    code.add_data(text)
    code.make(fit=True)
    out = io.BytesIO()
    code.make_image(image_factory=SvgPathFillImage).save(out)
    return out.getvalue()


async def _form(conn: Any, queue: Any) -> dict[str, Any]:
    fields, _ = self_join.form_fields(queue["custom_fields_schema"])
    estimate = None
    if queue["show_wait_time"]:
        estimator = Estimator(conn, queue["tenant_id"])
        estimator.remember_queue(queue)
        pair = (queue["id"], queue["self_join_type_definition_id"])
        await estimator.paces_for([pair])
        estimate = minutes_for(queue["waiting"] + 1, estimator.pace_of(*pair))
    return {
        "queue_name": queue["name"],
        "accepting": bool(queue["is_active"] and self_join.fits(queue)),
        "waiting": queue["waiting"],
        "estimated_wait_minutes": estimate,
        "show_wait_time": queue["show_wait_time"],
        "fields": fields,
    }


@public.get("/v1/public/join/{token}", response_model=JoinForm, responses=error_responses(400, 404))
async def join_form(token: Token, request: Request) -> Any:
    """What the join page shows: the queue's name, the line, and the fields to ask for (no API key).
    `accepting` is false while the queue is closed or its self-join type no longer fits (deactivated, or
    changed so that its tickets no longer start in line or a form cannot ask for its required fields)."""
    async with acquire(get_pool(request), transaction=False, system=True) as conn:
        queue = await self_join.queue_by_token(conn, token)
        if queue is None:
            raise NotFound(NOT_IN_USE)
        await _take(request, "read", queue["id"], READS_PER_JOIN)
        return await _form(conn, queue)


# Reading the form or the QR code draws from a bucket of its own, this many times the joins' (a kiosk
# reads the form again after each join).
READS_PER_JOIN = 3


async def _take(request: Request, bucket: str, queue_id: Any, scale: int = 1) -> None:
    """Rate limit per client address and link (a kiosk is one address for every customer it serves)."""
    settings = request.app.state.settings
    if settings.self_join_rate_per_minute <= 0:
        return
    policy = Policy(settings.self_join_rate_per_minute * scale, settings.self_join_rate_burst * scale)
    client = request.scope.get("client")
    address = client[0] if client else "unknown"
    decision = await request.app.state.rate_limiter.take(f"{bucket}:{queue_id}:{address}", policy)
    request_state(request)["rate_limit"] = decision
    if not decision.allowed:
        raise RateLimited(
            f"too many requests from this address; retry in {decision.retry_after} s",
            {"retry_after": decision.retry_after, "limit": decision.limit},
        )


async def admit_replay(request: Request, token: str) -> None:
    """Before an idempotent join's stored answer is replayed (kit/idempotency.py): 404 if the link is no
    longer in use, 429 if the address is over its joins."""
    async with acquire(get_pool(request), transaction=False, system=True) as conn:
        queue = await self_join.queue_by_token(conn, token)
    if queue is None:
        raise NotFound(NOT_IN_USE)
    await _take(request, "join", queue["id"])


@public.post(
    "/v1/public/join/{token}",
    status_code=201,
    response_model=JoinedTicket,
    responses=error_responses(400, 404, 409, 413, 429),
)
async def join_queue(token: Token, body: JoinRequest, request: Request) -> Any:
    """Take a ticket in the queue whose join link this is (no API key). A name, if given, becomes a new
    customer (the wall shows "Ana L."); the answer's `customer_page` is the customer's own page. 409 while
    the queue is closed; 429 after `SELF_JOIN_RATE_PER_MINUTE` joins a minute from one address."""
    async with acquire(get_pool(request), transaction=False, system=True) as conn:
        queue = await self_join.queue_by_token(conn, token)
    if queue is None:
        raise NotFound(NOT_IN_USE)
    await _take(request, "join", queue["id"])
    # The refusals name no ids: the link is all the public knows of the queue.
    if not queue["is_active"]:
        raise QueueDisabled("the queue is closed and accepts no new tickets")
    if not self_join.fits(queue):
        raise Conflict("this queue is not taking sign-ins right now")
    self_join.check_answers(body.custom_data, self_join.form_fields(queue["custom_fields_schema"])[0])
    ctx = act_by_link(request, queue["tenant_id"], queue["account_id"])
    async with writing_transaction(request) as conn:
        live = await self_join.still_live(conn, queue, token)
        if live is None:
            raise NotFound(NOT_IN_USE)  # replaced or switched off since it was read
        if not live:
            raise QueueDisabled("the queue is closed and accepts no new tickets")  # closed since
        customer_id = None
        if body.fname is not None or body.lname is not None:
            customer_id = new_id()
            await customers.insert(
                conn, customer_id, ctx.account_id, {"fname": body.fname, "lname": body.lname}
            )
        create = TicketCreate.model_construct(
            tenant_id=None,
            # uuid.UUID, as a parsed body holds: the insert sends the ticket as JSON, which knows no other.
            queue_id=uuid.UUID(bytes=queue["id"].bytes),
            type_definition_id=uuid.UUID(bytes=queue["self_join_type_definition_id"].bytes),
            customer_id=customer_id,
            references_ticket_id=None,
            custom_data=body.custom_data,
            estimated_wait_minutes=None,
            ttl_minutes=None,
        )
        try:
            ticket = await tickets.create_ticket(conn, ctx, create, request.app.state.create_batching)
        except (QueueDisabled, TypeNotAllowed):  # changed since the link was read: as then, no ids
            raise Conflict("this queue is not taking sign-ins right now") from None
        if ticket["state_category"] != "waiting":
            # The type changed between the check and the insert so that its tickets skip the line: the
            # transaction rolls back, nothing stands.
            raise Conflict("this queue is not taking sign-ins right now")
    return {
        "id": ticket["id"],
        "display_code": ticket["display_code"],
        "queue_name": queue["name"],
        "position": ticket.get("position"),
        "estimated_wait_minutes": ticket["estimated_wait_minutes"] if queue["show_wait_time"] else None,
        "customer_page": ticket["customer_page"],
    }
