"""Rules for type definitions: validated machines and schemas, system types for platform admins only."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from virtualq.auth.principal import PrincipalOnly, TenantContext
from virtualq.db import Connection, Record
from virtualq.errors import Conflict, Forbidden, ValidationFailed, not_found
from virtualq.fsm import Machine, MachineInvalid
from virtualq.kit.ids import new_id
from virtualq.kit.pagination import PageParams
from virtualq.kit.schemas import CommonFilters
from virtualq.type_definitions import repository
from virtualq.type_definitions.compiled import CompiledType, compiled, json_schema_problems
from virtualq.type_definitions.schemas import TypeDefinitionCreate, TypeDefinitionUpdate

Context = TenantContext | PrincipalOnly


def compile_row(row: Record) -> CompiledType:
    return compiled(row["id"], row["version"], row["fsm_schema"], row["custom_fields_schema"])


def to_output(row: Record) -> dict[str, Any]:
    machine = compile_row(row).machine
    categories = (
        {state: category.value for state, category in machine.categories.items()} if machine else None
    )
    return {**dict(row), "state_categories": categories}


async def _check_definition(
    conn: Connection, tenant_id: uuid.UUID | None, fields: dict[str, Any]
) -> Machine | None:
    """Every problem with the machine, the schema and the item types, in one 400."""
    problems: dict[str, Any] = {}
    machine = None
    if fields.get("fsm_schema") is not None:
        try:
            machine = Machine.from_schema(fields["fsm_schema"])
        except MachineInvalid as exc:
            problems["fsm_schema"] = exc.problems
    if fields.get("custom_fields_schema") is not None:
        schema_problems = json_schema_problems(fields["custom_fields_schema"])
        if schema_problems:
            problems["custom_fields_schema"] = schema_problems
    item_ids = list(dict.fromkeys(fields.get("item_definition_ids") or []))
    if item_ids and await repository.count_visible(conn, tenant_id, item_ids) != len(item_ids):
        problems["item_definition_ids"] = [
            "every id must name an active type of this tenant or a system type"
        ]
    if problems:
        raise ValidationFailed("the type definition is not valid", problems)
    return machine


def _tenant_of(ctx: Context) -> uuid.UUID | None:
    return ctx.tenant_id if isinstance(ctx, TenantContext) else None


async def create_type(conn: Connection, ctx: Context, body: TypeDefinitionCreate) -> Record:
    if body.is_system_defined:
        if not ctx.principal.is_platform:
            raise Forbidden("only platform admins create system types")
        if body.tenant_id is not None:
            raise ValidationFailed("a system type has no tenant_id", {"field": "tenant_id"})
        tenant_id = None
    else:
        if not isinstance(ctx, TenantContext):
            raise ValidationFailed(
                "a tenant is required: send X-Tenant-ID (or set is_system_defined for a system type)",
                {"field": "X-Tenant-ID"},
            )
        if body.tenant_id is not None and body.tenant_id != ctx.tenant_id:
            raise ValidationFailed(
                "tenant_id in the body disagrees with the tenant context", {"field": "tenant_id"}
            )
        tenant_id = ctx.tenant_id
    fields = body.model_dump(exclude={"is_system_defined", "tenant_id"})
    fields["item_definition_ids"] = list(dict.fromkeys(fields["item_definition_ids"]))
    await _check_definition(conn, tenant_id, fields)
    try:
        async with conn.transaction():
            return await repository.insert(conn, new_id(), tenant_id, fields)
    except asyncpg.UniqueViolationError:
        raise Conflict(f"type_code {body.type_code!r} is already used", {"field": "type_code"}) from None


async def get_type(conn: Connection, ctx: Context, type_id: uuid.UUID) -> Record:
    row = await repository.get_visible(conn, _tenant_of(ctx), type_id)
    if row is None:
        raise not_found("type definition")
    return row


async def list_types(
    conn: Connection, ctx: Context, filters: CommonFilters, include_system: bool, params: PageParams
) -> tuple[list[Record], int]:
    tenant_id = _tenant_of(ctx)
    return await repository.list_page(conn, tenant_id, filters, include_system or tenant_id is None, params)


async def update_type(
    conn: Connection, ctx: Context, type_id: uuid.UUID, body: TypeDefinitionUpdate
) -> Record:
    current = await get_type(conn, ctx, type_id)
    if current["tenant_id"] is None and not ctx.principal.is_platform:
        raise Forbidden("system types are read-only to tenants")
    changes = body.changes()
    if not changes:
        return current
    if "item_definition_ids" in changes:
        changes["item_definition_ids"] = list(dict.fromkeys(changes["item_definition_ids"]))
    machine = await _check_definition(conn, current["tenant_id"], changes)
    if machine is not None:
        # Row-lock the type so no ticket enters a state we are about to drop while we check.
        await conn.execute("SELECT 1 FROM type_definitions WHERE id = $1 FOR UPDATE", type_id)
        dropped = [
            state
            for state in await repository.live_states_in_use(conn, type_id)
            if state not in machine.states
        ]
        if dropped:
            raise Conflict(
                "live tickets or items are in states this change removes", {"states_in_use": dropped}
            )
    schema_changed = bool({"fsm_schema", "custom_fields_schema"} & changes.keys())
    return await repository.update(conn, type_id, changes, bump_version=schema_changed)


async def deactivate_type(conn: Connection, ctx: Context, type_id: uuid.UUID) -> None:
    current = await get_type(conn, ctx, type_id)
    if current["tenant_id"] is None and not ctx.principal.is_platform:
        raise Forbidden("system types are read-only to tenants")
    await repository.update(conn, type_id, {"is_active": False}, bump_version=False)
