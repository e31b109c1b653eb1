"""Each queue's waiting count, kept by triggers, so that a new ticket's position costs no count of the line.

A create numbers its ticket under the queue's day-counter row lock (gap-free numbers) and tells the ticket
its position. Counting the waiting line for it made every create O(line length) inside that lock: 32
clients creating into one queue managed ~450 creates/s while the line was short and fell below 150/s at
25,000 waiting. The count now lives in `queue_waiting_counts`, kept by row triggers on `tickets`: +1 when a
ticket starts waiting in a queue, -1 when it stops (another category, another queue, deleted). The rows are
sharded by the writing connection (`pg_backend_pid() % 16`), so departures from one line (call-next by
several counters, transitions) rarely wait for each other; a queue's count is the sum of its shards.

`queue_waiting_count()` sums them in a VOLATILE function, which takes a fresh snapshot: called after the
create's counter lock is granted, it sees every create committed before ours, which the statement's own
snapshot (taken before it waited) does not.

A trigger writing two queues (a forward) updates them in queue-id order, so two forwards cannot deadlock.

Revision ID: 0010
Revises: 0009
"""

from virtualq.migrations.sql import run_script

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Tenant tables this migration adds (row security as in 0008; distributed by tenant_id).
TENANT_TABLES = ("queue_waiting_counts",)

VISIBLE = (
    "current_setting('virtualq.tenant_id', true) = 'system' "
    "OR tenant_id = nullif(nullif(current_setting('virtualq.tenant_id', true), ''), 'system')::uuid"
)


def upgrade() -> None:
    run_script(f"""
    -- No ticket changes while the counts are filled and the triggers created.
    LOCK TABLE tickets IN SHARE ROW EXCLUSIVE MODE;

    CREATE TABLE queue_waiting_counts (
        tenant_id  uuid NOT NULL,
        queue_id   uuid NOT NULL,
        shard      smallint NOT NULL,
        waiting    bigint NOT NULL,
        PRIMARY KEY (tenant_id, queue_id, shard),
        FOREIGN KEY (tenant_id, queue_id) REFERENCES queues (tenant_id, id)
    );
    ALTER TABLE queue_waiting_counts ENABLE ROW LEVEL SECURITY;
    CREATE POLICY tenant_wall ON queue_waiting_counts USING ({VISIBLE}) WITH CHECK ({VISIBLE});
    GRANT SELECT, INSERT, UPDATE, DELETE ON queue_waiting_counts TO virtualq_app;

    INSERT INTO queue_waiting_counts (tenant_id, queue_id, shard, waiting)
    SELECT tenant_id, queue_id, 0, count(*) FROM tickets WHERE state_category = 'waiting'
     GROUP BY tenant_id, queue_id;

    CREATE FUNCTION queue_waiting_add(p_tenant_id uuid, p_queue_id uuid, p_delta bigint)
        RETURNS void LANGUAGE sql AS $$
        INSERT INTO queue_waiting_counts AS c (tenant_id, queue_id, shard, waiting)
        VALUES (p_tenant_id, p_queue_id, pg_backend_pid() % 16, p_delta)
        ON CONFLICT (tenant_id, queue_id, shard) DO UPDATE SET waiting = c.waiting + excluded.waiting
    $$;

    CREATE FUNCTION tickets_count_waiting() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        leaves uuid;  -- the queue whose line the ticket left, if any
        joins uuid;  -- the queue whose line it joined, if any
    BEGIN
        IF TG_OP <> 'INSERT' THEN
            IF OLD.state_category = 'waiting' THEN leaves := OLD.queue_id; END IF;
        END IF;
        IF TG_OP <> 'DELETE' THEN
            IF NEW.state_category = 'waiting' THEN joins := NEW.queue_id; END IF;
        END IF;
        IF leaves IS NOT DISTINCT FROM joins THEN
            RETURN NULL;  -- still waiting in the same queue
        END IF;
        -- Two queues (a forward): the lower id first, so that two forwards lock in the same order.
        IF leaves IS NOT NULL AND (joins IS NULL OR leaves < joins) THEN
            PERFORM queue_waiting_add(OLD.tenant_id, leaves, -1);
            leaves := NULL;
        END IF;
        IF joins IS NOT NULL THEN
            PERFORM queue_waiting_add(NEW.tenant_id, joins, 1);
        END IF;
        IF leaves IS NOT NULL THEN
            PERFORM queue_waiting_add(OLD.tenant_id, leaves, -1);
        END IF;
        RETURN NULL;
    END $$;

    CREATE TRIGGER tickets_count_waiting_insert AFTER INSERT ON tickets
        FOR EACH ROW WHEN (NEW.state_category = 'waiting') EXECUTE FUNCTION tickets_count_waiting();
    CREATE TRIGGER tickets_count_waiting_update AFTER UPDATE OF queue_id, state_category ON tickets
        FOR EACH ROW WHEN ((OLD.state_category = 'waiting' OR NEW.state_category = 'waiting')
                           AND (OLD.state_category IS DISTINCT FROM NEW.state_category
                                OR OLD.queue_id IS DISTINCT FROM NEW.queue_id))
        EXECUTE FUNCTION tickets_count_waiting();
    CREATE TRIGGER tickets_count_waiting_delete AFTER DELETE ON tickets
        FOR EACH ROW WHEN (OLD.state_category = 'waiting') EXECUTE FUNCTION tickets_count_waiting();

    CREATE FUNCTION queue_waiting_count(p_tenant_id uuid, p_queue_id uuid)
        RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        RETURN (SELECT coalesce(sum(waiting), 0) FROM queue_waiting_counts
                 WHERE tenant_id = p_tenant_id AND queue_id = p_queue_id);
    END $$;
    """)


def downgrade() -> None:
    run_script("""
    DROP TRIGGER tickets_count_waiting_insert ON tickets;
    DROP TRIGGER tickets_count_waiting_update ON tickets;
    DROP TRIGGER tickets_count_waiting_delete ON tickets;
    DROP FUNCTION tickets_count_waiting();
    DROP FUNCTION queue_waiting_add(uuid, uuid, bigint);
    DROP FUNCTION queue_waiting_count(uuid, uuid);
    DROP TABLE queue_waiting_counts;
    """)
