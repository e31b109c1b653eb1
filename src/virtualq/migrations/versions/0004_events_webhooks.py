"""Events you can read and follow; webhook subscriptions, deliveries and their attempts.

Revision ID: 0004
Revises: 0003
"""

from virtualq.migrations.sql import run_script

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("""
    -- Readers page by (tx_id, id): every event of a finished transaction sorts before any event a transaction
    -- still in flight can commit, so a cursor never skips a late commit (see docs/events.md).
    CREATE INDEX events_tenant_tx_cursor_idx ON events (tenant_id, tx_id, id);
    CREATE INDEX events_tx_cursor_idx ON events (tx_id, id);

    -- Wake listeners when events commit (delivered at commit; a lost one only delays delivery).
    CREATE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('virtualq_events', '');
        RETURN NULL;
    END $$;
    CREATE TRIGGER events_notify AFTER INSERT ON events
        FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

    CREATE TABLE webhooks (
        tenant_id    uuid NOT NULL REFERENCES tenants (id),
        id           uuid NOT NULL,
        url          text NOT NULL,
        event_types  text[] NOT NULL DEFAULT '{}',
        description  text,
        secret       text NOT NULL,
        is_active    boolean NOT NULL DEFAULT true,
        created_at   timestamptz NOT NULL DEFAULT now(),
        updated_at   timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, id)
    );
    CREATE INDEX webhooks_active_idx ON webhooks (tenant_id) WHERE is_active;

    -- One row per (event, subscription), created in the event's own transaction by the trigger below:
    -- an event committed is a delivery owed. `payload` is the envelope exactly as it will be sent.
    CREATE TABLE webhook_deliveries (
        tenant_id        uuid NOT NULL,
        id               uuid NOT NULL,
        webhook_id       uuid NOT NULL,
        event_type       text NOT NULL,
        event_cursor     text,
        payload          jsonb NOT NULL,
        status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
        attempts         integer NOT NULL DEFAULT 0,
        next_attempt_at  timestamptz NOT NULL DEFAULT now(),
        last_status_code integer,
        last_error       text,
        last_duration_ms integer,
        created_at       timestamptz NOT NULL DEFAULT now(),
        updated_at       timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, id),
        FOREIGN KEY (tenant_id, webhook_id) REFERENCES webhooks (tenant_id, id)
    );
    CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
    CREATE INDEX webhook_deliveries_webhook_idx
        ON webhook_deliveries (tenant_id, webhook_id, created_at DESC);

    CREATE TABLE webhook_attempts (
        tenant_id    uuid NOT NULL,
        id           bigint GENERATED ALWAYS AS IDENTITY,
        delivery_id  uuid NOT NULL,
        attempt      integer NOT NULL,
        status_code  integer,
        error        text,
        duration_ms  integer NOT NULL,
        created_at   timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, id),
        FOREIGN KEY (tenant_id, delivery_id) REFERENCES webhook_deliveries (tenant_id, id) ON DELETE CASCADE
    );
    CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (tenant_id, delivery_id, attempt);

    CREATE FUNCTION events_enqueue_webhooks() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO webhook_deliveries (tenant_id, id, webhook_id, event_type, event_cursor, payload)
        SELECT NEW.tenant_id, uuidv7(), w.id, NEW.type, NEW.tx_id::text || '-' || NEW.id::text,
               jsonb_build_object(
                   'id', NEW.tx_id::text || '-' || NEW.id::text, 'type', NEW.type, 'tenant_id', NEW.tenant_id,
                   'queue_id', NEW.queue_id, 'ticket_id', NEW.ticket_id,
                   'occurred_at',
                   to_char(NEW.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                   'data', NEW.data)
          FROM webhooks w
         WHERE w.tenant_id = NEW.tenant_id AND w.is_active
           AND (cardinality(w.event_types) = 0 OR NEW.type = ANY (w.event_types));
        RETURN NULL;
    END $$;
    CREATE TRIGGER events_enqueue_webhooks AFTER INSERT ON events
        FOR EACH ROW EXECUTE FUNCTION events_enqueue_webhooks();
    """)


def downgrade() -> None:
    run_script("""
    DROP TRIGGER events_enqueue_webhooks ON events;
    DROP FUNCTION events_enqueue_webhooks();
    DROP TABLE webhook_attempts;
    DROP TABLE webhook_deliveries;
    DROP TABLE webhooks;
    DROP TRIGGER events_notify ON events;
    DROP FUNCTION events_notify();
    DROP INDEX events_tx_cursor_idx;
    DROP INDEX events_tenant_tx_cursor_idx;
    """)
