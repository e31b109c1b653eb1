"""Where a called customer should go: the counter (desk, window) that called the ticket.

Set by call-next or a transition that names it, cleared when the ticket goes back to the line; shown on the
wall display, the customer's page and in the events. A nullable column without a default: adding it
rewrites nothing.

Revision ID: 0020
Revises: 0019
"""

from virtualq.migrations.sql import run_script

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("""
    ALTER TABLE tickets ADD COLUMN counter text;
    """)


def downgrade() -> None:
    run_script("""
    ALTER TABLE tickets DROP COLUMN counter;
    """)
