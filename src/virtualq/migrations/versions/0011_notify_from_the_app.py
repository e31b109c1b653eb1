"""No NOTIFY inside the writing transactions: the app wakes the event hubs itself, after commit.

The `events_notify` trigger (0004, 0009) made every statement that wrote events send `pg_notify`. At commit,
PostgreSQL then takes one database-wide lock for all notifying transactions and holds it through the commit's
WAL flush, so every write in the database committed one at a time (measured: the SQL ceiling of a transition
1,564-2,157 -> 2,672-3,703 tps without the trigger). Now the process that committed wakes its own hub at once,
and the other processes through Redis when it is configured, or through one `pg_notify` of its own, outside
any writing transaction and coalesced (at most one in flight per process). Events written by anything else
(SQL by hand, another program) are picked up by every hub's poll (`EVENT_POLL_SECONDS`).

Revision ID: 0011
Revises: 0010
"""

from virtualq.migrations.sql import run_script

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("""
    DROP TRIGGER events_notify ON events;
    DROP FUNCTION events_notify();
    """)


def downgrade() -> None:
    run_script("""
    CREATE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM inserted) THEN
            PERFORM pg_notify('virtualq_events', '');
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER events_notify AFTER INSERT ON events REFERENCING NEW TABLE AS inserted
        FOR EACH STATEMENT EXECUTE FUNCTION events_notify();
    """)
