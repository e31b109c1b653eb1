"""Queue operations: the event log (outbox), time-limit markers, the index behind wait estimates.

Revision ID: 0003
Revises: 0002
"""

from virtualq.migrations.sql import run_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("""
    -- Written in the same transaction as the change it describes. `id` is the public cursor; `tx_id` lets a
    -- reader stop before events of transactions still in flight, so a cursor never skips a late commit.
    CREATE TABLE events (
        id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tx_id        xid8 NOT NULL DEFAULT pg_current_xact_id(),
        tenant_id    uuid NOT NULL,
        type         text NOT NULL,
        queue_id     uuid,
        ticket_id    uuid,
        occurred_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
        data         jsonb NOT NULL DEFAULT '{}'::jsonb
    );
    CREATE INDEX events_tenant_cursor_idx ON events (tenant_id, id);
    CREATE INDEX events_ticket_idx ON events (tenant_id, ticket_id, id) WHERE ticket_id IS NOT NULL;
    CREATE INDEX events_occurred_idx ON events (occurred_at);

    -- A forwarded ticket keeps the number and display code it was issued with, so numbers are unique per
    -- issuing queue (origin_queue_id), not per current queue.
    ALTER TABLE tickets ADD COLUMN origin_queue_id uuid;
    UPDATE tickets SET origin_queue_id = queue_id;
    ALTER TABLE tickets ALTER COLUMN origin_queue_id SET NOT NULL;
    ALTER TABLE tickets DROP CONSTRAINT tickets_tenant_id_queue_id_local_date_number_key;
    ALTER TABLE tickets ADD CONSTRAINT tickets_origin_number_key
        UNIQUE (tenant_id, origin_queue_id, local_date, number);

    -- Each time limit is handled once: the sweeper sets these in the same statement that records the event.
    ALTER TABLE tickets ADD COLUMN expiry_handled_at timestamptz;
    ALTER TABLE tickets ADD COLUMN wait_exceeded_at timestamptz;
    DROP INDEX tickets_expiry_idx;
    CREATE INDEX tickets_expiry_idx ON tickets (expires_at)
        WHERE expires_at IS NOT NULL AND expiry_handled_at IS NULL
          AND state_category NOT IN ('done', 'cancelled');
    CREATE INDEX tickets_waiting_since_idx ON tickets (created_at)
        WHERE state_category = 'waiting' AND wait_exceeded_at IS NULL;

    -- The service pace: the latest tickets of a queue and type that left the line.
    CREATE INDEX tickets_departures_idx ON tickets (tenant_id, queue_id, type_definition_id, started_at DESC)
        WHERE started_at IS NOT NULL;
    CREATE INDEX tickets_queue_departures_idx ON tickets (tenant_id, queue_id, started_at DESC)
        WHERE started_at IS NOT NULL;
    """)


def downgrade() -> None:
    run_script("""
    DROP INDEX tickets_queue_departures_idx;
    DROP INDEX tickets_departures_idx;
    DROP INDEX tickets_waiting_since_idx;
    DROP INDEX tickets_expiry_idx;
    ALTER TABLE tickets DROP COLUMN wait_exceeded_at;
    ALTER TABLE tickets DROP CONSTRAINT tickets_origin_number_key;
    ALTER TABLE tickets DROP COLUMN origin_queue_id;
    ALTER TABLE tickets ADD CONSTRAINT tickets_tenant_id_queue_id_local_date_number_key
        UNIQUE (tenant_id, queue_id, local_date, number);
    ALTER TABLE tickets DROP COLUMN expiry_handled_at;
    CREATE INDEX tickets_expiry_idx ON tickets (expires_at)
        WHERE expires_at IS NOT NULL AND state_category NOT IN ('done', 'cancelled');
    DROP TABLE events;
    """)
