"""Running the Alembic migrations shipped inside the package.

Alembic and SQLAlchemy (which the migrations' environment runs on) cost a process ~23 MB and a few hundred
milliseconds to import. The server never imports them: it reads the head revision from the migration files
themselves, and `virtualq serve` runs an upgrade, when the database needs one, in a child process
(`upgrade_apart`). See docs/performance.md.
"""

from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
DSN_ENV = "VIRTUALQ_MIGRATE_DSN"  # how `upgrade_apart` hands the database to its child (not in its argv)


class MigrationFailed(Exception):
    pass


def alembic_config(dsn: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["dsn"] = dsn
    return config


@functools.cache
def revisions() -> tuple[frozenset[str], str]:
    """This build's revisions and its head (the one no other builds on), read from the migration files'
    `revision` and `down_revision` as Alembic reads them; tests/test_cli.py checks that Alembic agrees."""
    known: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        found: dict[str, object] = {}
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                found[target.id] = ast.literal_eval(value)
        revision, down = found.get("revision"), found.get("down_revision")
        if not isinstance(revision, str):
            raise MigrationFailed(f"{path.name} names no revision")
        known.add(revision)
        if isinstance(down, str):
            parents.add(down)
        elif isinstance(down, tuple | list):  # a merge of branches
            parents.update(str(each) for each in down)
    heads = known - parents
    if len(heads) != 1:
        raise MigrationFailed(f"the migrations have {len(heads)} heads: {sorted(heads)}")
    return frozenset(known), heads.pop()


def head_revision() -> str:
    return revisions()[1]


def upgrade(dsn: str, revision: str = "head") -> None:
    """Blocking; runs its own event loop, so call it from a thread when one is running."""
    from alembic import command

    command.upgrade(alembic_config(dsn), revision)


def downgrade(dsn: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(dsn), revision)


def upgrade_apart(dsn: str) -> None:
    """Upgrade to head in a child process, which prints its own error: the caller stays free of Alembic.
    If the caller is interrupted meanwhile, the child is stopped (its migration's transaction rolls back)."""
    # -P: the working directory does not come first on the child's import path.
    child = subprocess.Popen(
        [sys.executable, "-P", "-m", "virtualq.migrate"], env={**os.environ, DSN_ENV: dsn}
    )
    try:
        status = child.wait()
    finally:
        if child.poll() is None:
            child.terminate()
            child.wait()
    if status != 0:
        raise MigrationFailed(f"the migrations failed (exit status {status}; see above)")


async def current_revision(conn: asyncpg.Connection) -> str | None:
    exists = await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
    if not exists:
        return None
    revision: str | None = await conn.fetchval("SELECT version_num FROM alembic_version")
    return revision


def _child() -> int:
    """upgrade_apart's child: one line on stderr if the upgrade fails (Alembic's or the database's reason)."""
    try:
        upgrade(os.environ[DSN_ENV])
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        sys.stderr.write(f"cannot migrate: {type(exc).__name__}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_child())
