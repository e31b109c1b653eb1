"""Row-level security, the second wall between tenants (migration 0008): the server's connections act as
`virtualq_app`, which cannot bypass the policies, and see only the rows of the request's tenant. A query
that forgets its tenant filter returns nothing of another tenant, and cannot write into one."""

from __future__ import annotations

import contextlib
import importlib
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests.helpers import Api
from tests.test_ticket_flows import coffee, ok
from virtualq.db import DB_SCOPE, acquire

# The tables migrations 0008, 0010 and 0018 protect: exactly the ones distributed by tenant_id
# (tests/test_distribution.py).
TENANT_TABLES: tuple[str, ...] = tuple(
    table
    for migration in ("0008_row_security", "0010_waiting_counts", "0018_event_prune_marks")
    for table in importlib.import_module(f"virtualq.migrations.versions.{migration}").TENANT_TABLES
)
# Those that existed when 0012 rewrote every policy in its once-per-statement form (later ones start in it).
BEFORE_0012 = tuple(
    table
    for migration in ("0008_row_security", "0010_waiting_counts")
    for table in importlib.import_module(f"virtualq.migrations.versions.{migration}").TENANT_TABLES
)


async def _two_tenants_with_data(client: httpx.AsyncClient, api: Api) -> tuple[Any, Any, str]:
    """Two tenants, each with an employee, a webhook, a ticket with an item, history and events."""
    tenants = []
    for _ in range(2):
        t, queue, order = await coffee(client, api)
        ok(
            await client.post(
                "/v1/employees",
                json={"fname": "Sam", "lname": "Lee", "email": f"{uuid.uuid4().hex}@example.com"},
                headers=t.h,
            ),
            201,
        )
        ok(
            await client.post(
                "/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "event_types": []}, headers=t.h
            ),
            201,
        )
        ticket = await t.ticket(queue, order)
        await t.move(ticket["id"], "start_preparation")
        tenants.append(t)
    return tenants[0], tenants[1], ticket["id"]


@contextlib.contextmanager
def scoped(value: str) -> Iterator[None]:
    """Set the row-security scope the way a request does, and put it back afterwards."""
    token = DB_SCOPE.set(value)
    try:
        yield
    finally:
        DB_SCOPE.reset(token)


async def test_a_query_without_its_tenant_filter_sees_only_the_current_tenant(
    client: httpx.AsyncClient, api: Api, app: Any
) -> None:
    a, b, _ = await _two_tenants_with_data(client, api)
    with scoped(a.id):
        async with acquire(app.state.pool, transaction=False) as conn:
            for table in TENANT_TABLES:
                # Deliberately no WHERE tenant_id = ...: the policy is all that stands between the tenants.
                seen = {row["tenant_id"] for row in await conn.fetch(f"SELECT tenant_id FROM {table}")}
                assert seen <= {uuid.UUID(a.id)}, (table, seen)
                if table in ("employees", "queues", "tickets", "ticket_history", "events", "webhooks"):
                    assert seen == {uuid.UUID(a.id)}, table
            b_rows = await conn.fetchval("SELECT count(*) FROM tickets WHERE tenant_id = $1", uuid.UUID(b.id))
            assert b_rows == 0

    with scoped(""):  # before a request's tenant is known: nothing at all
        async with acquire(app.state.pool, transaction=False) as conn:
            for table in TENANT_TABLES:
                assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table

    async with acquire(app.state.pool, transaction=False, system=True) as conn:
        seen = {row["tenant_id"] for row in await conn.fetch("SELECT DISTINCT tenant_id FROM tickets")}
        assert {uuid.UUID(a.id), uuid.UUID(b.id)} <= seen


async def test_no_write_reaches_another_tenant(
    client: httpx.AsyncClient, api: Api, app: Any, db: asyncpg.Connection
) -> None:
    a, b, b_ticket = await _two_tenants_with_data(client, api)
    before = await db.fetchrow("SELECT version, custom_data FROM tickets WHERE id = $1", uuid.UUID(b_ticket))
    with scoped(a.id):
        await _write_across(app, b, b_ticket)
    after = await db.fetchrow("SELECT version, custom_data FROM tickets WHERE id = $1", uuid.UUID(b_ticket))
    assert after == before
    assert await db.fetchval("SELECT count(*) FROM queues WHERE name = 'Smuggled'") == 0


async def _write_across(app: Any, b: Any, b_ticket: str) -> None:
    async with acquire(app.state.pool, transaction=False) as conn:
        updated = await conn.execute(
            "UPDATE tickets SET custom_data = '{\"x\": 1}', version = version + 1 WHERE id = $1",
            uuid.UUID(b_ticket),
        )
        assert updated == "UPDATE 0"
        assert await conn.execute("DELETE FROM ticket_history WHERE ticket_id = $1", uuid.UUID(b_ticket)) == (
            "DELETE 0"
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await conn.execute(
                "INSERT INTO queues (tenant_id, id, name) VALUES ($1, $2, 'Smuggled')",
                uuid.UUID(b.id),
                uuid.uuid4(),
            )
        # Moving one's own row into another tenant is refused too.
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await conn.execute("UPDATE webhooks SET tenant_id = $1", uuid.UUID(b.id))


async def test_the_application_role_cannot_bypass_the_policies(app: Any) -> None:
    with scoped(str(uuid.uuid4())):
        await _cannot_bypass(app)


async def _cannot_bypass(app: Any) -> None:
    async with acquire(app.state.pool, transaction=False) as conn:
        role = await conn.fetchrow(
            "SELECT current_user AS name, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        )
        assert (role["name"], role["rolsuper"], role["rolbypassrls"]) == ("virtualq_app", False, False)
        owners = await conn.fetch(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public' AND tablename = ANY($1)",
            list(TENANT_TABLES),
        )
        assert "virtualq_app" not in {row["tableowner"] for row in owners}
        async with conn.transaction():
            await conn.execute("SET LOCAL row_security = off")
            # With row security off, a query a policy would filter fails instead of seeing everything.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch("SELECT * FROM tickets")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("ALTER TABLE tickets DISABLE ROW LEVEL SECURITY")


def test_the_protected_tables_are_the_tenant_tables() -> None:
    from tests.test_distribution import DISTRIBUTED

    assert set(TENANT_TABLES) == DISTRIBUTED


async def test_every_tenant_table_has_the_policy(db: asyncpg.Connection) -> None:
    rows = await db.fetch(
        """SELECT c.relname, c.relrowsecurity, count(p.polname) AS policies
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             LEFT JOIN pg_policy p ON p.polrelid = c.oid
            WHERE n.nspname = 'public' AND c.relkind = 'r'
              AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                             AND a.attnotnull)
            GROUP BY c.relname, c.relrowsecurity"""
    )
    protected = {row["relname"] for row in rows if row["relrowsecurity"] and row["policies"] == 1}
    assert protected == set(TENANT_TABLES), {row["relname"] for row in rows} ^ set(TENANT_TABLES)


def test_0012_rewrites_the_policy_of_every_tenant_table() -> None:
    rewritten = importlib.import_module("virtualq.migrations.versions.0012_row_security_initplans")
    assert set(rewritten.TENANT_TABLES) == set(BEFORE_0012)


async def test_the_policies_read_the_tenant_once_per_statement_not_per_row(
    db: asyncpg.Connection, client: httpx.AsyncClient, api: Api
) -> None:
    """Migration 0012: the setting is read in InitPlans; a row is tested against their values. Read per
    row, it cost a ticket's position (a count over the line) five sixths of its throughput."""
    t, queue, order = await coffee(client, api)
    for _ in range(3):
        ok(
            await client.post(
                "/v1/tickets", json={"queue_id": queue, "type_definition_id": order}, headers=t.h
            ),
            201,
        )
    async with db.transaction():
        await db.execute("SET LOCAL ROLE virtualq_app")
        await db.execute("SELECT set_config('virtualq.tenant_id', $1, true)", t.id)
        assert await db.fetchval("SELECT count(*) FROM tickets") == 3
        for table in TENANT_TABLES:
            plan = [row[0] for row in await db.fetch(f"EXPLAIN SELECT count(*) FROM {table}")]
            filters = [line for line in plan if "Filter:" in line]
            assert filters, (table, plan)
            assert all("InitPlan" in line and "current_setting" not in line for line in filters), (
                table,
                plan,
            )


async def test_background_work_spans_tenants_only_when_it_asks(app: Any) -> None:
    """The sweeper, the webhook worker and the event hub open their connections with system=True; nothing
    else does (a grep would not catch an alias, so this lists the call sites)."""
    import pathlib

    import virtualq

    root = pathlib.Path(virtualq.__file__).parent
    sites = sorted(
        f"{path.relative_to(root)}"
        for path in root.rglob("*.py")
        if path.name != "db.py"  # where the mechanism is defined
        for line in path.read_text().splitlines()
        if "system=True" in line
    )
    assert sites == sorted(
        [
            "auth/principal.py",  # a key's lookup by its digest reads the employee it speaks for
            "auth/principal.py",  # the same lookup, when open event streams' keys are checked again
            "events/hub.py",
            "events/hub.py",
            "events/hub.py",  # the notifier's pg_notify, on the background pool
            "sweeper.py",
            "sweeper.py",
            "sweeper.py",
            "web/join.py",  # a self-join link's queue, before its tenant is known: the join,
            "web/join.py",  # its form,
            "web/join.py",  # its QR code,
            "web/join.py",  # and a retry's stored answer (kit/idempotency.py)
            "web/router.py",
            "web/router.py",  # a customer leaving the line: their ticket by its token,
            "web/router.py",  # and its page's answer after
            "webhooks/worker.py",
            "webhooks/worker.py",
        ]
    ), sites
    # Connections that keep whatever scope they had touch only tables without row security.
    unscoped = sorted(
        f"{path.relative_to(root)}"
        for path in root.rglob("*.py")
        if path.name != "db.py"
        for line in path.read_text().splitlines()
        if "unscoped=True" in line
    )
    assert unscoped == ["auth/principal.py", "kit/idempotency.py", "kit/idempotency.py"]
