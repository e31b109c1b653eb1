"""Running the Alembic migrations shipped inside the package.

Alembic and SQLAlchemy (which the migrations' environment runs on) cost a process ~23 MB and a few hundred
milliseconds to import. The server never imports them: it reads the head revision from the migration files
themselves, and `virtualq serve` runs an upgrade, when the database needs one, in a child process
(`upgrade_apart`). See docs/performance.md.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
DSN_ENV = "VIRTUALQ_MIGRATE_DSN"  # how `upgrade_apart` hands the database to its child (not in its argv)

# `revision = "0022"` and `down_revision = "0021"` (or None) at the top of each migration file.
_REVISION_LINE = re.compile(
    r'^(down_revision|revision)\s*(?::[^=]+)?=\s*(?:"([^"]+)"|None)\s*$', re.MULTILINE
)


class MigrationFailed(Exception):
    pass


def alembic_config(dsn: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["dsn"] = dsn
    return config


@functools.cache
def head_revision() -> str:
    """The revision no other migration builds on, read from the files as Alembic reads them
    (tests/test_cli.py checks that Alembic finds the same)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        found = dict(_REVISION_LINE.findall(path.read_text()))
        if not found.get("revision"):
            raise MigrationFailed(f"{path.name} names no revision")
        revisions.add(found["revision"])
        if found.get("down_revision"):
            parents.add(found["down_revision"])
    heads = revisions - parents
    if len(heads) != 1:
        raise MigrationFailed(f"the migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def upgrade(dsn: str, revision: str = "head") -> None:
    """Blocking; runs its own event loop, so call it from a thread when one is running."""
    from alembic import command

    command.upgrade(alembic_config(dsn), revision)


def downgrade(dsn: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(dsn), revision)


def upgrade_apart(dsn: str) -> None:
    """Upgrade to head in a child process, which prints its own errors: the caller stays free of Alembic."""
    done = subprocess.run([sys.executable, "-m", "virtualq.migrate"], env={**os.environ, DSN_ENV: dsn})
    if done.returncode != 0:
        raise MigrationFailed(f"the migrations failed (exit status {done.returncode}; see above)")


async def current_revision(conn: asyncpg.Connection) -> str | None:
    exists = await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
    if not exists:
        return None
    revision: str | None = await conn.fetchval("SELECT version_num FROM alembic_version")
    return revision


if __name__ == "__main__":  # upgrade_apart's child
    upgrade(os.environ[DSN_ENV])
