"""Run a multi-statement SQL script inside the migration's transaction.

asyncpg's prepared statements accept one command each; its simple-query `execute` accepts a script, so
migrations reach the raw driver connection (inside SQLAlchemy's greenlet bridge) instead of `op.execute`.
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_


def run_script(sql: str) -> None:
    raw = op.get_bind().connection.dbapi_connection
    assert raw is not None
    await_(raw.driver_connection.execute(sql))
