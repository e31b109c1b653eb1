"""The schema stays ready to distribute the tenant tables by tenant_id (Citus), checked in pg_catalog.

Every table is classified (docs/scaling.md says why each one is where it is):
- distributed by tenant_id: the tenant's own data, which grows with use;
- reference: small or global tables every node needs a copy of (joined from tenant rows, or read before
  any tenant is known);
- local: kept on the coordinator only.

For the distributed tables Citus needs: tenant_id NOT NULL (and one type, to co-locate them); every primary
key, unique constraint and unique index containing tenant_id; every foreign key to another distributed
table matching tenant_id to tenant_id (the join stays on one node); foreign keys otherwise only to
reference tables. Reference and local tables may not reference distributed tables. Lookups that find rows
without a tenant (background jobs, the customer's page) keep an index.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from virtualq import migrate
from virtualq.events.repository import ENVELOPE_COLUMNS, SETTLED
from virtualq.sweeper import DUE_FOR_EXPIRY, MARK_WAIT_EXCEEDED
from virtualq.web.router import PUBLIC_SQL
from virtualq.webhooks.repository import CLAIM

DISTRIBUTED = {
    "employees",
    "queues",
    "queue_day_counters",
    "queue_waiting_counts",
    "tickets",
    "ticket_history",
    "ticket_items",
    "item_history",
    "events",
    "event_prune_marks",  # how far the tenant's events were pruned (migration 0018)
    "webhooks",
    "webhook_deliveries",
    "webhook_attempts",
}
REFERENCE = {
    "accounts",  # global, small
    "tenants",  # one row per location; joined from tenant rows (timezone, is_active), read by id in auth
    "customers",  # shared by all tenants of an account, so they cannot live with one tenant
    "type_definitions",  # tenant_id NULL = system types every tenant uses; small, read on every transition
    "api_keys",  # found by digest before any tenant is known; platform and account keys have no tenant
}
LOCAL = {
    "alembic_version",
    "idempotency_keys",  # keyed by the caller's credential, not a tenant; write-heavy, so not replicated
}
KEY = "tenant_id"

TABLES = """
SELECT c.oid, c.relname FROM pg_class c
 WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
"""
TENANT_COLUMN = """
SELECT c.relname, a.attnum, a.attnotnull, format_type(a.atttypid, a.atttypmod) AS type
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
 WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') AND a.attname = $1
   AND NOT a.attisdropped
"""
# Unique and exclusion indexes, with their key columns (0 for an expression).
UNIQUE_INDEXES = """
SELECT c.relname AS "table", i.indexrelid::regclass::text AS index,
       (i.indkey::int2[])[0:i.indnkeyatts - 1] AS keys
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
 WHERE c.relnamespace = 'public'::regnamespace AND (i.indisunique OR i.indisexclusion)
"""
FOREIGN_KEYS = """
SELECT f.conname, src.relname AS "table", dst.relname AS referenced, f.conkey, f.confkey,
       f.confupdtype::text, f.confdeltype::text
  FROM pg_constraint f
  JOIN pg_class src ON src.oid = f.conrelid
  JOIN pg_class dst ON dst.oid = f.confrelid
 WHERE f.contype = 'f' AND f.connamespace = 'public'::regnamespace
"""
# Actions that would write the distribution column: SET NULL, SET DEFAULT (and CASCADE on update).
WRITES_KEY_ON_DELETE = {"n", "d"}
WRITES_KEY_ON_UPDATE = {"n", "d", "c"}


async def classification_problems(conn: asyncpg.Connection) -> list[str]:
    tables = {row["relname"] for row in await conn.fetch(TABLES)}
    with_key = {row["relname"] for row in await conn.fetch(TENANT_COLUMN, KEY)}
    classified = DISTRIBUTED | REFERENCE | LOCAL
    problems = [
        f"{name}: not classified (add it to DISTRIBUTED, REFERENCE or LOCAL here and in docs/scaling.md)"
        + (" - it has a tenant_id column" if name in with_key else "")
        for name in sorted(tables - classified)
    ]
    problems += [f"{name}: classified but no such table" for name in sorted(classified - tables)]
    for first, second in ((DISTRIBUTED, REFERENCE), (DISTRIBUTED, LOCAL), (REFERENCE, LOCAL)):
        problems += [f"{name}: classified twice" for name in sorted(first & second)]
    return problems


async def distribution_problems(conn: asyncpg.Connection) -> list[str]:
    """Everything that would stop `create_distributed_table(t, 'tenant_id', colocate_with => ...)` for the
    DISTRIBUTED tables and `create_reference_table` for the REFERENCE ones, as readable lines."""
    problems: list[str] = []
    key_of: dict[str, int] = {}
    types = set()
    for row in await conn.fetch(TENANT_COLUMN, KEY):
        if row["relname"] in DISTRIBUTED:
            key_of[row["relname"]] = row["attnum"]
            types.add(row["type"])
            if not row["attnotnull"]:
                problems.append(f"{row['relname']}.tenant_id may be NULL")
    problems += [f"{name}: no tenant_id column" for name in sorted(DISTRIBUTED - key_of.keys())]
    if len(types) > 1:
        problems.append(f"tenant_id has several types {sorted(types)}: the tables cannot be co-located")

    for row in await conn.fetch(UNIQUE_INDEXES):
        table = row["table"]
        if table in key_of and key_of[table] not in row["keys"]:
            problems.append(f"{table}: unique index {row['index']} does not include tenant_id")

    for fk in await conn.fetch(FOREIGN_KEYS):
        name, table, referenced = fk["conname"], fk["table"], fk["referenced"]
        if table in DISTRIBUTED:
            if referenced in DISTRIBUTED:
                pairs = list(zip(fk["conkey"], fk["confkey"], strict=True))
                if (key_of.get(table), key_of.get(referenced)) not in pairs:
                    problems.append(f"{table}.{name}: does not match tenant_id to {referenced}.tenant_id")
                elif fk["confdeltype"] in WRITES_KEY_ON_DELETE or fk["confupdtype"] in WRITES_KEY_ON_UPDATE:
                    problems.append(f"{table}.{name}: its ON DELETE/ON UPDATE action would write tenant_id")
            elif referenced not in REFERENCE:
                problems.append(f"{table}.{name}: a distributed table references {referenced} (local)")
        elif table in REFERENCE and referenced not in REFERENCE:
            problems.append(f"{table}.{name}: a reference table may only reference reference tables")
        elif table in LOCAL and referenced in DISTRIBUTED:
            problems.append(f"{table}.{name}: a local table may not reference a distributed table")
    return problems


async def test_every_table_is_classified(db: asyncpg.Connection) -> None:
    assert await classification_problems(db) == []


async def test_tenant_tables_can_be_distributed_by_tenant_id(db: asyncpg.Connection) -> None:
    assert await distribution_problems(db) == []


async def test_the_check_catches_what_citus_refuses(db: asyncpg.Connection) -> None:
    """The check itself can fail: break each property inside a transaction that is rolled back (foreign keys
    NOT VALID, so rows other tests left behind are not checked against the broken rule)."""
    breakages = {
        "ALTER TABLE events DROP CONSTRAINT events_pkey, ADD PRIMARY KEY (id)": "does not include tenant_id",
        "CREATE UNIQUE INDEX broken ON tickets (public_token)": "does not include tenant_id",
        "ALTER TABLE queue_day_counters DROP CONSTRAINT queue_day_counters_pkey, "
        "ALTER COLUMN tenant_id DROP NOT NULL": "may be NULL",
        "ALTER TABLE ticket_items ADD CONSTRAINT broken FOREIGN KEY (ticket_id, tenant_id) "
        "REFERENCES tickets (tenant_id, id) NOT VALID": "does not match tenant_id",
        "ALTER TABLE api_keys ADD CONSTRAINT broken FOREIGN KEY (tenant_id, employee_id) "
        "REFERENCES employees (tenant_id, id) NOT VALID": "a reference table may only reference",
        "ALTER TABLE ticket_history ADD CONSTRAINT broken FOREIGN KEY (tenant_id, ticket_id) "
        "REFERENCES tickets (tenant_id, id) ON DELETE SET NULL NOT VALID": "would write tenant_id",
    }
    for statement, expected in breakages.items():
        transaction = db.transaction()
        await transaction.start()
        try:
            await db.execute(statement)
            found = await distribution_problems(db)
        finally:
            await transaction.rollback()
        assert any(expected in problem for problem in found), (statement, found)

    transaction = db.transaction()
    await transaction.start()
    try:
        await db.execute("CREATE TABLE brand_new (tenant_id uuid NOT NULL, id uuid NOT NULL)")
        found = await classification_problems(db)
    finally:
        await transaction.rollback()
    assert found == [
        "brand_new: not classified (add it to DISTRIBUTED, REFERENCE or LOCAL here and in docs/scaling.md)"
        " - it has a tenant_id column"
    ]


async def plan(db: asyncpg.Connection, sql: str, *args: Any) -> str:
    await db.execute("SET enable_seqscan = off")  # empty tables: ask which index the planner can use
    try:
        rows = await db.fetch(f"EXPLAIN {sql}", *args)
    finally:
        await db.execute("RESET enable_seqscan")
    return "\n".join(row[0] for row in rows)


async def test_lookups_without_tenant_id_keep_an_index(db: asyncpg.Connection) -> None:
    """Background jobs and the customer's page find rows without a tenant: each still has an index."""
    now = datetime.now(UTC)
    checks: dict[str, tuple[Any, ...]] = {
        "tickets_id_idx": (PUBLIC_SQL, uuid.uuid4()),  # the customer's ticket page: the link has no tenant
        "tickets_expiry_idx": (DUE_FOR_EXPIRY, now, 200),  # the sweeper
        "tickets_waiting_since_idx": (MARK_WAIT_EXCEEDED, now, 200),
        "webhook_deliveries_due_idx": (CLAIM, 50, 30.0),  # the webhook worker
        "events_tx_cursor_idx": (  # the event hub reads every tenant's events
            f"SELECT {ENVELOPE_COLUMNS} FROM events WHERE (tx_id, id) > ($1::xid8, $2::bigint) AND {SETTLED} "
            "ORDER BY tx_id, id LIMIT 100",
            0,
            0,
        ),
        "events_occurred_idx": ("SELECT id FROM events WHERE occurred_at < now() - interval '7 days'",),
        "api_keys_key_hash_key": ("SELECT id FROM api_keys WHERE key_hash = $1", b"x" * 32),
        "type_definitions_pkey": ("SELECT id FROM type_definitions WHERE id = $1", uuid.uuid4()),
        "tenants_pkey": ("SELECT account_id FROM tenants WHERE id = $1", uuid.uuid4()),
    }
    for index, (sql, *args) in checks.items():
        shown = await plan(db, sql, *args)
        assert index in shown, (index, shown)


# --- the migration's round trip -----------------------------------------------------------------------------

SNAPSHOT = """
SELECT 'constraint', conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
 WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'index', i.indrelid::regclass::text, i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
 WHERE c.relnamespace = 'public'::regnamespace
ORDER BY 1, 2, 3
"""

ACCOUNT, TENANT, EMPLOYEE = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
ROWS_AT_0005 = f"""
INSERT INTO accounts (id, name) VALUES ('{ACCOUNT}', 'Round trip');
INSERT INTO tenants (id, account_id, name) VALUES ('{TENANT}', '{ACCOUNT}', 'Downtown');
INSERT INTO employees (tenant_id, id, fname, lname, email)
     VALUES ('{TENANT}', '{EMPLOYEE}', 'Ada', 'L', 'ada@example.com');
INSERT INTO api_keys (id, name, key_prefix, key_hash, scope, role, account_id, tenant_id, employee_id)
     VALUES (gen_random_uuid(), 'counter', 'vq_abc', '\\x01', 'tenant', 'staff',
             '{ACCOUNT}', '{TENANT}', '{EMPLOYEE}');
INSERT INTO events (tenant_id, type) VALUES ('{TENANT}', 'queue.updated'), ('{TENANT}', 'queue.enabled');
"""
COUNTS = "SELECT (SELECT count(*) FROM api_keys) AS keys, (SELECT count(*) FROM events) AS events"


def with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


async def run(dsn: str, script: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(script)
    finally:
        await conn.close()


async def on(dsn: str, sql: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(row) for row in await conn.fetch(sql)]
    finally:
        await conn.close()


async def problems_in(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await classification_problems(conn) + await distribution_problems(conn)
    finally:
        await conn.close()


def test_migration_0006_round_trip_with_rows(empty_database: str) -> None:
    dsn = empty_database
    migrate.upgrade(dsn, "0005")
    asyncio.run(run(dsn, ROWS_AT_0005))
    before = asyncio.run(on(dsn, SNAPSHOT))
    counts = asyncio.run(on(dsn, COUNTS))
    assert counts == [(1, 2)]

    migrate.upgrade(dsn)
    assert asyncio.run(problems_in(dsn)) == []
    at_head = asyncio.run(on(dsn, SNAPSHOT))
    assert asyncio.run(on(dsn, COUNTS)) == counts
    changed = {name for _, _, name, _ in set(at_head) ^ set(before)}
    assert {"events_pkey", "events_tenant_cursor_idx", "api_keys_tenant_id_employee_id_fkey"} <= changed
    assert "tickets_id_idx" in changed

    migrate.downgrade(dsn, "0005")
    assert asyncio.run(on(dsn, SNAPSHOT)) == before
    assert asyncio.run(on(dsn, COUNTS)) == counts

    migrate.upgrade(dsn)
    assert asyncio.run(on(dsn, SNAPSHOT)) == at_head
    assert asyncio.run(problems_in(dsn)) == []
