"""`TRUNCATE tickets` empties the waiting counts too.

The row triggers of migration 0010 keep `queue_waiting_counts` through every INSERT, UPDATE and DELETE of a
ticket, but TRUNCATE fires no row triggers: after `TRUNCATE tickets` (or one cascading to it, from `queues`
or `tenants`) every queue kept its count, and the next ticket of a queue took a position behind tickets that
no longer existed, until an operator rebuilt the counts by hand.

A statement trigger on TRUNCATE empties the counts in the same transaction: after it no ticket waits
anywhere, and an absent count is a count of 0. It deletes as the tables' owner (SECURITY DEFINER), so a role
that may truncate `tickets` gets consistent counts whatever row security would let it see.

Revision ID: 0015
Revises: 0014
"""

from virtualq.migrations.sql import run_script

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("""
    CREATE FUNCTION tickets_truncated() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp AS $$
    BEGIN
        DELETE FROM public.queue_waiting_counts;
        RETURN NULL;
    END $$;
    REVOKE ALL ON FUNCTION tickets_truncated() FROM PUBLIC;
    CREATE TRIGGER tickets_count_waiting_truncate AFTER TRUNCATE ON tickets
        FOR EACH STATEMENT EXECUTE FUNCTION tickets_truncated();
    """)


def downgrade() -> None:
    run_script("""
    DROP TRIGGER tickets_count_waiting_truncate ON tickets;
    DROP FUNCTION tickets_truncated();
    """)
