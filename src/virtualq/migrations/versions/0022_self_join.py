"""Self-service join: a queue's public link where customers take a ticket themselves (a QR code on the door,
a kiosk tablet).

`self_join_type_definition_id` is the type such tickets get; null means the link takes no one. The link's
token is made when self-join is first turned on and kept while it is off, so a printed code works again
when it is turned back on; `POST /v1/queues/{id}/rotate-join-link` replaces it.

Revision ID: 0022
Revises: 0021
"""

from virtualq.migrations.sql import run_script

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("""
    ALTER TABLE queues ADD COLUMN self_join_type_definition_id uuid, ADD COLUMN join_token text;
    -- Not unique: a unique index must hold the tenant to be distributed (docs/operations.md); 128 random bits
    -- do not repeat.
    CREATE INDEX queues_join_token_idx ON queues (join_token) WHERE join_token IS NOT NULL;
    """)


def downgrade() -> None:
    run_script("""
    DROP INDEX queues_join_token_idx;
    ALTER TABLE queues DROP COLUMN self_join_type_definition_id, DROP COLUMN join_token;
    """)
