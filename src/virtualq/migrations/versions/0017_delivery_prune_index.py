"""An index for pruning finished webhook deliveries in batches, by age.

The sweeper prunes the event log, finished webhook deliveries and expired idempotency keys in bounded
batches (sweeper.py; docs/performance.md "Table upkeep"). Events (`occurred_at`, 0003) and idempotency keys
(`expires_at`, 0007) have an index on the age they are pruned by; deliveries were pruned by one `DELETE`
over a sequential scan, which a batch would repeat once per batch. The index takes one entry per delivery
when it finishes (that update changes `status`, which `webhook_deliveries_due_idx`'s predicate reads, so it
was never a HOT update anyway).

Built with a plain `CREATE INDEX` inside the migration's transaction: new deliveries wait while it runs, and
with them every change of a ticket of a tenant with webhooks (the events trigger writes its deliveries). The
deliveries' retention keeps the table, and so the wait, short: seconds for millions of rows.

Revision ID: 0017
Revises: 0016
"""

from virtualq.migrations.sql import run_script

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("""
    CREATE INDEX webhook_deliveries_finished_idx ON webhook_deliveries (updated_at) WHERE status <> 'pending';
    """)


def downgrade() -> None:
    run_script("""
    DROP INDEX webhook_deliveries_finished_idx;
    """)
