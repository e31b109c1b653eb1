"""Notify listeners only when a statement really inserted events.

The `events_notify` trigger (0004) is per statement, and an `INSERT` inside a CTE runs — and fires it — even
when it inserts no row: a call-next on an empty line, a transition that lost its race and will read again.
Each such notification took PostgreSQL's database-wide notify lock at commit and woke every listening
process for nothing. The trigger now looks at the statement's inserted rows first.

Revision ID: 0009
Revises: 0008
"""

from virtualq.migrations.sql import run_script

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("""
    CREATE OR REPLACE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM inserted) THEN
            PERFORM pg_notify('virtualq_events', '');
        END IF;
        RETURN NULL;
    END $$;
    DROP TRIGGER events_notify ON events;
    CREATE TRIGGER events_notify AFTER INSERT ON events REFERENCING NEW TABLE AS inserted
        FOR EACH STATEMENT EXECUTE FUNCTION events_notify();
    """)


def downgrade() -> None:
    run_script("""
    DROP TRIGGER events_notify ON events;
    CREATE OR REPLACE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('virtualq_events', '');
        RETURN NULL;
    END $$;
    CREATE TRIGGER events_notify AFTER INSERT ON events FOR EACH STATEMENT EXECUTE FUNCTION events_notify();
    """)
