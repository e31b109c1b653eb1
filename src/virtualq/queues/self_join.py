"""Self-service join: customers take a ticket themselves through a queue's public link (docs/workflows.md).

An admin turns it on by naming the type such tickets get (`self_join_type_definition_id`). The link is
`/join/{token}`: a page with a form (a name, and the type's required custom fields), backed by
`GET|POST /v1/public/join/{token}`. The token opens that one form and nothing else; it is made when
self-join is first turned on and replaced by `POST /v1/queues/{id}/rotate-join-link`.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from virtualq.db import Connection, Record
from virtualq.errors import ValidationFailed
from virtualq.fsm import Category
from virtualq.type_definitions import repository as types
from virtualq.type_definitions.compiled import compiled

FIELD = "self_join_type_definition_id"
NOT_IN_USE = "this join link is not in use (self-join is off, or the link was replaced)"
SIMPLE_TYPES = {"string": "text", "integer": "integer", "number": "number", "boolean": "boolean"}


def new_token() -> str:
    """128 random bits, URL-safe: short enough for a QR code, too many to guess."""
    return secrets.token_urlsafe(16)


def _form_field(name: str, schema: Any) -> dict[str, Any] | None:
    """How the join page asks for one required field, or None when a form cannot (an object, a list)."""
    field: dict[str, Any] = {"name": name, "title": name.replace("_", " ").capitalize()}
    if schema is True or schema == {}:
        return {**field, "kind": "text"}  # anything goes: text will do
    if not isinstance(schema, dict):
        return None
    if isinstance(schema.get("title"), str) and schema["title"].strip():
        field["title"] = schema["title"].strip()[:100]
    choices = schema.get("enum")
    if "const" in schema:
        choices = [schema["const"]]
    if isinstance(choices, list):
        if not choices or not all(isinstance(c, (str, int, float, bool)) for c in choices):
            return None
        return {**field, "kind": "choice", "choices": choices}
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]: a value of the first kind is what the form sends
        kind = next((k for k in kind if k != "null"), None)
    if kind not in SIMPLE_TYPES:
        return None
    field["kind"] = SIMPLE_TYPES[kind]
    for source, target in (
        ("minLength", "min_length"),
        ("maxLength", "max_length"),
        ("minimum", "minimum"),
        ("maximum", "maximum"),
    ):
        value = schema.get(source)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            field[target] = value
    return field


def form_fields(custom_fields_schema: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The fields the join form asks for (the schema's required top-level properties, in its order) and
    the names of those no form can ask for. Optional fields are left to staff: a type may hold notes that
    customers should not fill in or see."""
    if not isinstance(custom_fields_schema, dict):
        return [], []
    required = custom_fields_schema.get("required")
    if not isinstance(required, list):
        return [], []
    properties = custom_fields_schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    fields, unaskable = [], []
    for name in dict.fromkeys(n for n in required if isinstance(n, str)):
        field = _form_field(name, properties.get(name, True))
        if field is None:
            unaskable.append(name)
        else:
            fields.append(field)
    return fields, unaskable


async def check_type(
    conn: Connection, tenant_id: uuid.UUID, type_id: uuid.UUID, allowed: list[uuid.UUID] | None
) -> None:
    """400 unless `type_id` can be a queue's self-join type: an active ticket type of the tenant (or a
    system type) that the queue allows, whose tickets start in line and whose required fields a form can
    ask for."""

    def refuse(message: str) -> ValidationFailed:
        return ValidationFailed(message, {"field": FIELD})

    row = await types.get_visible(conn, tenant_id, type_id)
    if row is None or not row["is_active"]:
        raise refuse(f"{FIELD} must name an active type of this tenant or a system type")
    if allowed and type_id not in allowed:
        raise refuse(f"{FIELD} must be one of the queue's allowed_type_definition_ids")
    machine = compiled(row["id"], row["version"], row["fsm_schema"], row["custom_fields_schema"]).machine
    if machine is None:
        raise refuse(f"{FIELD} must name a ticket type (one with a state machine)")
    if machine.category(machine.init) is not Category.WAITING:
        raise refuse(
            f"{FIELD} must name a type whose tickets start in line (its init state in the waiting category)"
        )
    _, unaskable = form_fields(row["custom_fields_schema"])
    if unaskable:
        raise ValidationFailed(
            "a join form can ask only for text, numbers, yes/no and choices; this type requires "
            + ", ".join(unaskable),
            {"field": FIELD, "fields": unaskable},
        )


def fits(type_row: Record) -> bool:
    """Whether a self-join type (its row from JOIN_SQL) still passes `check_type`'s rules: it may have been
    changed since it was chosen (its first state out of the line, a field no form can ask for)."""
    if not type_row["type_is_active"] or type_row["fsm_schema"] is None:
        return False
    machine = compiled(
        type_row["self_join_type_definition_id"],
        type_row["type_version"],
        type_row["fsm_schema"],
        type_row["custom_fields_schema"],
    ).machine
    if machine is None or machine.category(machine.init) is not Category.WAITING:
        return False
    return not form_fields(type_row["custom_fields_schema"])[1]


def check_answers(custom_data: dict[str, Any], fields: list[dict[str, Any]]) -> None:
    """400 for custom data the form does not ask for: the type's other fields are for staff to fill."""
    asked = {field["name"] for field in fields}
    unknown = sorted(key for key in custom_data if key not in asked)
    if unknown:
        raise ValidationFailed(
            "custom_data may hold only the join form's fields: " + ", ".join(sorted(asked) or ["none"]),
            {"field": "custom_data", "unknown": unknown[:20]},
        )


JOIN_SQL = """
SELECT q.tenant_id, q.id, q.name, q.is_active, q.show_wait_time, q.wait_estimation_method,
       q.manual_wait_minutes, q.self_join_type_definition_id, te.account_id,
       td.custom_fields_schema, td.fsm_schema, td.version AS type_version, td.is_active AS type_is_active,
       queue_waiting_count(q.tenant_id, q.id) AS waiting
  FROM queues q JOIN tenants te ON te.id = q.tenant_id
  JOIN accounts a ON a.id = te.account_id
  LEFT JOIN type_definitions td ON td.id = q.self_join_type_definition_id
 WHERE q.join_token = $1 AND q.self_join_type_definition_id IS NOT NULL AND te.is_active AND a.is_active
"""


async def queue_by_token(conn: Connection, token: str) -> Record | None:
    """The queue whose join link carries `token`, while self-join is on (any tenant: a system read)."""
    row: Record | None = await conn.fetchrow(JOIN_SQL, token)
    return row


# In the join's own transaction: the link is still this queue's, for this type, and stays so until the
# ticket commits (a rotation or switching self-join off waits for the row lock, and then takes effect).
LIVE_SQL = """
SELECT is_active FROM queues
 WHERE tenant_id = $1 AND id = $2 AND join_token = $3 AND self_join_type_definition_id = $4
   FOR SHARE
"""


async def still_live(conn: Connection, queue: Record, token: str) -> bool | None:
    """None: the link is no longer this queue's (replaced, or self-join off or on another type); else
    whether the queue is open."""
    active: bool | None = await conn.fetchval(LIVE_SQL, queue["tenant_id"], queue["id"], token, queue[FIELD])
    return active
