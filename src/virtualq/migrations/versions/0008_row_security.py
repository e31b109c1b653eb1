"""Row-level security: a second wall between tenants, enforced by PostgreSQL.

The application's pooled connections act as the role `virtualq_app` (`SET ROLE` when a connection opens):
no superuser, no BYPASSRLS, not the tables' owner, so the policies below always apply to it. Each
connection carries the setting `virtualq.tenant_id`: the tenant of the request it serves, '' before one is
known (every tenant row is then invisible), or 'system' for the background work that spans tenants (the
sweeper, the webhook worker, the event hub, a customer's token-checked ticket page).

Also: `uuidv7()` for PostgreSQL 17, which lacks it (the webhook trigger of 0004 calls it).

Revision ID: 0008
Revises: 0007
"""

from virtualq.migrations.sql import run_script

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TENANT_TABLES = (
    "employees",
    "queues",
    "queue_day_counters",
    "tickets",
    "ticket_history",
    "ticket_items",
    "item_history",
    "events",
    "webhooks",
    "webhook_deliveries",
    "webhook_attempts",
)

# The row is visible (and may be written) when it belongs to the connection's tenant, or the connection works
# for the whole system. An unset or empty setting matches no tenant.
VISIBLE = (
    "current_setting('virtualq.tenant_id', true) = 'system' "
    "OR tenant_id = nullif(nullif(current_setting('virtualq.tenant_id', true), ''), 'system')::uuid"
)


def upgrade() -> None:
    policies = "\n".join(
        f"""ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
        CREATE POLICY tenant_wall ON {table} USING ({VISIBLE}) WITH CHECK ({VISIBLE});"""
        for table in TENANT_TABLES
    )
    run_script(f"""
    DO $$
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'virtualq_app') THEN
            CREATE ROLE virtualq_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
        END IF;
    END $$;
    -- The migrating role (the tables' owner) may act as virtualq_app: the server's pool does.
    GRANT virtualq_app TO CURRENT_USER;
    GRANT USAGE ON SCHEMA public TO virtualq_app;
    GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO virtualq_app;
    GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO virtualq_app;
    -- Tables and sequences later migrations create are granted the same way.
    ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO virtualq_app;
    ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO virtualq_app;
    {policies}

    DO $$
    BEGIN
        IF current_setting('server_version_num')::int < 180000
           AND NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'uuidv7' AND pronargs = 0) THEN
            -- A version 7 UUID: 48 bits of Unix milliseconds, then random bits, version and variant set.
            CREATE FUNCTION public.uuidv7() RETURNS uuid LANGUAGE sql VOLATILE AS $f$
                SELECT encode(
                    set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                        PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                                          FROM 3)
                        FROM 1 FOR 6), 52, 1), 53, 1),
                    'hex')::uuid
            $f$;
        END IF;
    END $$;
    """)


def downgrade() -> None:
    policies = "\n".join(
        f"""DROP POLICY tenant_wall ON {table};
        ALTER TABLE {table} DISABLE ROW LEVEL SECURITY;"""
        for table in TENANT_TABLES
    )
    run_script(f"""
    {policies}
    ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM virtualq_app;
    ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM virtualq_app;
    REVOKE ALL ON ALL TABLES IN SCHEMA public FROM virtualq_app;
    REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM virtualq_app;
    REVOKE USAGE ON SCHEMA public FROM virtualq_app;
    -- The role is shared by every database of the server; it goes only when nothing else uses it.
    DO $$
    BEGIN
        DROP ROLE virtualq_app;
    EXCEPTION WHEN dependent_objects_still_exist OR object_in_use THEN
        NULL;
    END $$;
    """)
