"""How far each tenant's event log has been pruned, so that a client resuming from before that is told.

The sweeper deletes events older than the retention period. A client that resumed from a cursor older
than what was pruned (an SSE `Last-Event-ID`, or `after=` on `GET /v1/events`) used to get the oldest kept
events as if nothing were missing. The prune now records, per tenant, the newest cursor it deleted; a
resume from before that mark is told of the gap (docs/events.md "Gaps"). One row per tenant that ever had
events pruned, written by the sweeper once per batch.

Revision ID: 0018
Revises: 0017
"""

from virtualq.migrations.sql import run_script

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

# Tenant tables this migration adds (row security as in 0012's form; distributed by tenant_id).
TENANT_TABLES = ("event_prune_marks",)

VISIBLE = (
    "(SELECT current_setting('virtualq.tenant_id', true) = 'system') "
    "OR tenant_id = (SELECT nullif(nullif(current_setting('virtualq.tenant_id', true), ''), 'system')::uuid)"
)


def upgrade() -> None:
    run_script(f"""
    CREATE TABLE event_prune_marks (
        tenant_id  uuid PRIMARY KEY,
        -- the newest cursor (tx_id, id) of the tenant's events deleted so far
        tx_id      xid8 NOT NULL,
        id         bigint NOT NULL,
        pruned_at  timestamptz NOT NULL DEFAULT now()
    );
    ALTER TABLE event_prune_marks ENABLE ROW LEVEL SECURITY;
    CREATE POLICY tenant_wall ON event_prune_marks USING ({VISIBLE}) WITH CHECK ({VISIBLE});
    GRANT SELECT, INSERT, UPDATE, DELETE ON event_prune_marks TO virtualq_app;
    """)


def downgrade() -> None:
    run_script("""
    DROP TABLE event_prune_marks;
    """)
