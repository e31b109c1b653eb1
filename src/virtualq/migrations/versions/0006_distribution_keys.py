"""Keys ready for distributing the tenant tables by tenant_id (Citus); see docs/scaling.md.

Revision ID: 0006
Revises: 0005

Every other tenant table already led its keys with tenant_id. What was left:
- `events` had a primary key on `id` alone; a distributed table's unique keys must contain the distribution
  column. The new key is (tenant_id, id), which is also exactly the old `events_tenant_cursor_idx`.
- `api_keys` (a reference table: keys are looked up by their digest before any tenant is known, and platform
  and account keys have no tenant) referenced `employees` (distributed). A reference table cannot reference a
  distributed one, so that foreign key goes; the API already refuses an employee_id that is not an active
  employee of the key's tenant, and employees are never deleted.
- The customer's ticket page finds a ticket by its id alone (the link carries no tenant). Without an index on
  `id` that is a scan of every tenant's tickets (PostgreSQL 17 has no skip scan over the primary key).
  Not unique: a distributed table cannot have a unique index without tenant_id; the primary key still is.
"""

from virtualq.migrations.sql import run_script

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("""
    ALTER TABLE events DROP CONSTRAINT events_pkey;
    ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (tenant_id, id);
    DROP INDEX events_tenant_cursor_idx;

    ALTER TABLE api_keys DROP CONSTRAINT api_keys_tenant_id_employee_id_fkey;

    CREATE INDEX tickets_id_idx ON tickets (id);
    """)


def downgrade() -> None:
    run_script("""
    DROP INDEX tickets_id_idx;

    ALTER TABLE api_keys ADD CONSTRAINT api_keys_tenant_id_employee_id_fkey
        FOREIGN KEY (tenant_id, employee_id) REFERENCES employees (tenant_id, id);

    CREATE INDEX events_tenant_cursor_idx ON events (tenant_id, id);
    ALTER TABLE events DROP CONSTRAINT events_pkey;
    ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (id);
    """)
