"""The `virtualq` command: serve, migrate, api-key create, openapi."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import math
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from virtualq.config import ConfigError, Settings, load_settings
from virtualq.logging import configure_logging, get_logger

# The DSN the parent process resolved (embedded or DATABASE_URL), handed to server workers.
RESOLVED_DSN_ENV = "VIRTUALQ_RESOLVED_DSN"
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multi-process mode (kit/metrics.py)
METRICS_DIR_PREFIX = "virtualq-metrics-"  # + the pid of the server that made it (shared_metrics)
ADMIN_KEY_FILE = "admin_api_key"
SERVE_LOCK_FILE = "serve.lock"
SUPERVISE_SECONDS = 2.0  # how often `virtualq serve` checks that its embedded PostgreSQL still runs

log = get_logger("virtualq.cli")


@contextmanager
def database(settings: Settings, *, serving: bool = False) -> Iterator[str]:
    """Yield a DSN: DATABASE_URL if set, else the embedded server (stopped afterwards if we started it).

    `serving` (`virtualq serve`): the data dir is this process's alone (a lock, DataDirInUse if another
    server holds it), so an embedded PostgreSQL already running there was left by a server that did not
    stop (killed, crashed): it is taken over, said so, and stopped with this server. Other commands use a
    running one as they find it and leave it running."""
    if settings.database_url:
        yield settings.database_url
        return
    from virtualq.embedded_pg import EmbeddedPostgres

    data_dir = settings.virtualq_data_dir
    with _data_dir_lock(data_dir, serving):
        embedded = EmbeddedPostgres(data_dir)
        left_running = serving and embedded.is_initialised and embedded.is_running()
        dsn = embedded.start()
        if left_running:
            log.warning(
                "embedded_postgres_taken_over",
                data_dir=str(data_dir),
                hint="left running by a server that did not stop; stopped with this one",
            )
        supervisor = _Supervisor(embedded) if serving else None
        try:
            yield dsn
        finally:
            if supervisor is not None:
                supervisor.stop()
            if embedded.started_here or left_running:  # a restart by the supervisor counts as started here
                embedded.stop()
                log.info("embedded PostgreSQL stopped", data_dir=str(data_dir))


class _Supervisor:
    """Starts the embedded PostgreSQL again if its postmaster dies under a running server (the out-of-memory
    killer, a stray `kill -9`). PostgreSQL restarts its own backends after one of them crashes; nothing
    restarted the postmaster itself, and the server answered 503 until someone restarted it. Looks every
    SUPERVISE_SECONDS from a thread of the `virtualq serve` process; the pool and the event hub reconnect by
    themselves once it is back.

    Only a postmaster that died is restarted: it leaves its `postmaster.pid` behind. A PostgreSQL that was
    stopped (a shutdown signal to the whole process group, `pg_ctl stop`) removed that file and stays
    stopped, and a data dir that is gone is not initialised afresh under a running server."""

    def __init__(self, embedded: Any) -> None:
        self.embedded = embedded
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="virtualq-embedded-pg", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=SUPERVISE_SECONDS + 35)  # a start in progress ends within pg_ctl's 30 s

    def _died(self) -> bool:
        return (self.embedded.pgdata / "postmaster.pid").exists() and not self.embedded.is_running()

    def _run(self) -> None:
        down_since: float | None = None
        last_complaint = -math.inf
        while not self._stopping.wait(SUPERVISE_SECONDS):
            try:
                if not self._died():
                    down_since = None
                    continue
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("embedded_postgres_down", data_dir=str(self.embedded.data_dir))
                if self._stopping.is_set():
                    return
                self.embedded.start()  # its old backends may still be exiting: tried again next time
                log.warning(
                    "embedded_postgres_restarted",
                    data_dir=str(self.embedded.data_dir),
                    down_seconds=round(time.monotonic() - down_since, 1),
                )
                down_since = None
            except Exception as exc:  # logged (the first time, then once a minute); the next look tries again
                if time.monotonic() - last_complaint >= 60:
                    last_complaint = time.monotonic()
                    log.warning("embedded_postgres_restart_failed", error=str(exc)[-500:])


class DataDirInUse(Exception):
    pass


@contextmanager
def _data_dir_lock(data_dir: Path, serving: bool) -> Iterator[None]:
    """`<data_dir>/serve.lock`: `virtualq serve` holds it exclusively (with its pid in it) while it serves,
    other commands (demo, migrate, api-key create) shared while they use the embedded PostgreSQL. Two
    servers on one data dir shared its PostgreSQL, and the first to stop stopped it under the other; a
    server started beside a command would take over the PostgreSQL the command was about to stop. A
    command finding a server there goes ahead without the lock (the server's PostgreSQL is left running)."""
    import fcntl

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        handle = (data_dir / SERVE_LOCK_FILE).open("a+")
    except OSError as exc:
        raise DataDirInUse(f"cannot use {data_dir}: {exc.strerror or exc}; set VIRTUALQ_DATA_DIR") from None
    with handle:
        try:
            fcntl.flock(handle, (fcntl.LOCK_EX if serving else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            if not serving:  # a server holds it: use its PostgreSQL as it is
                yield
                return
            handle.seek(0)
            holder = handle.read().strip()  # the last server's pid (a killed one's stays)
            alive = holder.isdigit() and Path(f"/proc/{holder}").exists()
            who = f"virtualq serve (pid {holder})" if alive else "virtualq command (demo, migrate, ...)"
            raise DataDirInUse(
                f"another {who} is using {data_dir}: stop it first, or give this server its own "
                "VIRTUALQ_DATA_DIR (or a DATABASE_URL)"
            ) from None
        if serving:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        try:
            yield
        finally:
            if serving:
                handle.seek(0)
                handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _development_admin_key(settings: Settings) -> tuple[Settings, Path | None]:
    """Outside production, keep a generated admin key in the data dir so a new user can start at once."""
    if settings.admin_api_key is not None or settings.is_production:
        return settings, None
    path = settings.virtualq_data_dir / ADMIN_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("vq_admin_" + secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
    key = path.read_text().strip()
    return settings.model_copy(update={"admin_api_key": SecretStr(key)}), path


def create_app_from_env() -> Any:
    """Factory for server workers: settings from the environment, DSN from the parent process."""
    from virtualq.app import create_app

    settings = load_settings()
    configure_logging(settings.log_level, json=settings.is_production, pid=settings.web_concurrency > 1)
    return create_app(settings, dsn=os.environ.get(RESOLVED_DSN_ENV) or settings.database_url)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from virtualq import migrate
    from virtualq.kit.transport import UVICORN_OPTIONS

    started = time.perf_counter()
    host = args.host or settings.host
    port = args.port or settings.port
    workers = args.workers or settings.web_concurrency
    if (problem := _port_taken(host, port)) is not None:  # before anything is written
        print(problem, file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        dsn = stack.enter_context(database(settings, serving=True))  # DataDirInUse: main() says it
        problem, revision = _check_database(dsn, settings.auto_migrate)
        if problem is not None:
            print(problem, file=sys.stderr)
            return 2
        known, head = migrate.revisions()
        if settings.auto_migrate and revision is not None and revision not in known:
            print(
                f"the database is at revision {revision}, which this build does not know (its newest is "
                f"{head}): a newer build migrated it; run that build, or restore a backup from before it",
                file=sys.stderr,
            )
            return 2
        settings, key_file = _development_admin_key(settings)  # only once the server can start
        # uvicorn stops gracefully on SIGTERM/SIGINT, then re-raises the signal with the handler it found;
        # ours turns that into a normal exit so the embedded database is stopped on the way out (and a
        # migration under way is stopped: upgrade_apart).
        signal.signal(signal.SIGTERM, _exit_normally)
        signal.signal(signal.SIGINT, _exit_normally)
        if settings.auto_migrate and revision != head:
            try:
                migrate.upgrade_apart(dsn)  # the server process never imports Alembic (migrate.py)
            except migrate.MigrationFailed as exc:
                print(exc, file=sys.stderr)
                return 1
        os.environ[RESOLVED_DSN_ENV] = dsn
        if settings.admin_api_key is not None:
            os.environ["ADMIN_API_KEY"] = settings.admin_api_key.get_secret_value()
        base = f"http://{host}:{port}"
        where = (
            "embedded PostgreSQL in " + str(settings.virtualq_data_dir)
            if not settings.database_url
            else "DATABASE_URL"
        )
        key_hint = (
            f"in {key_file}"
            if key_file
            else (
                "from ADMIN_API_KEY"
                if settings.admin_api_key
                else "not set (create one: virtualq api-key create)"
            )
        )
        print(
            f"VirtualQ {base}\n  API       {base}/v1\n  docs      {base}/docs\n"
            f"  database  {where}\n  admin key {key_hint}\n"
            f"  prepared in {time.perf_counter() - started:.2f}s; starting {workers} worker(s)",
            flush=True,
        )
        if (
            workers > 1
            and not settings.redis_url
            and settings.rate_limit_per_minute
            and settings.rate_limit_burst
        ):
            # Each worker would keep its own bucket per key: a key gets `workers` times its limit.
            log.warning(
                "rate_limits_per_worker", workers=workers, hint="set REDIS_URL to share one bucket per key"
            )
        with shared_metrics(workers):
            uvicorn.run(
                "virtualq.cli:create_app_from_env",
                factory=True,
                host=host,
                port=port,
                workers=workers if workers > 1 else None,
                log_config=None,
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=10,
                **UVICORN_OPTIONS,  # a response's head and body in one write, no Server header (transport.py)
            )
    return 0


ROLE_REVISION = "0008"  # the migration that creates the application role every connection takes


def _cannot_start_on(dsn: str, migrating: bool) -> str | None:
    return _check_database(dsn, migrating)[0]


def _check_database(dsn: str, migrating: bool) -> tuple[str | None, str | None]:
    """Why no server can start on this database, or None: it cannot be reached (or DATABASE_URL cannot be
    read); it is from migration 0008 on but lacks the application role that migration made (a dump restored
    on another server); or, when it is not to be migrated at start (AUTO_MIGRATE=false), it is before 0008
    (the application role, row security), with nothing to serve. From 0008 on the server starts, and
    `/readyz` answers 503 until the database is at this build's revision. Second: the database's revision."""
    import asyncpg

    from virtualq import migrate
    from virtualq.db import APP_ROLE

    async def check() -> tuple[str | None, str | None]:
        conn = await asyncpg.connect(dsn)
        try:
            revision = await migrate.current_revision(conn)
            role = await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", APP_ROLE)
        finally:
            await conn.close()
        if revision is None or revision < ROLE_REVISION:
            if migrating:  # the migrations make the role
                return None, revision
            return (
                f"the database is not migrated (at revision {revision or 'none'}; this build needs "
                f"{migrate.head_revision()}): run `virtualq migrate`, or start without AUTO_MIGRATE=false"
            ), revision
        if not role:  # e.g. restored with pg_dump, which does not copy roles, on another server
            return (
                f"the database is at revision {revision}, but the role {APP_ROLE} it needs does not exist on "
                f"this server (roles are not part of a dump): create it (CREATE ROLE {APP_ROLE} NOLOGIN) and "
                "restore again, see docs/operations.md"
            ), revision
        return None, revision

    try:
        return asyncio.run(check())
    except (ValueError, asyncpg.ClientConfigurationError):
        # A URL asyncpg cannot read. Its message quotes the part it choked on, which can be a piece of the
        # password (an unencoded # / ? in it): not repeated here.
        return (
            "DATABASE_URL cannot be read: check its form (postgresql://user:password@host:port/database), "
            "and percent-encode any of : / ? # @ % in the user name or password"
        ), None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"cannot connect to the database: {exc}", None


def _port_taken(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port, or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family):  # SO_REUSEADDR, as uvicorn binds
            return None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).split(" (while attempting", 1)[0]  # create_server's addition
        if exc.errno == errno.EADDRINUSE:
            return f"cannot listen on {host}:{port} ({reason}): another server may be running; set PORT"
        return f"cannot listen on {host}:{port} ({reason}): check HOST"


@contextmanager
def shared_metrics(workers: int) -> Iterator[None]:
    """Several workers on one port: one `/metrics` for all of them (kit/metrics.py). Their values go to a
    directory made for this run and removed after it, unless PROMETHEUS_MULTIPROC_DIR names one already:
    from that one, the files of processes that are gone (an earlier run's) are removed first. Directories
    of earlier runs that were killed before removing theirs are removed too."""
    from virtualq.kit.metrics import remove_abandoned_run_directories, remove_dead_processes_files

    chosen = os.environ.get(MULTIPROC_DIR_ENV)
    if chosen:
        removed = remove_dead_processes_files(chosen)
        if removed is None:
            # Another server's live process uses it: the two servers' figures are summed together.
            log.warning(
                "metrics_directory_shared",
                directory=chosen,
                hint="another server uses this PROMETHEUS_MULTIPROC_DIR: give each server its own",
            )
        elif removed:
            log.info("metrics_files_of_ended_processes_removed", directory=chosen, files=removed)
        yield
        return
    if workers < 2:
        yield
        return
    try:
        parent = tempfile.gettempdir()  # FileNotFoundError when no candidate is writable
        abandoned = remove_abandoned_run_directories(parent, METRICS_DIR_PREFIX)
        directory = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-", dir=parent)
    except OSError as exc:  # e.g. a read-only file system: serve anyway, each worker answering for itself
        log.warning(
            "metrics_per_worker",
            error=str(exc),
            hint=f"set {MULTIPROC_DIR_ENV} to a writable, empty directory for one /metrics for all workers",
        )
        yield
        return
    if abandoned:
        log.info("metrics_directories_of_killed_runs_removed", directories=abandoned)
    os.environ[MULTIPROC_DIR_ENV] = directory  # the workers inherit it and read it when they start
    try:
        yield
    finally:
        del os.environ[MULTIPROC_DIR_ENV]
        shutil.rmtree(directory, ignore_errors=True)


def _exit_normally(signum: int, frame: object) -> None:
    raise SystemExit(0)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from virtualq import migrate

    with database(settings) as dsn:
        if (problem := _cannot_start_on(dsn, migrating=True)) is not None:
            print(problem, file=sys.stderr)
            return 2
        from alembic.util.exc import CommandError

        try:
            if args.downgrade:
                migrate.downgrade(dsn, args.downgrade)
                print(f"downgraded to {args.downgrade}")
            else:
                before = _revision_of(dsn)
                migrate.upgrade(dsn, args.revision)
                after = _revision_of(dsn)
                if after == before:
                    wanted = "" if args.revision == "head" else f"; asked for {args.revision}"
                    print(f"already at {after or 'base'}, nothing to do{wanted} (--downgrade goes back)")
                else:
                    print(f"upgraded from {before or 'base'} to {after}")
        except CommandError as exc:  # an unknown revision, most often: one line, as other refusals
            print(
                f"cannot migrate: {exc} (revisions: base, 0001 to {migrate.head_revision()}, head)",
                file=sys.stderr,
            )
            return 2
    return 0


def _revision_of(dsn: str) -> str | None:
    import asyncpg

    from virtualq import migrate

    async def read() -> str | None:
        conn = await asyncpg.connect(dsn)
        try:
            return await migrate.current_revision(conn)
        finally:
            await conn.close()

    return asyncio.run(read())


def cmd_api_key_create(settings: Settings, args: argparse.Namespace) -> int:
    import asyncpg

    from virtualq.auth import service
    from virtualq.db import _init_connection

    fields = {
        "name": args.name,
        "scope": args.scope,
        "role": args.role,
        "account_id": args.account_id,
        "tenant_id": args.tenant_id,
        "employee_id": args.employee_id,
    }

    async def create(dsn: str) -> tuple[Any, str]:
        conn = await asyncpg.connect(dsn)
        try:
            await _init_connection(conn)
            async with conn.transaction():
                return await service.create_key_from_cli(
                    conn, {k: v for k, v in fields.items() if v is not None}
                )
        finally:
            await conn.close()

    with database(settings) as dsn:
        from virtualq import migrate

        if (problem := _cannot_start_on(dsn, migrating=True)) is not None:
            print(problem, file=sys.stderr)
            return 2
        migrate.upgrade(dsn)
        row, secret = asyncio.run(create(dsn))
    print(f"id     {row['id']}\nscope  {row['scope']}\nrole   {row['role']}\nkey    {secret}")
    print("Store the key now: it is not shown again.", file=sys.stderr)
    return 0


def cmd_openapi(settings: Settings, args: argparse.Namespace) -> int:
    import yaml

    from virtualq.app import create_app

    app = create_app(settings, dsn="postgresql://unused")
    text = yaml.safe_dump(app.openapi(), sort_keys=False, allow_unicode=True)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """Create the demo tenants through the API (in process) and print the pages' URLs."""
    import httpx

    from virtualq import demo, migrate
    from virtualq.app import create_app

    settings, _ = _development_admin_key(settings)
    if settings.admin_api_key is None:
        print("virtualq demo needs ADMIN_API_KEY in production", file=sys.stderr)
        return 2
    admin_key = settings.admin_api_key.get_secret_value()
    quiet = settings.model_copy(update={"sweeper_interval_seconds": 0, "webhook_delivery": False})
    if settings.log_level == "info":  # the in-process requests' access log would bury the URLs below
        configure_logging("warning", json=settings.is_production)
    base = args.base_url or f"http://{settings.host}:{settings.port}"

    async def run(dsn: str) -> list[demo.Place]:
        app = create_app(quiet, dsn=dsn)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://demo") as client,
        ):
            return await demo.build(client, admin_key)

    with database(settings) as dsn:
        migrate.upgrade(dsn)
        places = asyncio.run(run(dsn))
    print(f"Demo data created. Start the server (make run) and open, at {base}:")
    for place in places:
        print(f"\n{place.name}")
        for page, url in demo.urls(base, place).items():
            print(f"  {page:<9}{url}")
        print("  keys     " + "  ".join(f"{role}={key}" for role, key in place.keys.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="virtualq", description="VirtualQ virtual-queue server.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API server (embedded PostgreSQL unless DATABASE_URL)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="server processes (default WEB_CONCURRENCY)")
    serve.set_defaults(handler=cmd_serve)

    migrate = commands.add_parser("migrate", help="apply (or roll back) database migrations")
    migrate.add_argument("--revision", default="head")
    migrate.add_argument("--downgrade", metavar="REVISION", help="roll back to REVISION ('base' for empty)")
    migrate.set_defaults(handler=cmd_migrate)

    api_key = commands.add_parser("api-key", help="manage API keys").add_subparsers(
        dest="action", required=True
    )
    create = api_key.add_parser(
        "create",
        help="create a key and print it once",
        description="Create an API key and print it once. With no options: a platform admin key.",
    )
    create.add_argument("--name", default="cli", help="a label for the key (default: %(default)s)")
    create.add_argument(
        "--scope",
        choices=["platform", "account", "tenant"],
        default="platform",
        help="(default: %(default)s)",
    )
    create.add_argument(
        "--role", choices=["admin", "staff", "display"], default="admin", help="(default: %(default)s)"
    )
    create.add_argument("--account-id", type=_uuid, help="the account of an account-scoped key")
    create.add_argument("--tenant-id", type=_uuid, help="the tenant of a tenant-scoped key")
    create.add_argument("--employee-id", type=_uuid, help="the employee the key acts as (optional)")
    create.set_defaults(handler=cmd_api_key_create)

    demo = commands.add_parser(
        "demo", help="create a coffee chain and a DMV office with keys; print page URLs"
    )
    demo.add_argument("--base-url", help="where the server is reached (default http://HOST:PORT)")
    demo.set_defaults(handler=cmd_demo)

    openapi = commands.add_parser("openapi", help="write the OpenAPI document")
    openapi.add_argument("--output", default="openapi.yaml", help="file path, or - for stdout")
    openapi.set_defaults(handler=cmd_openapi)
    return parser


def _uuid(value: str) -> str:
    """An argparse type: a UUID, or argparse's one-line usage error."""
    import uuid

    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {value!r}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    configure_logging(settings.log_level, json=settings.is_production)
    try:
        code: int = args.handler(settings, args)
    except KeyboardInterrupt:
        return 130
    except DataDirInUse as exc:  # any command on a data dir it cannot use
        print(exc, file=sys.stderr)
        return 2
    except Exception as exc:
        from pydantic import ValidationError

        from virtualq.errors import AppError

        if isinstance(exc, ValidationError):  # one line per problem, without pydantic's links
            for problem in exc.errors(include_url=False):
                where = ".".join(str(part) for part in problem["loc"])
                print(f"error: {where + ': ' if where else ''}{problem['msg']}", file=sys.stderr)
            return 1
        if isinstance(exc, AppError):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise
    return code
