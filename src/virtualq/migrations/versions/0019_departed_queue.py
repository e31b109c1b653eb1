"""The queue whose line a ticket left, so that a forward after it was called moves no departure.

A queue's wait estimates follow its recent departures: the tickets that left its waiting line, by when
they did (`started_at`). They were looked up by the ticket's current queue, so a ticket called in one
queue and then forwarded (kept in service, a kitchen order handed to pickup) counted as a departure of the
queue it was forwarded to: that line's pace and its accuracy figures changed with nobody called there, and
the queue it left lost the departure. `departed_queue_id` is written with `started_at`, once, and the
departure indexes are keyed by it.

Tickets that left a line before this migration are taken to have left their current queue (the best
this database knows). The backfill rewrites every such ticket and the indexes are built in the
migration's transaction, during which ticket writes wait: about a second per million departed tickets.

Revision ID: 0019
Revises: 0018
"""

from virtualq.migrations.sql import run_script

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("""
    ALTER TABLE tickets ADD COLUMN departed_queue_id uuid;
    UPDATE tickets SET departed_queue_id = queue_id WHERE started_at IS NOT NULL;
    DROP INDEX tickets_departures_idx;
    DROP INDEX tickets_queue_departures_idx;
    CREATE INDEX tickets_departures_idx
        ON tickets (tenant_id, departed_queue_id, type_definition_id, started_at DESC)
        WHERE started_at IS NOT NULL;
    CREATE INDEX tickets_queue_departures_idx ON tickets (tenant_id, departed_queue_id, started_at DESC)
        WHERE started_at IS NOT NULL;
    """)


def downgrade() -> None:
    run_script("""
    DROP INDEX tickets_departures_idx;
    DROP INDEX tickets_queue_departures_idx;
    ALTER TABLE tickets DROP COLUMN departed_queue_id;
    CREATE INDEX tickets_departures_idx ON tickets (tenant_id, queue_id, type_definition_id, started_at DESC)
        WHERE started_at IS NOT NULL;
    CREATE INDEX tickets_queue_departures_idx ON tickets (tenant_id, queue_id, started_at DESC)
        WHERE started_at IS NOT NULL;
    """)
