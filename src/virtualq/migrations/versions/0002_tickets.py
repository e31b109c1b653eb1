"""Type definitions, queues, tickets with history, and ticket items with history.

Revision ID: 0002
Revises: 0001
"""

from virtualq.migrations.sql import run_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("""
    -- tenant_id NULL = a system type, visible to every tenant and managed by platform admins.
    CREATE TABLE type_definitions (
        id                   uuid PRIMARY KEY,
        tenant_id            uuid REFERENCES tenants (id),
        type_code            text NOT NULL CHECK (type_code ~ '^[a-z][a-z0-9_]{0,31}$'),
        type_name            text NOT NULL,
        description          text,
        doc                  text,
        custom_fields_schema jsonb,
        fsm_schema           jsonb,
        item_definition_ids  uuid[] NOT NULL DEFAULT '{}',
        is_system_defined    boolean NOT NULL GENERATED ALWAYS AS (tenant_id IS NULL) STORED,
        is_active            boolean NOT NULL DEFAULT true,
        version              integer NOT NULL DEFAULT 1,
        created_at           timestamptz NOT NULL DEFAULT now(),
        updated_at           timestamptz NOT NULL DEFAULT now()
    );
    CREATE UNIQUE INDEX type_definitions_tenant_code_key ON type_definitions (tenant_id, type_code)
        WHERE tenant_id IS NOT NULL;
    CREATE UNIQUE INDEX type_definitions_system_code_key ON type_definitions (type_code)
        WHERE tenant_id IS NULL;

    CREATE TABLE queues (
        tenant_id                    uuid NOT NULL REFERENCES tenants (id),
        id                           uuid NOT NULL,
        name                         text NOT NULL,
        description                  text,
        allowed_type_definition_ids  uuid[],
        wait_estimation_method       text NOT NULL DEFAULT 'average_recent_3' CHECK (wait_estimation_method IN
            ('average_recent_3', 'average_recent_5', 'rolling_average', 'manual', 'custom', 'none')),
        show_wait_time               boolean NOT NULL DEFAULT true,
        max_wait_minutes             integer CHECK (max_wait_minutes > 0),
        manual_wait_minutes          integer CHECK (manual_wait_minutes >= 0),
        ticket_prefix                text NOT NULL DEFAULT '',
        display_order                integer NOT NULL DEFAULT 0,
        is_active                    boolean NOT NULL DEFAULT true,
        created_at                   timestamptz NOT NULL DEFAULT now(),
        updated_at                   timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, id)
    );
    CREATE INDEX queues_tenant_order_idx ON queues (tenant_id, display_order, created_at, id);

    -- Ticket numbers count from 1 per queue per local day; the row lock serialises concurrent creates.
    CREATE TABLE queue_day_counters (
        tenant_id    uuid NOT NULL,
        queue_id     uuid NOT NULL,
        local_date   date NOT NULL,
        last_number  integer NOT NULL,
        PRIMARY KEY (tenant_id, queue_id, local_date),
        FOREIGN KEY (tenant_id, queue_id) REFERENCES queues (tenant_id, id)
    );

    -- FIFO by default; reordering picks a key between two neighbours, hence numeric.
    CREATE SEQUENCE ticket_sort_key_seq;

    CREATE TABLE tickets (
        tenant_id                        uuid NOT NULL,
        id                               uuid NOT NULL,
        queue_id                         uuid NOT NULL,
        type_definition_id               uuid NOT NULL REFERENCES type_definitions (id),
        number                           integer NOT NULL,
        display_code                     text NOT NULL,
        local_date                       date NOT NULL,
        current_state                    text NOT NULL,
        state_category                   text NOT NULL CHECK (state_category IN
            ('waiting', 'in_service', 'ready', 'done', 'cancelled')),
        customer_id                      uuid REFERENCES customers (id),
        employee_id                      uuid,
        references_ticket_id             uuid,
        sort_key                         numeric NOT NULL DEFAULT nextval('ticket_sort_key_seq'),
        estimated_wait_minutes           integer CHECK (estimated_wait_minutes >= 0),
        original_estimated_wait_minutes  integer,
        actual_wait_minutes              integer,
        ttl_minutes                      integer CHECK (ttl_minutes > 0),
        expires_at                       timestamptz,
        escalated_at                     timestamptz,
        custom_data                      jsonb NOT NULL DEFAULT '{}'::jsonb,
        started_at                       timestamptz,
        ready_at                         timestamptz,
        completed_at                     timestamptz,
        cancelled_at                     timestamptz,
        version                          integer NOT NULL DEFAULT 1,
        created_at                       timestamptz NOT NULL DEFAULT now(),
        updated_at                       timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, id),
        UNIQUE (tenant_id, queue_id, local_date, number),
        FOREIGN KEY (tenant_id, queue_id) REFERENCES queues (tenant_id, id),
        FOREIGN KEY (tenant_id, employee_id) REFERENCES employees (tenant_id, id),
        FOREIGN KEY (tenant_id, references_ticket_id) REFERENCES tickets (tenant_id, id)
    );
    CREATE INDEX tickets_waiting_line_idx ON tickets (tenant_id, queue_id, sort_key)
        WHERE state_category = 'waiting';
    CREATE INDEX tickets_active_idx ON tickets (tenant_id, queue_id, state_category, sort_key)
        WHERE state_category NOT IN ('done', 'cancelled');
    CREATE INDEX tickets_tenant_created_idx ON tickets (tenant_id, created_at, id);
    CREATE INDEX tickets_customer_idx ON tickets (tenant_id, customer_id) WHERE customer_id IS NOT NULL;
    CREATE INDEX tickets_employee_idx ON tickets (tenant_id, employee_id) WHERE employee_id IS NOT NULL;
    CREATE INDEX tickets_expiry_idx ON tickets (expires_at)
        WHERE expires_at IS NOT NULL AND state_category NOT IN ('done', 'cancelled');

    CREATE TABLE ticket_history (
        tenant_id       uuid NOT NULL,
        id              uuid NOT NULL,
        ticket_id       uuid NOT NULL,
        previous_state  text,
        new_state       text NOT NULL,
        transition      text,
        employee_id     uuid,
        notes           text,
        created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (tenant_id, id),
        FOREIGN KEY (tenant_id, ticket_id) REFERENCES tickets (tenant_id, id)
    );
    CREATE INDEX ticket_history_ticket_idx ON ticket_history (tenant_id, ticket_id, id);

    CREATE TABLE ticket_items (
        tenant_id               uuid NOT NULL,
        id                      uuid NOT NULL,
        ticket_id               uuid NOT NULL,
        item_type_definition_id uuid NOT NULL REFERENCES type_definitions (id),
        current_state           text,
        external_item_id        text,
        external_item_name      text,
        quantity                integer NOT NULL DEFAULT 1 CHECK (quantity >= 1),
        unit_price              numeric(12, 2) CHECK (unit_price >= 0),
        custom_data             jsonb NOT NULL DEFAULT '{}'::jsonb,
        started_at              timestamptz,
        completed_at            timestamptz,
        is_deleted              boolean NOT NULL DEFAULT false,
        version                 integer NOT NULL DEFAULT 1,
        created_at              timestamptz NOT NULL DEFAULT now(),
        updated_at              timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, id),
        FOREIGN KEY (tenant_id, ticket_id) REFERENCES tickets (tenant_id, id)
    );
    CREATE INDEX ticket_items_ticket_idx ON ticket_items (tenant_id, ticket_id, created_at, id);

    CREATE TABLE item_history (
        tenant_id       uuid NOT NULL,
        id              uuid NOT NULL,
        item_id         uuid NOT NULL,
        previous_state  text,
        new_state       text,
        transition      text,
        employee_id     uuid,
        notes           text,
        created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (tenant_id, id),
        FOREIGN KEY (tenant_id, item_id) REFERENCES ticket_items (tenant_id, id)
    );
    CREATE INDEX item_history_item_idx ON item_history (tenant_id, item_id, id);
    """)


def downgrade() -> None:
    run_script("""
    DROP TABLE item_history;
    DROP TABLE ticket_items;
    DROP TABLE ticket_history;
    DROP TABLE tickets;
    DROP SEQUENCE ticket_sort_key_seq;
    DROP TABLE queue_day_counters;
    DROP TABLE queues;
    DROP TABLE type_definitions;
    """)
