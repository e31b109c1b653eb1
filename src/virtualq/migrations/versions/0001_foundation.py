"""Foundation: accounts, tenants, customers, employees, API keys.

Revision ID: 0001
Revises:
"""

from virtualq.migrations.sql import run_script

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("""
    CREATE TABLE accounts (
        id              uuid PRIMARY KEY,
        name            text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
        billing_email   text,
        billing_address text,
        is_active       boolean NOT NULL DEFAULT true,
        created_at      timestamptz NOT NULL DEFAULT now(),
        updated_at      timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX accounts_created_at_idx ON accounts (created_at, id);

    -- The tenant is the distribution key: every tenant-owned table below leads its keys with tenant_id.
    CREATE TABLE tenants (
        id               uuid PRIMARY KEY,
        account_id       uuid NOT NULL REFERENCES accounts (id),
        name             text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
        description      text,
        location_name    text,
        location_address text,
        latitude         double precision CHECK (latitude BETWEEN -90 AND 90),
        longitude        double precision CHECK (longitude BETWEEN -180 AND 180),
        timezone         text NOT NULL DEFAULT 'UTC',
        config           jsonb NOT NULL DEFAULT '{}'::jsonb,
        is_active        boolean NOT NULL DEFAULT true,
        created_at       timestamptz NOT NULL DEFAULT now(),
        updated_at       timestamptz NOT NULL DEFAULT now(),
        CHECK ((latitude IS NULL) = (longitude IS NULL))
    );
    CREATE INDEX tenants_account_idx ON tenants (account_id, created_at, id);

    -- Customers belong to an account and are shared by its tenants.
    CREATE TABLE customers (
        id          uuid PRIMARY KEY,
        account_id  uuid NOT NULL REFERENCES accounts (id),
        fname       text,
        lname       text,
        email       text,
        phone       text,
        is_active   boolean NOT NULL DEFAULT true,
        created_at  timestamptz NOT NULL DEFAULT now(),
        updated_at  timestamptz NOT NULL DEFAULT now(),
        UNIQUE (account_id, id)
    );
    CREATE INDEX customers_account_idx ON customers (account_id, created_at, id);

    CREATE TABLE employees (
        tenant_id   uuid NOT NULL REFERENCES tenants (id),
        id          uuid NOT NULL,
        fname       text NOT NULL,
        lname       text NOT NULL,
        email       text NOT NULL,
        role        text NOT NULL DEFAULT 'staff',
        queue_ids   uuid[] NOT NULL DEFAULT '{}',
        is_active   boolean NOT NULL DEFAULT true,
        created_at  timestamptz NOT NULL DEFAULT now(),
        updated_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, id)
    );
    -- Unique among active staff only, so a deactivated person's address can be reused.
    CREATE UNIQUE INDEX employees_tenant_email_key ON employees (tenant_id, lower(email)) WHERE is_active;
    CREATE INDEX employees_tenant_created_idx ON employees (tenant_id, created_at, id);

    CREATE TABLE api_keys (
        id           uuid PRIMARY KEY,
        name         text NOT NULL,
        key_prefix   text NOT NULL,
        key_hash     bytea NOT NULL UNIQUE,
        scope        text NOT NULL CHECK (scope IN ('platform', 'account', 'tenant')),
        role         text NOT NULL CHECK (role IN ('admin', 'staff', 'display')),
        account_id   uuid REFERENCES accounts (id),
        tenant_id    uuid REFERENCES tenants (id),
        employee_id  uuid,
        created_by   uuid,
        revoked_at   timestamptz,
        created_at   timestamptz NOT NULL DEFAULT now(),
        updated_at   timestamptz NOT NULL DEFAULT now(),
        CHECK (
            (scope = 'platform' AND account_id IS NULL AND tenant_id IS NULL)
            OR (scope = 'account' AND account_id IS NOT NULL AND tenant_id IS NULL)
            OR (scope = 'tenant' AND account_id IS NOT NULL AND tenant_id IS NOT NULL)
        ),
        CHECK (employee_id IS NULL OR tenant_id IS NOT NULL),
        FOREIGN KEY (tenant_id, employee_id) REFERENCES employees (tenant_id, id)
    );
    CREATE INDEX api_keys_account_idx ON api_keys (account_id, created_at, id);
    CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, created_at, id);
    """)


def downgrade() -> None:
    run_script("""
    DROP TABLE api_keys;
    DROP TABLE employees;
    DROP TABLE customers;
    DROP TABLE tenants;
    DROP TABLE accounts;
    """)
