"""A webhook's previous signing secret, kept for a while after a rotation.

`POST /v1/webhooks/{id}/rotate-secret` gives a subscription a new secret. For as long as the caller asks
(default a day), deliveries are signed with both, so that receivers can move to the new one without
refusing a delivery in between.

Revision ID: 0021
Revises: 0020
"""

from virtualq.migrations.sql import run_script

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("""
    ALTER TABLE webhooks ADD COLUMN previous_secret text, ADD COLUMN previous_secret_until timestamptz;
    """)


def downgrade() -> None:
    run_script("""
    ALTER TABLE webhooks DROP COLUMN previous_secret, DROP COLUMN previous_secret_until;
    """)
