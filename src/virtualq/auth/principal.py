"""Who is calling (the Principal) and which tenant the request acts on."""

import hmac
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from virtualq.auth import keys, repository
from virtualq.db import DB_SCOPE, Record, acquire, after_commit, get_pool, request_state
from virtualq.errors import Forbidden, NotFound, RateLimited, Unauthorized, ValidationFailed
from virtualq.kit.cache import MISSING, TtlCache
from virtualq.kit.ratelimit import Policy
from virtualq.logging import bind_request


class Scope(StrEnum):
    PLATFORM = "platform"
    ACCOUNT = "account"
    TENANT = "tenant"


class Role(StrEnum):
    ADMIN = "admin"
    STAFF = "staff"
    DISPLAY = "display"


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: uuid.UUID | None  # None for the ADMIN_API_KEY from the environment
    scope: Scope
    role: Role
    account_id: uuid.UUID | None
    tenant_id: uuid.UUID | None
    employee_id: uuid.UUID | None

    @property
    def is_platform(self) -> bool:
        return self.scope is Scope.PLATFORM

    def covers_account(self, account_id: uuid.UUID) -> bool:
        return self.is_platform or self.account_id == account_id

    def covers_tenant(self, tenant_id: uuid.UUID, tenant_account_id: uuid.UUID) -> bool:
        if self.scope is Scope.TENANT:
            return self.tenant_id == tenant_id
        return self.covers_account(tenant_account_id)


PLATFORM_ADMIN = Principal(None, Scope.PLATFORM, Role.ADMIN, None, None, None)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key a request carries (`Authorization: Bearer` or `X-API-Key`); 401 for a malformed header."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <key>'")
        return token.strip()
    return headers.get("x-api-key")


@dataclass(frozen=True, slots=True)
class _Caller:
    """What a usable key's row says, as authentication uses it: kept in the key cache instead of the row,
    so that a cached key costs no Principal, enums or label to build again."""

    principal: Principal
    active: bool
    label: str  # the key's id as text: the rate-limit bucket and the log's api_key_id
    limits: tuple[int | None, int | None]


_ADMIN_CALLER = _Caller(PLATFORM_ADMIN, True, "env-admin", (None, None))


def _caller(row: Record) -> _Caller:
    principal = Principal(
        key_id=row["id"],
        scope=Scope(row["scope"]),
        role=Role(row["role"]),
        account_id=row["account_id"],
        tenant_id=row["tenant_id"],
        # An admin key attributed to an employee who has left still works (its authority is the tenant's),
        # but no longer acts as that employee: call-next must not assign someone inactive.
        employee_id=row["employee_id"] if row["employee_active"] else None,
    )
    limits = (row["rate_limit_per_minute"], row["rate_limit_burst"])
    return _Caller(principal, row["owner_active"], str(row["id"]), limits)


async def authenticate(request: Request) -> Principal:
    presented = presented_key(request.headers)
    if not presented:
        raise Unauthorized("an API key is required (Authorization: Bearer <key> or X-API-Key)")
    settings = request.app.state.settings
    admin_key = settings.admin_api_key
    if admin_key is not None and hmac.compare_digest(
        presented.encode(), admin_key.get_secret_value().encode()
    ):
        caller = _ADMIN_CALLER
    else:
        if not keys.looks_like_key(presented):
            raise Unauthorized("the API key is not valid")
        digest = keys.hash_key(presented)
        cache: TtlCache = request.app.state.key_cache
        caller = cache.get(digest)
        if caller is MISSING:
            # Every tenant's rows: the key's employee is read too (once per key while it stays cached).
            async with acquire(get_pool(request), transaction=False, system=True) as conn:
                row = await repository.find_usable_key(conn, digest)
            if row is None:
                raise Unauthorized("the API key is not valid or has been revoked")
            caller = _caller(row)
            cache.put(digest, caller)
        if not caller.active:
            raise Forbidden("the account, tenant or employee of this API key is deactivated")
    principal = caller.principal
    state = request_state(request)
    state["principal"] = principal
    if principal.tenant_id is not None:
        _set_tenant(request, principal.tenant_id)
    bind_request(api_key_id=caller.label)
    policy = rate_policy(settings.rate_limit_per_minute, settings.rate_limit_burst, *caller.limits)
    if policy is not None:
        decision = await request.app.state.rate_limiter.take(caller.label, policy)
        # The middleware puts the X-RateLimit-* headers (and Retry-After) on whatever the answer is.
        state["rate_limit"] = decision
        if not decision.allowed:
            raise RateLimited(
                f"too many requests for this API key; retry in {decision.retry_after} s",
                {"retry_after": decision.retry_after, "limit": decision.limit},
            )
    return principal


def stream_key(request: Request) -> bytes | None:
    """The hash of the stored API key a request presented, for an event stream to be checked again when
    keys change (None for the ADMIN_API_KEY of the environment, which no API call revokes)."""
    presented = presented_key(request.headers)
    admin_key = request.app.state.settings.admin_api_key
    if not presented or (
        admin_key is not None
        and hmac.compare_digest(presented.encode(), admin_key.get_secret_value().encode())
    ):
        return None
    return keys.hash_key(presented)


async def key_still_usable(app: Any, digest: bytes) -> bool:
    """Whether streams opened with the key of this hash may go on: it is not revoked (or gone), and its
    account, tenant and, for a staff key, employee are active; read as authentication reads it."""
    cache: TtlCache = app.state.key_cache
    caller = cache.get(digest)
    if caller is MISSING:
        async with acquire(app.state.pool, transaction=False, system=True) as conn:
            row = await repository.find_usable_key(conn, digest)
        if row is None:
            return False
        caller = _caller(row)
        cache.put(digest, caller)
    return bool(caller.active)


def _set_tenant(request: Request, tenant_id: uuid.UUID) -> None:
    """The request's tenant, for the access log (`tenant_id`) and for what runs after a commit (`tenant`)."""
    state = request_state(request)
    state["tenant_id"] = str(tenant_id)
    state["tenant"] = tenant_id


def rate_policy(
    default_per_minute: int, default_burst: int, key_per_minute: int | None, key_burst: int | None
) -> Policy | None:
    """The key's bucket, or None when it is not limited (limits off for the server, or 0 for the key)."""
    if default_per_minute == 0 or default_burst == 0:
        return None
    per_minute = default_per_minute if key_per_minute is None else key_per_minute
    if per_minute == 0:
        return None
    if key_burst is not None:
        burst = key_burst
    elif key_per_minute is None:
        burst = default_burst
    else:
        burst = 2 * key_per_minute
    return Policy(per_minute=per_minute, burst=burst)


def check_role(principal: Principal, allowed: frozenset[Role]) -> Principal:
    if principal.role not in allowed:
        raise Forbidden(f"the {principal.role} role may not do this")
    return principal


CallerCheck = Callable[[Request, Principal], Awaitable[object]]
# The checks of the caller a dependency makes (role, scope, tenant) that read nothing but the principal and
# the request's headers and query, by dependency: what kit/exception_handlers.py runs, after `authenticate`,
# for a route whose body cannot be parsed, so that the caller hears the 403 any request of theirs would get.
CALLER_CHECKS: dict[Callable[..., Any], CallerCheck] = {}


def _checking_caller(dependency: Callable[..., Any], before_body: CallerCheck) -> Any:
    """`Depends(dependency)`, with `before_body` registered as its check of the caller."""
    CALLER_CHECKS[dependency] = before_body
    return Depends(dependency)


def require_roles(*roles: Role) -> object:
    allowed = frozenset(roles)

    async def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        return check_role(principal, allowed)

    async def before_body(request: Request, principal: Principal) -> None:
        check_role(principal, allowed)

    return _checking_caller(dependency, before_body)


def require_scopes(scopes: Iterable[Scope], refusal: str, *roles: Role) -> object:
    """`require_roles(*roles)`, then the key's scope among `scopes`, else 403 with `refusal`. A check of the
    caller alone, in a dependency: a route that takes a body refuses the caller before the body's syntax."""
    allowed = frozenset(scopes)
    role_check = require_roles(*roles)

    def check_scope(principal: Principal) -> Principal:
        if principal.scope not in allowed:
            raise Forbidden(refusal)
        return principal

    async def dependency(principal: Annotated[Principal, role_check]) -> Principal:
        return check_scope(principal)

    async def before_body(request: Request, principal: Principal) -> None:
        check_scope(principal)

    return _checking_caller(dependency, before_body)


ABOVE_TENANT = (Scope.PLATFORM, Scope.ACCOUNT)
AnyRole = Annotated[Principal, require_roles(Role.ADMIN, Role.STAFF, Role.DISPLAY)]
StaffOrAdmin = Annotated[Principal, require_roles(Role.ADMIN, Role.STAFF)]
AdminOnly = Annotated[Principal, require_roles(Role.ADMIN)]


@dataclass(frozen=True, slots=True)
class TenantContext:
    tenant_id: uuid.UUID
    account_id: uuid.UUID
    principal: Principal


async def resolve_tenant(
    request: Request, principal: Principal, tenant_id: uuid.UUID | None
) -> TenantContext:
    """Check that `principal` may act on `tenant_id` (or its own tenant): 400 missing, 403 out of scope."""
    if tenant_id is None:
        if principal.tenant_id is None:
            raise ValidationFailed(
                "a tenant is required: send the X-Tenant-ID header or the tenant_id parameter",
                {"field": "X-Tenant-ID"},
            )
        tenant_id = principal.tenant_id
    if principal.scope is Scope.TENANT and tenant_id != principal.tenant_id:
        raise Forbidden("this API key may not act on that tenant")
    accounts: TtlCache = request.app.state.tenant_accounts
    account_id = accounts.get(tenant_id)
    if account_id is MISSING:
        async with acquire(get_pool(request), transaction=False, unscoped=True) as conn:
            account_id = await repository.tenant_account(conn, tenant_id)
        if account_id is not None:
            accounts.put(tenant_id, account_id)  # a tenant never changes account
    if account_id is None or not principal.covers_tenant(tenant_id, account_id):
        if principal.is_platform:
            raise NotFound("tenant not found")
        # Out of scope and nonexistent look the same, so nothing leaks about other accounts.
        raise Forbidden("this API key may not act on that tenant")
    _set_tenant(request, tenant_id)
    DB_SCOPE.set(str(tenant_id))  # row-level security: this request's connections see this tenant only
    bind_request(tenant_id=str(tenant_id))
    return TenantContext(tenant_id=tenant_id, account_id=account_id, principal=principal)


def act_by_link(request: Request, tenant_id: uuid.UUID, account_id: uuid.UUID) -> TenantContext:
    """The tenant context of a keyless request whose link's token named the tenant (a self-join, a
    customer leaving the line): scoped as `resolve_tenant` scopes a key's request, acting as no key and no
    employee."""
    _set_tenant(request, tenant_id)
    DB_SCOPE.set(str(tenant_id))  # row-level security: the link's tenant only
    bind_request(tenant_id=str(tenant_id))
    principal = Principal(None, Scope.TENANT, Role.STAFF, account_id, tenant_id, None)
    return TenantContext(tenant_id=tenant_id, account_id=account_id, principal=principal)


def tenant_context(*roles: Role) -> object:
    role_check = require_roles(*roles)

    async def dependency(
        request: Request,
        principal: Annotated[Principal, role_check],
        x_tenant_id: Annotated[
            uuid.UUID | None, Header(description="The tenant to act on (or use the tenant_id parameter).")
        ] = None,
        tenant_id: Annotated[uuid.UUID | None, Query(description="The tenant to act on.")] = None,
    ) -> TenantContext:
        return await resolve_tenant(request, principal, named_tenant(x_tenant_id, tenant_id))

    async def before_body(request: Request, principal: Principal) -> None:
        readable, named = _tenant_of(request)
        if readable:
            await resolve_tenant(request, principal, named)

    return _checking_caller(dependency, before_body)


def named_tenant(x_tenant_id: uuid.UUID | None, tenant_id: uuid.UUID | None) -> uuid.UUID | None:
    """The tenant a request names, by header or parameter; 400 when the two disagree."""
    if x_tenant_id is not None and tenant_id is not None and x_tenant_id != tenant_id:
        raise ValidationFailed(
            "the X-Tenant-ID header and the tenant_id parameter disagree", {"field": "tenant_id"}
        )
    return x_tenant_id or tenant_id


_TENANT_ID = TypeAdapter(uuid.UUID)  # how FastAPI reads the header and the parameter (pydantic, lax)


def _tenant_of(request: Request) -> tuple[bool, uuid.UUID | None]:
    """Whether the tenant the request names can be read as the dependency reads it, and the tenant. A value
    that is not a UUID makes the request a 400 either way: there is no tenant to check."""
    header, query = request.headers.get("x-tenant-id"), request.query_params.get("tenant_id")
    try:
        by_header = _TENANT_ID.validate_python(header) if header is not None else None
        by_query = _TENANT_ID.validate_python(query) if query is not None else None
    except PydanticValidationError:
        return False, None
    return True, named_tenant(by_header, by_query)


async def act_for_tenant(
    request: Request, allowed: frozenset[Role], tenant_id: uuid.UUID | None
) -> TenantContext:
    """What `tenant_context(*allowed)` gives a route, for a fast path (kit/fastpath.py) that has already
    read the tenant it names (the X-Tenant-ID header; a tenant_id parameter makes it no fast path)."""
    return await resolve_tenant(request, check_role(await authenticate(request), allowed), tenant_id)


STAFF_ROLES = frozenset({Role.ADMIN, Role.STAFF})
TenantAdmin = Annotated[TenantContext, tenant_context(Role.ADMIN)]
TenantStaff = Annotated[TenantContext, tenant_context(Role.ADMIN, Role.STAFF)]
TenantAnyRole = Annotated[TenantContext, tenant_context(Role.ADMIN, Role.STAFF, Role.DISPLAY)]


def optional_tenant_context(*roles: Role) -> Any:
    """Like tenant_context, but None when no tenant is named and the key is not tenant-bound."""
    role_check = require_roles(*roles)

    async def dependency(
        request: Request,
        principal: Annotated[Principal, role_check],
        x_tenant_id: Annotated[
            uuid.UUID | None, Header(description="The tenant to act on (or use the tenant_id parameter).")
        ] = None,
        tenant_id: Annotated[uuid.UUID | None, Query(description="The tenant to act on.")] = None,
    ) -> TenantContext | PrincipalOnly:
        named = named_tenant(x_tenant_id, tenant_id)
        if named is None and principal.tenant_id is None:
            return PrincipalOnly(principal)
        return await resolve_tenant(request, principal, named)

    async def before_body(request: Request, principal: Principal) -> None:
        readable, named = _tenant_of(request)
        if readable and (named is not None or principal.tenant_id is not None):
            await resolve_tenant(request, principal, named)

    return _checking_caller(dependency, before_body)


@dataclass(frozen=True, slots=True)
class PrincipalOnly:
    """No tenant context: the caller acts on platform-level (system) data only."""

    principal: Principal
    tenant_id: None = None


MaybeTenantAdmin = Annotated[TenantContext | PrincipalOnly, optional_tenant_context(Role.ADMIN)]
MaybeTenantStaff = Annotated[TenantContext | PrincipalOnly, optional_tenant_context(Role.ADMIN, Role.STAFF)]


def invalidate_keys(request: Request) -> None:
    """After this request commits, forget cached keys here and tell the other processes."""

    async def clear() -> None:
        hub = getattr(request.app.state, "event_hub", None)
        if hub is not None:  # the cache, and this process's open streams checked again
            hub.keys_changed()
        else:
            request.app.state.key_cache.clear()
        notify = request.app.state.on_keys_changed
        if notify is not None:
            await notify()

    after_commit(request, clear)
