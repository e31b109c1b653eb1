"""A per-ticket secret for the customer's ticket page link.

Revision ID: 0005
Revises: 0004
"""

from virtualq.migrations.sql import run_script

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("""
    -- 244 random bits (two v4 UUIDs); the link /t/{id}?token=... is the only way to the page.
    ALTER TABLE tickets ADD COLUMN public_token text NOT NULL
        DEFAULT replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
    """)


def downgrade() -> None:
    run_script("ALTER TABLE tickets DROP COLUMN public_token;")
