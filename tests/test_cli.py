"""The `virtualq` command and the embedded database, as real processes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from tests.conftest import make_settings
from virtualq import migrate
from virtualq.app import create_app
from virtualq.embedded_pg import EmbeddedPostgres

VIRTUALQ = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "virtualq"
FOUNDATION_TABLES = {"accounts", "tenants", "customers", "employees", "api_keys"}
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


# --- helpers ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def base_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """A clean environment: none of the caller's VirtualQ settings leak into the subprocess."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "VIRTUALQ_DATA_DIR": str(data_dir),
    }
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VIRTUALQ), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


async def execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def public_tables(dsn: str) -> set[str]:
    rows = asyncio.run(fetch(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
    return {row["tablename"] for row in rows}


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def gone_soon(pid: int, timeout: float = 5.0) -> bool:
    """The process has exited, or does within `timeout` (it removes its pid file just before exiting)."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


def postgres_processes_for(pgdata: Path) -> list[int]:
    """Pids of processes whose command line names this data directory."""
    needle = str(pgdata).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and b"postgres" in cmdline:
            pids.append(int(entry.name))
    return pids


def no_postgres_soon(pgdata: Path, timeout: float = 5.0) -> list[int]:
    """Pids still running on `pgdata` after waiting up to `timeout` for them to exit."""
    deadline = time.monotonic() + timeout
    while (pids := [pid for pid in postgres_processes_for(pgdata) if pid_alive(pid)]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.02)
    return pids


@dataclass
class Server:
    """A `virtualq serve` subprocess with its output in files."""

    process: subprocess.Popen[bytes]
    port: int
    stdout: Path
    stderr: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Poll /readyz until 200; return the seconds it took from process start."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        pytest.fail(f"serve was not ready within {timeout}s:\n{self.output()}")

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """Start `virtualq serve` on a data dir; at the end every process is killed and PostgreSQL stopped."""
    started: list[tuple[Server, Path]] = []

    def start(data_dir: Path, name: str, **variables: str) -> Server:
        port = free_port()
        stdout, stderr = tmp_path / f"{name}.stdout", tmp_path / f"{name}.stderr"
        env = base_env(data_dir, PORT=str(port), LOG_LEVEL="warning", **variables)
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen([str(VIRTUALQ), "serve"], env=env, stdout=out, stderr=err)
        server = Server(process, port, stdout, stderr)
        started.append((server, data_dir))
        return server

    try:
        yield start
    finally:
        for server, data_dir in started:
            if server.process.poll() is None:
                server.process.kill()
                server.process.wait(timeout=STOP_TIMEOUT)
            leftover = EmbeddedPostgres(data_dir)
            if leftover.is_initialised and leftover.is_running():
                leftover.stop()


# --- configuration errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "abc"),
        ("LOG_LEVEL", "loud"),
        ("ENV", "prod"),
        ("DATABASE_URL", "mysql://x"),
        ("DB_POOL_MIN_SIZE", "50"),
        ("PUBLIC_BASE_URL", "q.example.com"),
        ("PUBLIC_BASE_URL", "https://q.example.com/?x=1"),
        ("PUBLIC_BASE_URL", "https://user:pw@q.example.com"),
        ("PUBLIC_BASE_URL", "https://q.example.com:port"),
    ],
)
def test_invalid_configuration_is_one_line_and_exit_2(tmp_path: Path, variable: str, value: str) -> None:
    data_dir = tmp_path / "data"
    result = run_cli("serve", env=base_env(data_dir, **{variable: value}), timeout=60)
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("invalid configuration: "), lines[0]
    assert variable in lines[0]
    assert result.stdout == ""
    # Nothing was started or written before the configuration was checked.
    assert not (data_dir / "pgdata").exists()
    assert not (data_dir / "admin_api_key").exists()


@pytest.mark.slow
def test_serve_without_auto_migrate_on_an_unmigrated_database_says_to_migrate(tmp_path: Path) -> None:
    """AUTO_MIGRATE=false on a new embedded database: no connection could take the application role, so
    instead of a start-up traceback the server says in one line what to run, and stops its database."""
    data_dir = tmp_path / "data"
    env = base_env(data_dir, AUTO_MIGRATE="false", PORT=str(free_port()), LOG_LEVEL="warning")
    result = run_cli("serve", env=env)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "the database is not migrated (at revision none" in lines[0]
    assert "run `virtualq migrate`" in lines[0]
    assert "VirtualQ http" not in result.stdout  # no banner for a server that does not start
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()  # the embedded database was stopped

    # Migrated, the same command starts.
    assert run_cli("migrate", env=base_env(data_dir)).returncode == 0
    assert _cannot_start(data_dir) is None
    # At a revision that has the role, on a server without it (a dump restored elsewhere: roles are not in
    # it): that is what is said, not to migrate.
    problem = _cannot_start(data_dir, "DROP OWNED BY virtualq_app; DROP ROLE virtualq_app")
    assert problem is not None
    assert problem.startswith(
        f"the database is at revision {migrate.head_revision()}, but the role virtualq_app it needs does not"
    )
    # With AUTO_MIGRATE on (the default) too: migrating cannot make the role there. It said so only with
    # AUTO_MIGRATE=false, and otherwise printed its banner, then a traceback.
    restored = run_cli("serve", env=base_env(data_dir, PORT=str(free_port()), LOG_LEVEL="warning"))
    assert restored.returncode == 2, restored
    assert restored.stderr.strip() == problem
    assert "VirtualQ http" not in restored.stdout

    # A database that cannot be reached: one line too.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nowhere = f"postgresql://nobody@127.0.0.1:{closed.getsockname()[1]}/gone"
    for migrating in ("false", "true"):
        env = base_env(tmp_path / "unused", AUTO_MIGRATE=migrating, DATABASE_URL=nowhere, LOG_LEVEL="warning")
        result = run_cli("serve", env={**env, "PORT": str(free_port())})
        assert result.returncode == 2, result
        assert result.stderr.strip().startswith("cannot connect to the database: "), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    migrated = run_cli("migrate", env=env)
    assert (migrated.returncode, migrated.stderr.count("\n")) == (2, 1), migrated.stderr
    assert migrated.stderr.startswith("cannot connect to the database: ")
    created = run_cli("api-key", "create", env=env)  # was a traceback of 131 lines
    assert (created.returncode, created.stderr.count("\n")) == (2, 1), created.stderr
    assert created.stderr.startswith("cannot connect to the database: ")

    # A DATABASE_URL that asyncpg cannot read (a port that is no number, an unknown sslmode): one line, and
    # nothing written (the development admin key was written first).
    # Nor is any part of the password repeated: asyncpg's own message quotes the piece it choked on, which
    # for a password with an unencoded # or ? is a piece of the password.
    unreadable_urls = (
        "postgresql://u:p@@host:notaport/db",
        f"{nowhere}?sslmode=bogus",
        "postgresql://app:Xy7#kQ2pLm@db.example/vq",
        "postgresql://app:Xy7?kQ2pLm@db.example/vq",
    )
    for unreadable in unreadable_urls:
        unused = tmp_path / "unreadable"
        env = base_env(unused, DATABASE_URL=unreadable, LOG_LEVEL="warning")
        for command in (["serve"], ["migrate"], ["api-key", "create"]):
            result = run_cli(*command, env={**env, "PORT": str(free_port())})
            assert result.returncode == 2, result
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, result.stderr
            assert lines[0].startswith(("DATABASE_URL cannot be read: ", "cannot connect to the database: "))
            for secret in (":p@", "Xy7", "kQ2pLm"):
                assert secret not in lines[0], lines[0]
        assert not unused.exists()


def _cannot_start(data_dir: Path, first: str | None = None) -> str | None:
    """`_cannot_start_on` the embedded database in `data_dir`, after running `first` there as its owner."""
    from virtualq.cli import _cannot_start_on, database
    from virtualq.config import load_settings

    os.environ["VIRTUALQ_DATA_DIR"] = str(data_dir)
    try:
        with database(load_settings()) as dsn:
            if first is not None:
                asyncio.run(execute(dsn, first))
            return _cannot_start_on(dsn, migrating=False)
    finally:
        del os.environ["VIRTUALQ_DATA_DIR"]


@pytest.mark.slow
def test_demo_prints_its_urls_without_the_access_log(tmp_path: Path) -> None:
    """`virtualq demo` at the default log level: the pages' URLs, not a screen of in-process request lines."""
    result = run_cli("demo", env=base_env(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Demo data created.")
    assert result.stdout.count("#key=vq_") == 4  # a display and a console page for each of the two places
    assert "request" not in result.stderr, result.stderr


@pytest.mark.slow
def test_serve_on_a_port_in_use_says_so_before_its_banner(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = base_env(data_dir, HOST="127.0.0.1", PORT=str(port), LOG_LEVEL="warning")
        result = run_cli("serve", env=env)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    taken_message = "(Address already in use): another server may be running; set PORT"
    assert lines[0] == f"cannot listen on 127.0.0.1:{port} {taken_message}"
    assert "VirtualQ http" not in result.stdout
    assert not (data_dir / "pgdata").exists()  # refused before the database was started
    assert not (data_dir / "admin_api_key").exists()  # and before anything was written


# --- the embedded database -------------------------------------------------------------------------------


def test_embedded_postgres_keeps_data_across_restarts_and_stops_cleanly(tmp_path: Path) -> None:
    embedded = EmbeddedPostgres(tmp_path / "data")
    try:
        dsn = embedded.start()
        assert embedded.is_running()
        assert embedded.started_here
        pid = postmaster_pid(embedded.pgdata)
        assert pid_alive(pid)
        asyncio.run(execute(dsn, "CREATE TABLE t (x int); INSERT INTO t VALUES (42)"))

        # A second handle on a running server does not claim it (so it will not stop it).
        other = EmbeddedPostgres(tmp_path / "data")
        assert other.start() == dsn
        assert not other.started_here

        embedded.stop()
        assert not embedded.is_running()
        assert not embedded.started_here
        assert not (embedded.pgdata / "postmaster.pid").exists()
        assert gone_soon(pid)
        assert no_postgres_soon(embedded.pgdata) == []

        assert embedded.start() == dsn
        assert embedded.is_running()
        rows = asyncio.run(fetch(dsn, "SELECT x FROM t"))
        assert [row["x"] for row in rows] == [42]

        pid = postmaster_pid(embedded.pgdata)
        embedded.stop()
        assert not embedded.is_running()
        assert not (embedded.pgdata / "postmaster.pid").exists()
        assert gone_soon(pid)
        assert no_postgres_soon(embedded.pgdata) == []
    finally:
        if embedded.is_initialised and embedded.is_running():
            embedded.stop()


def test_embedded_postgres_on_a_port_of_its_choosing(tmp_path: Path) -> None:
    """A `port` among the settings is the server's, and its DSN's (the socket's file name carries it)."""
    embedded = EmbeddedPostgres(tmp_path / "data", settings={"port": "54329"})
    try:
        dsn = embedded.start()
        assert "port=54329" in dsn
        rows = asyncio.run(fetch(dsn, "SHOW port"))
        assert [row["port"] for row in rows] == ["54329"]
    finally:
        if embedded.is_initialised and embedded.is_running():
            embedded.stop()


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "default-policy"])
def test_embedded_postgres_backends_run_under_the_batch_policy(tmp_path: Path, batch: bool) -> None:
    """The postmaster, the processes it started before we set the policy, and every backend forked since
    (a connection's own process) run under SCHED_BATCH; with batch_scheduling off, under the policy they
    inherit from this process (SCHED_OTHER unless the test runs under another)."""
    expected = os.SCHED_BATCH if batch else os.sched_getscheduler(0)
    embedded = EmbeddedPostgres(tmp_path / "data", batch_scheduling=batch)
    try:
        dsn = embedded.start()
        pid = postmaster_pid(embedded.pgdata)
        started = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        assert started, "no auxiliary processes (checkpointer, walwriter, ...) found"
        policies: dict[int, int] = {}
        for each in [pid, *started]:
            try:
                policies[each] = os.sched_getscheduler(each)
            except ProcessLookupError:  # a short-lived child (a start-up one) that ended since it was listed
                continue
        assert pid in policies
        assert len(policies) > 1, "every auxiliary process ended"

        async def backend_policy() -> tuple[int, int]:
            conn = await asyncpg.connect(dsn)
            try:
                backend = await conn.fetchval("SELECT pg_backend_pid()")
                return backend, os.sched_getscheduler(backend)
            finally:
                await conn.close()

        backend, policy = asyncio.run(backend_policy())
        assert backend not in started
        assert policy == expected
        assert policies == {each: expected for each in policies}
    finally:
        embedded.stop()


# --- virtualq serve --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_serve_end_to_end_with_embedded_postgres(tmp_path: Path, serve: Any) -> None:
    data_dir = tmp_path / "vq"
    key_file = data_dir / "admin_api_key"

    server = serve(data_dir, "cold")
    cold = server.wait_ready()
    print(f"\nvirtualq serve cold start (initdb + migrate) ready in {cold:.2f}s")

    admin_key = key_file.read_text().strip()
    assert len(admin_key) >= 24
    assert key_file.stat().st_mode & 0o077 == 0  # owner-only
    headers = {"Authorization": f"Bearer {admin_key}"}

    listed = httpx.get(server.base + "/v1/accounts", headers=headers, timeout=10)
    assert listed.status_code == 200, listed.text
    assert listed.json()["data"] == []
    created = httpx.post(server.base + "/v1/accounts", json={"name": "First"}, headers=headers, timeout=10)
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "First"
    assert httpx.get(server.base + "/v1/accounts", timeout=10).status_code == 401

    # The answers do not name the server software.
    assert "server" not in listed.headers
    assert "server" not in httpx.head(server.base + "/healthz", timeout=10).headers

    docs = httpx.get(server.base + "/docs", timeout=10)
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "<html" in docs.text.lower()

    # The first start migrated the new database in a child process: the server itself never loaded
    # Alembic's SQLAlchemy (nor redis-py, with no REDIS_URL), ~40 MB of its idle memory (migrate.py).
    # (Compiled modules are what the maps list: SQLAlchemy's Cython parts and hiredis, redis-py's parser.
    # test_the_app_imports_neither_alembic_nor_redis checks the Python modules.)
    mapped = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "/sqlalchemy/" not in mapped
    assert "/hiredis/" not in mapped

    banner = server.stdout.read_text()
    assert "rate_limits_per_worker" not in server.output()  # one worker: one bucket per key
    assert server.base in banner
    assert server.base + "/docs" in banner
    assert str(key_file) in banner
    assert admin_key not in server.output()

    # SIGTERM: a graceful stop, exit code 0, and the embedded PostgreSQL this process started is stopped.
    assert server.terminate() == 0, server.output()
    assert not EmbeddedPostgres(data_dir).is_running()
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()
    assert no_postgres_soon(data_dir / "pgdata") == []


@pytest.mark.slow
def test_serve_restart_on_the_same_data_dir_keeps_data(tmp_path: Path, serve: Any) -> None:
    data_dir = tmp_path / "vq"
    key_file = data_dir / "admin_api_key"

    server = serve(data_dir, "first")
    server.wait_ready()
    admin_key = key_file.read_text().strip()
    headers = {"Authorization": f"Bearer {admin_key}"}
    name = f"Persisted {uuid.uuid4().hex[:8]}"
    created = httpx.post(server.base + "/v1/accounts", json={"name": name}, headers=headers, timeout=10)
    assert created.status_code == 201, created.text
    account_id = created.json()["id"]
    server.terminate()  # its exit code and clean-up are the end-to-end test's subject
    embedded = EmbeddedPostgres(data_dir)
    if embedded.is_running():  # make sure the restart below restarts PostgreSQL too
        embedded.stop()

    server = serve(data_dir, "second")
    warm = server.wait_ready()
    print(f"\nvirtualq serve warm start (existing data dir) ready in {warm:.2f}s")
    assert key_file.read_text().strip() == admin_key
    listed = httpx.get(server.base + "/v1/accounts", headers=headers, timeout=10)
    assert listed.status_code == 200, listed.text
    assert [(a["id"], a["name"]) for a in listed.json()["data"]] == [(account_id, name)]
    assert admin_key not in server.output()


@pytest.mark.slow
def test_an_embedded_postgres_killed_under_a_running_server_is_started_again(
    tmp_path: Path, serve: Any
) -> None:
    """The out-of-memory killer or a stray `kill` taking the embedded PostgreSQL's postmaster left the server
    answering 503 until someone restarted everything. `virtualq serve` now starts it again, says so, and
    stops it on the way out as before."""
    data_dir = tmp_path / "vq"
    server = serve(data_dir, "supervised")
    server.wait_ready()
    key = (data_dir / "admin_api_key").read_text().strip()
    headers = {"Authorization": f"Bearer {key}"}
    pgdata = data_dir / "pgdata"
    killed = postmaster_pid(pgdata)
    os.kill(killed, signal.SIGKILL)
    assert gone_soon(killed)
    deadline = time.monotonic() + 30
    while True:  # until a new postmaster serves (backends of the killed one may answer for a moment)
        try:
            restarted = "embedded_postgres_restarted" in server.output()
            ready = restarted and httpx.get(server.base + "/readyz", timeout=5).status_code == 200
            if ready:
                body = {"name": "After"}
                created = httpx.post(server.base + "/v1/accounts", json=body, headers=headers, timeout=5)
                if created.status_code == 201:
                    break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.5)
    assert postmaster_pid(pgdata) != killed
    output = server.output()
    assert "embedded_postgres_down" in output
    assert "embedded_postgres_restarted" in output
    # Stopped on purpose (as a shutdown signal to the whole process group does): not started again.
    EmbeddedPostgres(data_dir).stop()
    time.sleep(3 * 2.0)  # three looks of the supervisor
    assert not EmbeddedPostgres(data_dir).is_running()
    assert server.output().count("embedded_postgres_restarted") == 1
    assert server.terminate() == 0, server.output()
    assert no_postgres_soon(pgdata) == []


@pytest.mark.slow
def test_one_server_per_data_dir_and_a_crashed_servers_database_is_taken_over(
    tmp_path: Path, serve: Any
) -> None:
    """A second `virtualq serve` on the same data dir used to share the first one's embedded PostgreSQL and
    lose it when the first stopped; and a PostgreSQL left running by a killed server ran for ever, even
    after the next server's clean stop."""
    data_dir = tmp_path / "vq"
    first = serve(data_dir, "first")
    first.wait_ready()
    second = serve(data_dir, "second")
    assert second.process.wait(timeout=STOP_TIMEOUT) == 2
    lines = second.stderr.read_text().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"another virtualq serve (pid {first.process.pid}) is using {data_dir}"), lines
    assert "VirtualQ http" not in second.stdout.read_text()
    assert httpx.get(first.base + "/readyz", timeout=5).status_code == 200  # untouched

    pgdata = data_dir / "pgdata"
    first.process.kill()  # no clean stop: its PostgreSQL stays
    first.process.wait(timeout=STOP_TIMEOUT)
    orphan = postmaster_pid(pgdata)
    assert pid_alive(orphan)
    # A command (demo, migrate, ...) using the embedded PostgreSQL holds the lock shared: a server does not
    # take over the database the command is about to stop.
    import fcntl

    with (data_dir / "serve.lock").open("a+") as command:
        fcntl.flock(command, fcntl.LOCK_SH)
        beside = serve(data_dir, "beside-a-command")
        assert beside.process.wait(timeout=STOP_TIMEOUT) == 2
        assert (
            beside.stderr.read_text()
            .strip()
            .startswith("another virtualq command (demo, migrate, ...) is using")
        )
    third = serve(data_dir, "third")
    third.wait_ready()
    assert postmaster_pid(pgdata) == orphan  # taken over, not restarted
    assert "embedded_postgres_taken_over" in third.output()
    assert third.terminate() == 0
    assert gone_soon(orphan), "the PostgreSQL taken over was not stopped with its server"
    assert no_postgres_soon(pgdata) == []

    # A data dir that cannot be made (here: under a file) is one line too, for any command.
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    for command in (["serve"], ["migrate"]):
        result = run_cli(*command, env=base_env(blocked / "vq", PORT=str(free_port())))
        assert result.returncode == 2, result
        assert result.stderr.strip() == f"cannot use {blocked / 'vq'}: Not a directory; set VIRTUALQ_DATA_DIR"


def _environment_of_children(pid: int) -> list[dict[str, str]]:
    """The initial environment of each process whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent != pid:
                continue
            raw = (entry / "environ").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        found.append(
            dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
        )
    return found


def _sample(exposition: str, name: str) -> list[float]:
    return [float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines() if line.startswith(name)]


@pytest.mark.slow
def test_serve_with_two_workers_reports_every_process_in_each_scrape(tmp_path: Path, serve: Any) -> None:
    """A scrape of /metrics reaches whichever worker accepts it; each answers with the figures of both."""
    server = serve(tmp_path / "vq", "workers", WEB_CONCURRENCY="2")
    server.wait_ready()
    # Without Redis each worker limits a key on its own: said at start.
    assert "rate_limits_per_worker" in server.output()

    # Requests on new connections until both workers have answered some (a request id starts with 16 hex
    # digits drawn by its process).
    answered_by: dict[str, int] = {}
    sent = 0
    deadline = time.monotonic() + 60
    while len(answered_by) < 2 or sent < 20:
        assert time.monotonic() < deadline, f"one worker answered everything: {answered_by}"
        response = httpx.get(server.base + "/healthz", timeout=10)
        assert response.status_code == 200
        prefix = response.headers["x-request-id"][:16]
        answered_by[prefix] = answered_by.get(prefix, 0) + 1
        sent += 1

    healthz = 'virtualq_http_requests_total{method="GET",route="/healthz",status="200"}'
    # Six scrapes on new connections: whichever worker answers, it reports both workers' requests (each
    # answered only some of them).
    for _ in range(6):
        exposition = httpx.get(server.base + "/metrics", timeout=10).text
        assert _sample(exposition, healthz) == [float(sent)], exposition
        assert _sample(exposition, "virtualq_stream_clients ") == [0.0]
        # The pool's gauges: one series per worker, labelled with its pid.
        assert _sample(exposition, "virtualq_db_pool_max{") == [20.0, 20.0]

    # The workers (and multiprocessing's resource tracker) inherited one directory made for this run.
    directories = {
        env["PROMETHEUS_MULTIPROC_DIR"]
        for env in _environment_of_children(server.process.pid)
        if "PROMETHEUS_MULTIPROC_DIR" in env
    }
    assert len(directories) == 1, directories
    directory = Path(directories.pop())
    assert list(directory.glob("counter_*.db")), "the workers keep their counters in the run's directory"

    assert server.terminate() == 0, server.output()
    assert not directory.exists()  # made for this run, removed after it


def test_shared_metrics_directory_for_several_workers_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from virtualq.cli import MULTIPROC_DIR_ENV, shared_metrics

    monkeypatch.delenv(MULTIPROC_DIR_ENV, raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with shared_metrics(1):  # one worker: the in-memory registry, no directory
        assert MULTIPROC_DIR_ENV not in os.environ
    assert list(tmp_path.iterdir()) == []

    with shared_metrics(2):
        directory = Path(os.environ[MULTIPROC_DIR_ENV])
        assert directory.is_dir()
        assert directory.parent == tmp_path
        (directory / "counter_1.db").write_bytes(b"x")
    assert MULTIPROC_DIR_ENV not in os.environ
    assert not directory.exists()

    own = tmp_path / "operators"
    own.mkdir()
    monkeypatch.setenv(MULTIPROC_DIR_ENV, str(own))
    with shared_metrics(4):  # the operator's directory is used as it is and kept
        assert os.environ[MULTIPROC_DIR_ENV] == str(own)
    assert own.is_dir()
    assert os.environ[MULTIPROC_DIR_ENV] == str(own)

    # No directory can be made (a read-only file system): serve anyway, saying how to get one /metrics.
    monkeypatch.delenv(MULTIPROC_DIR_ENV)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "missing"))
    with shared_metrics(2):
        assert MULTIPROC_DIR_ENV not in os.environ
    logged = capsys.readouterr()
    assert "metrics_per_worker" in logged.out + logged.err
    assert MULTIPROC_DIR_ENV in logged.out + logged.err


def _ended_pid() -> int:
    """The pid of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


_WRITES_A_COUNTER = """
import time
from prometheus_client import Counter
Counter("virtualq_test", "x").inc()
print("ready", flush=True)
time.sleep(60)
"""


def _writing_process(directory: Path) -> subprocess.Popen[str]:
    """A live process writing a counter in multi-process mode into `directory` (its file mapped)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITES_A_COUNTER], env=env, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def test_metrics_files_and_directories_of_ended_runs_are_removed_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that was killed leaves its run directory, and an operator's own directory keeps the files
    of every earlier run: at start, what no live process uses goes; what one uses, and what
    prometheus_client did not name, stays."""
    from virtualq.cli import METRICS_DIR_PREFIX, MULTIPROC_DIR_ENV, shared_metrics

    dead, own = _ended_pid(), os.getpid()
    children: list[subprocess.Popen[str]] = []
    try:
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        children.append(sleeper)
        operators = tmp_path / "operators"
        operators.mkdir()
        # Earlier processes' files: ended, this process's pid (a restarted server often has the same one),
        # and a pid a live process has now that does not use the file (a reused pid).
        earlier = [
            f"counter_{dead}.db",
            f"histogram_{dead}.db",
            f"gauge_livesum_{dead}.db",
            f"counter_{own}.db",
        ]
        earlier.append(f"counter_{sleeper.pid}.db")
        kept = ["notes.txt", "counter_x.db", "users_2024.db", "x_\u00b2.db", "counter_0.db"]
        kept.append("counter_99999999999999999999.db")
        for name in earlier + kept:
            (operators / name).write_bytes(b"x")
        (operators / f"summary_{dead}.db").mkdir()  # not a file: left alone
        monkeypatch.setenv(MULTIPROC_DIR_ENV, str(operators))
        with shared_metrics(1):  # one worker in the operator's directory: multi-process mode all the same
            assert {path.name for path in operators.iterdir()} == {*kept, f"summary_{dead}.db"}
        assert "metrics_files_of_ended_processes_removed" in capsys.readouterr().out

        # Another server uses the directory (a live process has its file mapped): the files of its ended
        # workers are in its sums, so nothing is removed.
        writer = _writing_process(operators)
        children.append(writer)
        (operators / f"counter_{dead}.db").write_bytes(b"x")
        with shared_metrics(2):
            assert (operators / f"counter_{dead}.db").exists()
            assert (operators / f"counter_{writer.pid}.db").exists()
        shared = [line for line in capsys.readouterr().out.splitlines() if "metrics_directory_shared" in line]
        assert len(shared) == 1, shared
        assert "[warning" in shared[0], shared  # a misconfiguration: the two servers' figures are summed

        monkeypatch.delenv(MULTIPROC_DIR_ENV)
        monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
        killed = tmp_path / f"{METRICS_DIR_PREFIX}{dead}-k1ll3d"
        restarted = tmp_path / f"{METRICS_DIR_PREFIX}{own}-earl1er"  # an earlier server with this pid
        starting = tmp_path / f"{METRICS_DIR_PREFIX}{sleeper.pid}-start1ng"  # a live server, no worker yet
        orphaned = tmp_path / f"{METRICS_DIR_PREFIX}{dead}-0rphan"  # its server killed, a worker lives on
        unnamed = tmp_path / f"{METRICS_DIR_PREFIX}12345678"  # named before directories carried a pid
        for directory in (killed, restarted, starting, orphaned, unnamed):
            directory.mkdir()
            (directory / f"counter_{dead}.db").write_bytes(b"x")
        children.append(_writing_process(orphaned))
        linked = tmp_path / f"{METRICS_DIR_PREFIX}{dead}-l1nk"
        linked.symlink_to(operators)
        with shared_metrics(2):
            made = Path(os.environ[MULTIPROC_DIR_ENV])
            assert made.name.startswith(f"{METRICS_DIR_PREFIX}{own}-")
            assert [path.exists() for path in (killed, restarted)] == [False, False]
            assert [path.is_dir() for path in (starting, orphaned, unnamed)] == [True, True, True]
            assert linked.is_symlink()
            assert (operators / "notes.txt").exists()
        assert not made.exists()
        assert str(killed) in capsys.readouterr().out
    finally:
        for child in children:
            child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()


def test_no_usable_temporary_directory_serves_with_metrics_per_worker(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No writable candidate for the temporary directory: `tempfile.gettempdir` itself fails. The server
    starts all the same, each worker answering scrapes for itself, and says how to get one /metrics."""
    from virtualq.cli import MULTIPROC_DIR_ENV, shared_metrics

    def no_directory() -> str:
        raise FileNotFoundError("No usable temporary directory found")

    monkeypatch.delenv(MULTIPROC_DIR_ENV, raising=False)
    monkeypatch.setattr("tempfile.gettempdir", no_directory)
    with shared_metrics(2):
        assert MULTIPROC_DIR_ENV not in os.environ
    assert "metrics_per_worker" in capsys.readouterr().out


_WORKER_WITH_STREAMS = """
import os, signal, sys, time
from prometheus_client import Gauge
Gauge("virtualq_stream_clients", "x", multiprocess_mode="livesum").inc(int(sys.argv[1]))
print("ready", flush=True)
time.sleep(60)
"""


def test_a_killed_workers_stream_clients_leave_the_sum(tmp_path: Path) -> None:
    """Two processes in multi-process mode hold 3 and 2 stream clients; the first is killed (no clean-up of
    its own). The next scrape counts only the live one's."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    from virtualq.kit.metrics import forget_dead_processes

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER_WITH_STREAMS, str(n)], env=env, stdout=subprocess.PIPE
        )
        for n in (3, 2)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == b"ready"

        def streams() -> float:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, str(tmp_path))
            lines = generate_latest(registry).decode().splitlines()
            return sum(
                float(line.split()[-1]) for line in lines if line.startswith("virtualq_stream_clients ")
            )

        forget_dead_processes(str(tmp_path))
        assert streams() == 5.0  # both alive: nothing dropped
        workers[0].kill()
        workers[0].wait(timeout=10)
        assert streams() == 5.0  # the killed one's file is still there...
        forget_dead_processes(str(tmp_path))
        assert streams() == 2.0  # ...until a scrape drops it
        assert len(list(tmp_path.glob("gauge_livesum_*.db"))) == 1
    finally:
        for worker in workers:
            worker.kill()
            worker.wait(timeout=10)
            if worker.stdout is not None:
                worker.stdout.close()


# --- migrate and api-key create --------------------------------------------------------------------------


async def _get_with_key(dsn: str, key: str, path: str) -> httpx.Response:
    app = create_app(make_settings(), dsn=dsn)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http,
    ):
        return await http.get(path, headers={"Authorization": f"Bearer {key}"})


@pytest.mark.slow
def test_migrate_api_key_create_and_downgrade(tmp_path: Path, empty_database: str) -> None:
    env = base_env(tmp_path / "unused", DATABASE_URL=empty_database, LOG_LEVEL="warning")

    migrated = run_cli("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.strip() == f"upgraded from base to {migrate.head_revision()}"
    # Asked for a revision it is already past: it says so (it said "upgraded to 0006" and changed nothing).
    again = run_cli("migrate", "--revision", "0006", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == (
        f"already at {migrate.head_revision()}, nothing to do; asked for 0006 (--downgrade goes back)"
    )
    assert public_tables(empty_database) >= FOUNDATION_TABLES | {"alembic_version"}
    # DATABASE_URL is set, so no embedded server was started.
    assert not (tmp_path / "unused" / "pgdata").exists()

    created = run_cli("api-key", "create", "--scope", "platform", "--role", "admin", env=env)
    assert created.returncode == 0, created.stderr
    key_lines = [line for line in created.stdout.splitlines() if line.startswith("key")]
    assert len(key_lines) == 1, created.stdout
    key = key_lines[0].split()[-1]
    assert key.startswith("vq_")
    assert "scope  platform" in created.stdout
    assert "role   admin" in created.stdout
    assert key not in created.stderr

    rows = asyncio.run(fetch(empty_database, "SELECT key_hash, scope, role FROM api_keys"))
    assert len(rows) == 1
    assert bytes(rows[0]["key_hash"]) == hashlib.sha256(key.encode()).digest()
    assert (rows[0]["scope"], rows[0]["role"]) == ("platform", "admin")

    response = asyncio.run(_get_with_key(empty_database, key, "/v1/accounts"))
    assert response.status_code == 200, response.text

    # Mistakes are one line each, without a traceback or pydantic's links.
    for flag in ("--revision", "--downgrade"):
        unknown = run_cli("migrate", flag, "9999", env=env)
        assert unknown.returncode == 2, unknown.stderr
        assert "Traceback" not in unknown.stderr
        assert unknown.stderr.strip().splitlines()[-1].startswith("cannot migrate: "), unknown.stderr
        assert "9999" in unknown.stderr
    bad_uuid = run_cli("api-key", "create", "--scope", "tenant", "--tenant-id", "nope", env=env)
    assert bad_uuid.returncode == 2
    assert bad_uuid.stderr.strip().splitlines()[-1].endswith("argument --tenant-id: not a UUID: 'nope'")
    empty_name = run_cli("api-key", "create", "--name", "", env=env)
    assert (empty_name.returncode, empty_name.stderr.strip()) == (
        1,
        "error: name: String should have at least 1 character",
    )
    no_tenant = run_cli("api-key", "create", "--scope", "tenant", env=env)
    assert (no_tenant.returncode, no_tenant.stderr.strip()) == (
        1,
        "error: tenant_id is required for a tenant-scoped key",
    )
    assert "(default: platform)" in run_cli("api-key", "create", "--help", env=env).stdout

    downgraded = run_cli("migrate", "--downgrade", "base", env=env)
    assert downgraded.returncode == 0, downgraded.stderr
    assert "downgraded to base" in downgraded.stdout
    assert public_tables(empty_database) - {"alembic_version"} == set()


def test_head_revision_is_alembics() -> None:
    """The server reads the head revision from the migration files without Alembic: the same one."""
    from alembic.script import ScriptDirectory

    assert (
        migrate.head_revision() == ScriptDirectory.from_config(migrate.alembic_config("")).get_current_head()
    )


def test_the_app_imports_neither_alembic_nor_redis() -> None:
    """What a server process holds at start: Alembic, SQLAlchemy and redis-py (~40 MB) only on demand."""
    program = (
        "import sys\n"
        "from virtualq.app import create_app\n"
        "from virtualq.cli import create_app_from_env\n"
        "from virtualq.config import Settings\n"
        "create_app(Settings(), dsn='postgresql://unused')\n"
        "print(sorted(m for m in ('alembic', 'sqlalchemy', 'redis') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], env=base_env(Path("/nonexistent")), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_serve_on_a_database_from_a_newer_build_says_so_in_one_line(
    tmp_path: Path, empty_database: str, database_dsn: str
) -> None:
    """A revision this build does not know (a newer build migrated the database): one line, exit 2, before
    the banner, and the database left as it is. (`database_dsn`: the server has the app role by then.)"""
    asyncio.run(
        execute(
            empty_database,
            "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY); "
            "INSERT INTO alembic_version VALUES ('9999')",
        )
    )
    env = base_env(
        tmp_path / "unused", DATABASE_URL=empty_database, PORT=str(free_port()), LOG_LEVEL="warning"
    )
    result = run_cli("serve", env=env)
    assert result.returncode == 2, result
    assert result.stderr.strip() == (
        f"the database is at revision 9999, which this build does not know (its newest is "
        f"{migrate.head_revision()}): a newer build migrated it; run that build, or restore a backup from "
        "before it"
    )
    assert "VirtualQ http" not in result.stdout
    assert asyncio.run(fetch(empty_database, "SELECT version_num FROM alembic_version")) == [("9999",)]


def test_a_migration_failing_at_start_is_one_line_and_leaves_the_last_revision(
    tmp_path: Path, empty_database: str
) -> None:
    """The upgrade runs in a child process: a migration that fails there is reported in one line with the
    database's reason, serve exits 1 before its banner, and the database stays at the revision before."""
    before = str(int(migrate.head_revision()) - 1).zfill(4)
    env = base_env(tmp_path / "unused", DATABASE_URL=empty_database, LOG_LEVEL="warning")
    assert run_cli("migrate", "--revision", before, env=env).returncode == 0
    # Every write fails from now on, the newest migration's first among them.
    name = urlsplit(empty_database).path.lstrip("/")
    asyncio.run(execute(empty_database, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
    result = run_cli("serve", env={**env, "PORT": str(free_port())})
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("cannot migrate: ReadOnlySQLTransactionError: "), result.stderr
    assert "read-only transaction" in lines[0]
    assert lines[1:] == ["the migrations failed (exit status 1; see above)"]
    assert "VirtualQ http" not in result.stdout
    assert asyncio.run(fetch(empty_database, "SELECT version_num FROM alembic_version")) == [(before,)]
