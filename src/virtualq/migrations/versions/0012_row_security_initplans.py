"""Row security evaluated once per statement, not once per row.

The policies of 0008 and 0010 call `current_setting('virtualq.tenant_id')` and cast it to uuid inside the
row test, so PostgreSQL ran both for every row a statement read: a ticket's position (a count of the
waiting tickets ahead of it) read as the application role cost six times what it cost its owner (pgbench,
the get-ticket statement over a line of 1,000: 5,364 tps as `virtualq_app` against 31,740 as the owner).
Wrapped in scalar subqueries, the setting is read once per statement (an InitPlan) and each row compares
two values: 15,183 tps. The wall is the same: the same rows are visible and writable.

Revision ID: 0012
Revises: 0011
"""

from virtualq.migrations.sql import run_script

revision = "0012"
down_revision = "0011"
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
    "queue_waiting_counts",
)

VISIBLE = (
    "(SELECT current_setting('virtualq.tenant_id', true) = 'system') "
    "OR tenant_id = (SELECT nullif(nullif(current_setting('virtualq.tenant_id', true), ''), 'system')::uuid)"
)

# As 0008 and 0010 wrote it.
VISIBLE_PER_ROW = (
    "current_setting('virtualq.tenant_id', true) = 'system' "
    "OR tenant_id = nullif(nullif(current_setting('virtualq.tenant_id', true), ''), 'system')::uuid"
)


def _policies(visible: str) -> str:
    return "\n".join(
        f"ALTER POLICY tenant_wall ON {table} USING ({visible}) WITH CHECK ({visible});"
        for table in TENANT_TABLES
    )


def upgrade() -> None:
    run_script(_policies(VISIBLE))


def downgrade() -> None:
    run_script(_policies(VISIBLE_PER_ROW))
