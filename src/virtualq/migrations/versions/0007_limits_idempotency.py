"""Per-key rate limits and the idempotency-key store.

Revision ID: 0007
Revises: 0006
"""

from virtualq.migrations.sql import run_script

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("""
    -- NULL: the server's RATE_LIMIT_PER_MINUTE / RATE_LIMIT_BURST; 0 per minute: this key is not limited.
    ALTER TABLE api_keys
        ADD COLUMN rate_limit_per_minute integer CHECK (rate_limit_per_minute >= 0),
        ADD COLUMN rate_limit_burst integer CHECK (rate_limit_burst >= 1);

    -- One row per (caller, Idempotency-Key). `owner` is a digest of the credential that sent the request, so
    -- two callers never see each other's keys. Claimed before the request runs; `committed` is set inside the
    -- request's own transaction; the response is stored once it is known.
    CREATE TABLE idempotency_keys (
        owner bytea NOT NULL,
        key text NOT NULL,
        fingerprint bytea NOT NULL,
        state text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'committed', 'completed')),
        lease_until timestamptz NOT NULL,
        response_status integer,
        response_headers jsonb,
        response_body bytea,
        created_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL,
        PRIMARY KEY (owner, key)
    );
    CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
    """)


def downgrade() -> None:
    run_script("""
    DROP TABLE idempotency_keys;
    ALTER TABLE api_keys DROP COLUMN rate_limit_per_minute, DROP COLUMN rate_limit_burst;
    """)
