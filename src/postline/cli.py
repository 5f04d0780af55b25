"""The ``postline`` command: serve, migrate, domains, keys, queue.

Every failure a user can cause ends in one line on stderr and exit code 2
(configuration) or 1 (anything else) — never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import DBAPIError, OperationalError

from postline.config import (
    ConfigError,
    Settings,
    check_installation,
    check_port_free,
    ensure_data_dir,
    load_settings,
    named_in_environment,
    redact_url,
)
from postline.domains import DomainError, create_domain, dns_records
from postline.keys import SCOPES, AmbiguousKey, CreatedKey, create_key, revoke_by_prefix
from postline.secrets import load_box, prepare_secrets
from postline.store import domains as domain_store
from postline.store import emails as email_store
from postline.store import keys as key_store
from postline.store.domains import Domain
from postline.store.keys import ApiKey
from postline.store.types import utcnow

if TYPE_CHECKING:
    from postline.app import Services
    from postline.delivery_process import ChildLink
    from postline.store.db import Database

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Postline: transactional email.")
domains_app = typer.Typer(no_args_is_help=True, help="Sending domains.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys.")
queue_app = typer.Typer(no_args_is_help=True, help="The delivery queue.")
webhooks_app = typer.Typer(no_args_is_help=True, help="Webhook tools.")
app.add_typer(domains_app, name="domains")
app.add_typer(keys_app, name="keys")
app.add_typer(queue_app, name="queue")
app.add_typer(webhooks_app, name="webhooks")

out = Console()
T = TypeVar("T")


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"postline: {message}", err=True)
    raise typer.Exit(code)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO: a webhook attempt would be two lines, one
    # of them without the delivery's id (events.dispatcher logs each attempt itself).
    # Alembic, imported only when migrating, names each of its plugins at INFO.
    noisy_loggers = ("aiosqlite", "asyncio", "mail.log", "uvicorn.error", "httpx", "httpcore")
    for noisy in (*noisy_loggers, "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@dataclass(frozen=True)
class GlobalOptions:
    """What ``postline [OPTIONS] COMMAND`` says before the command."""

    data_dir: Path | None = None


def print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"postline {package_version('postline')}")
        raise typer.Exit()


@app.callback()
def global_options(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="The data directory (POSTLINE_DATA_DIR); default ./postline-data, "
            "used only where it already holds a database except by serve, api, worker "
            "and migrate.",
            show_default=False,
        ),
    ] = None,
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    ctx.obj = GlobalOptions(data_dir=data_dir)


def settings_or_exit(ctx: typer.Context, *, may_create: bool = False, **overrides: Any) -> Settings:
    """The settings, with the data dir from --data-dir; unless ``may_create``, only for
    an installation that exists or that the operator named (config.check_installation)."""
    options = ctx.find_object(GlobalOptions)
    if options is not None and options.data_dir is not None:
        overrides["data_dir"] = options.data_dir
    data_dir_named = "data_dir" in overrides or named_in_environment("POSTLINE_DATA_DIR")
    try:
        settings = load_settings(**overrides)
        if not may_create:
            check_installation(
                settings,
                data_dir_named=data_dir_named,
                database_named=named_in_environment("POSTLINE_DATABASE_URL"),
            )
        if may_create or data_dir_named or settings.data_dir.exists():
            # A named database and key need nothing from an unnamed, absent data dir.
            ensure_data_dir(settings)
    except ConfigError as exc:
        fail(str(exc), 2)
        raise  # unreachable: fail() raises
    return settings


def migrate_or_exit(settings: Settings) -> None:
    try:
        from postline.store.migrate import upgrade  # Alembic: only when migrating

        upgrade(settings.database_url)
    except (OperationalError, DBAPIError, OSError) as exc:
        reason = str(getattr(exc, "orig", exc)).splitlines()[0][:200]
        fail(f"cannot migrate the database: {reason}", 2)


def event_loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop unless ``POSTLINE_EVENT_LOOP=asyncio``.

    The process is one event loop carrying the API, the delivery engine and the webhook
    dispatcher; uvloop's transports and scheduling cost less CPU per socket operation
    (docs/PERFORMANCE.md: about 14% of ``serve``'s CPU per email).
    """
    if settings.event_loop == "asyncio":
        return None
    import uvloop  # a dependency, through uvicorn[standard]

    return uvloop.new_event_loop


def run_with_services(settings: Settings, work: Callable[[Services], Awaitable[T]]) -> T:
    # Imported here, not at the top: the application pulls in the API, the engine and
    # every driver, which ``postline --version`` and ``--help`` should not wait for.
    from postline.app import Services

    async def main() -> T:
        services = Services.build(settings)
        try:
            await prepare_secrets(services.db)
            return await work(services)
        finally:
            await services.close()

    return run_main(settings, main)


def run_with_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """For the commands that only read and write rows (keys, domains): the database
    alone, without the API, the engine and the drivers of ``Services``, whose imports
    are about a second of each such command."""
    from postline.store.db import Database

    async def main() -> T:
        db = Database(settings.database_url, load_box(settings))
        try:
            await prepare_secrets(db)
            return await work(db)
        finally:
            await db.close()

    return run_main(settings, main)


def run_main(settings: Settings, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a command's ``main`` on Postline's event loop; a one-line message for the
    failures an operator can fix (the secret key, the database, the queue)."""
    try:
        with asyncio.Runner(loop_factory=event_loop_factory(settings)) as runner:
            return runner.run(main())
    except ConfigError as exc:  # the secret key, the queue, or the port taken after the check
        fail(str(exc), 2)
        raise
    except (OperationalError, DBAPIError) as exc:
        reason = str(getattr(exc, "orig", exc)).splitlines()[0][:200]
        fail(f"database error: {reason}")
        raise
    except OSError as exc:
        # asyncpg raises the socket error itself (refused, unknown host, timeout).
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        fail(f"cannot reach the database: {reason}", 2)
        raise


@app.command()
def migrate(ctx: typer.Context) -> None:
    """Create or upgrade the database schema."""
    settings = settings_or_exit(ctx, may_create=True)
    migrate_or_exit(settings)

    async def nothing(_db: Database) -> None:
        """Opening the database checks the secret key and seals plaintext secrets."""

    run_with_database(settings, nothing)
    typer.echo("database is up to date")


@app.command()
def serve(
    ctx: typer.Context,
    sandbox: Annotated[
        bool | None, typer.Option("--sandbox/--no-sandbox", help="Run the simulator MX.")
    ] = None,
) -> None:
    """Run everything in one process: API, delivery engine and (optionally) the sandbox."""
    overrides = {"sandbox": sandbox} if sandbox is not None else {}
    run_parts(settings_or_exit(ctx, may_create=True, **overrides), api=True, engine=True)


@app.command()
def api(ctx: typer.Context) -> None:
    """Run only the HTTP API: accept and read mail; workers deliver it.

    Start as many as you like, on any host, sharing one database, queue and spool.
    """
    run_parts(settings_or_exit(ctx, may_create=True, sandbox=False), api=True, engine=False)


@app.command()
def worker(
    ctx: typer.Context,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="Deliveries in flight at once (POSTLINE_CONCURRENCY)."),
    ] = None,
) -> None:
    """Run only delivery, webhook dispatch and housekeeping: no HTTP port.

    Start as many as you like, on any host, sharing one database, queue and spool.
    """
    overrides: dict[str, Any] = {"sandbox": False}
    if concurrency is not None:
        overrides["concurrency"] = concurrency
    run_parts(settings_or_exit(ctx, may_create=True, **overrides), api=False, engine=True)


def child_command(*, engine: bool) -> Callable[..., None]:
    """The hidden command of one of ``postline serve``'s children (postline.delivery_process):
    the engine and housekeeping (``engine``) or the webhook dispatcher. Started by
    ``serve``, not by hand."""

    def command(
        ctx: typer.Context,
        wake_fd: Annotated[int, typer.Option()],
        events_fd: Annotated[int, typer.Option()],
        parent_pid: Annotated[int, typer.Option()],
        route: Annotated[list[str] | None, typer.Option()] = None,
    ) -> None:
        from postline.delivery_process import ChildLink, parse_route

        routes = dict(parse_route(text) for text in route or [])
        link = ChildLink(wake_fd, events_fd, parent_pid, routes)
        link.die_with_parent()
        settings = settings_or_exit(ctx)
        run_parts(settings, api=False, engine=engine, webhooks=not engine, child=link)

    return command


_CHILD_HELP = "`postline serve`'s child for {}. Started by `serve`, not by hand."
app.command("delivery-process", hidden=True, help=_CHILD_HELP.format("delivery"))(
    child_command(engine=True)
)
app.command("webhook-process", hidden=True, help=_CHILD_HELP.format("webhooks"))(
    child_command(engine=False)
)


def run_parts(
    settings: Settings,
    *,
    api: bool,
    engine: bool,
    webhooks: bool | None = None,
    child: ChildLink | None = None,
) -> None:
    """Start the chosen parts under the supervisor, after one-line checks of everything.

    ``webhooks``: run the webhook dispatcher (None: where the engine runs). ``serve``
    (``api`` and ``engine``) delivers and sends webhooks in child processes unless
    POSTLINE_DELIVERY_PROCESS is off; ``child``: this is one of them.
    """
    split = api and engine and settings.delivery_process
    if split:
        from postline.delivery_process import share_metrics

        share_metrics(settings)  # before prometheus_client is imported
    from postline.app import check_reachable, start_warnings
    from postline.supervisor import serve as supervise

    setup_logging(settings.log_level)
    if api:
        try:
            check_port_free(settings.http_addr, "POSTLINE_HTTP_ADDR")
            check_port_free(settings.inbound_addr, "POSTLINE_INBOUND_ADDR")
            check_port_free(settings.smtp_addr, "POSTLINE_SMTP_ADDR")
            if settings.submission_tls_addr:
                check_port_free(settings.submission_tls_addr, "POSTLINE_SUBMISSION_TLS_ADDR")
        except ConfigError as exc:
            fail(str(exc), 2)
    if child is None:
        migrate_or_exit(settings)  # the parent of a child has migrated

    async def main(services: Services) -> None:
        await check_reachable(services)
        stop = asyncio.Event()
        if child is not None:
            services.router.static.update(child.routes)
            child.listen(services.engine.wake if engine else services.dispatcher.wake, stop.set)
            if engine:
                services.wakeups.on_events(child.events_written)
        else:
            for line in start_warnings(settings):
                logging.getLogger("postline").warning(line)
        ready = asyncio.Event()
        told = None if child is None else asyncio.create_task(child.tell_ready(ready))
        announcer = None
        if child is None:
            announcer = asyncio.create_task(announce(services, ready, api=api, engine=engine))
        await supervise(
            services,
            api=api,
            engine=engine,
            sandbox=settings.sandbox,
            ready=ready,
            stop=stop,
            delivery_process=split,
            webhooks=engine if webhooks is None else webhooks,
        )
        for task in (announcer, told):
            if task is not None:
                task.cancel()

    run_with_services(settings, main)


async def announce(services: Services, ready: asyncio.Event, *, api: bool, engine: bool) -> None:
    """Say what runs where, once it does; show the first admin key once."""
    from postline.app import ensure_admin_key

    settings = services.settings
    await ready.wait()
    first = await ensure_admin_key(services) if api else None
    # Plain echo, not rich: a key wrapped at the terminal width cannot be copied.
    if api:
        host, port = settings.http_host_port
        # GET /v1 answers an index (api.index) and /docs the API reference, offline.
        base = f"http://{host}:{port}"
        typer.echo(f"Postline is running. API: {base}/v1  Docs: {base}/docs")
        for line in submission_lines(settings):
            typer.echo(line)
    if engine and not api:
        typer.echo(
            f"Postline worker is running: concurrency {settings.concurrency}, "
            f"queue {redact_url(settings.queue_url)}"
        )
    if settings.sandbox:
        typer.echo(
            "Sandbox on: send from anything@sandbox.postline.test to delivered@, "
            "bounced@, deferred@, blocked@ or complained@simulator.postline.test"
        )
    if settings.webhook_allow_private and engine:
        typer.echo(
            "Webhook URLs on loopback and private addresses are allowed "
            "(POSTLINE_WEBHOOK_ALLOW_PRIVATE=true): for labs, not for production"
        )
    if settings.delivery_allow_private and engine:
        typer.echo(
            "Delivery to MX hosts on loopback and private addresses is allowed "
            "(POSTLINE_DELIVERY_ALLOW_PRIVATE=true): for labs, not for production"
        )
    if first is not None and first.key is not None:
        typer.echo(f"Admin API key (shown once; saved to {first.path}, mode 0600):")
        typer.echo(first.key)
    elif first is not None:
        typer.echo(f"Admin API key: written on first run to {first.path}")
    sys.stdout.flush()


def submission_lines(settings: Settings) -> list[str]:
    """Where the SMTP submission port listens, and which certificate it presents."""
    implicit = (
        f", implicit TLS on {settings.submission_tls_addr}" if settings.submission_tls_addr else ""
    )
    lines = [
        f"SMTP submission: {settings.smtp_addr} (STARTTLS){implicit}; "
        "AUTH PLAIN or LOGIN, any user name, an API key as the password"
    ]
    if not settings.submission_tls_cert:
        from postline.submission.tls import SELF_SIGNED_FILE

        pem = settings.data_dir / SELF_SIGNED_FILE
        lines.append(
            f"SMTP TLS certificate: self-signed, generated in {pem}"
            "; set POSTLINE_SUBMISSION_TLS_CERT and POSTLINE_SUBMISSION_TLS_KEY for a real one"
        )
    return lines


@domains_app.command("add")
def domains_add(ctx: typer.Context, name: str) -> None:
    """Add a sending domain (generates its DKIM key) and print the DNS records to publish."""
    settings = settings_or_exit(ctx)
    migrate_or_exit(settings)

    async def work(db: Database) -> Domain:
        return await create_domain(db, name)

    try:
        row = run_with_database(settings, work)
    except DomainError as exc:
        fail(str(exc))
        return
    typer.echo(f"added {row.name} (id {row.id}); publish these DNS records:")
    # Plain lines, not a table: a DKIM key cut or wrapped at the terminal width cannot be copied.
    for record in dns_records(row, settings.hostname):
        typer.echo(f"\n{record.type} {record.name} ({record.purpose})\n    {record.value}")


@domains_app.command("list")
def domains_list(ctx: typer.Context) -> None:
    """List sending domains."""
    settings = settings_or_exit(ctx)
    migrate_or_exit(settings)

    async def work(db: Database) -> list[Domain]:
        async with db.read() as conn:
            return await domain_store.list_domains(conn)

    table = Table("id", "name", "verified")
    for row in run_with_database(settings, work):
        table.add_row(row.id, row.name, "yes" if row.verified else "no")
    out.print(table)


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="A label for the key.")],
    domain: Annotated[str | None, typer.Option(help="Scope the key to one domain.")] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            help=f"What the key may do, repeatable: {', '.join(SCOPES)}. Default: all of it."
        ),
    ] = None,
    expires_in_days: Annotated[
        int | None, typer.Option(min=1, help="Refuse the key this many days from now.")
    ] = None,
) -> None:
    """Create an API key and print it (the only time it is shown)."""
    settings = settings_or_exit(ctx)
    migrate_or_exit(settings)
    expires_at = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None

    async def work(db: Database) -> CreatedKey:
        return await create_key(db, name, domain, scopes=scope, expires_at=expires_at)

    try:
        created = run_with_database(settings, work)
    except (DomainError, ValueError) as exc:
        fail(str(exc))
        return
    where = f"scoped to {created.domain}" if created.domain else "admin (all domains)"
    scopes = ", ".join(created.scopes)
    until = f", expires {created.expires_at:%Y-%m-%d %H:%M} UTC" if created.expires_at else ""
    typer.echo(
        f"created key {created.id} ({where}; may: {scopes}{until});"
        " store it now, it is not shown again:"
    )
    typer.echo(created.key)


@keys_app.command("list")
def keys_list(ctx: typer.Context) -> None:
    """List active API keys (without secrets)."""
    settings = settings_or_exit(ctx)
    migrate_or_exit(settings)

    async def work(db: Database) -> list[ApiKey]:
        async with db.read() as conn:
            return await key_store.list_keys(conn)

    rows = run_with_database(settings, work)
    if not rows:
        typer.echo("no active keys")
        return
    # Plain aligned lines, not a table: a table fits the terminal by cutting or wrapping
    # cells, and the id is what `keys revoke` takes. A long line wraps as a whole.
    lines = [("id", "prefix", "domain", "name")] + [
        (row.id, row.prefix + "…", row.domain_name or "(all)", row.name) for row in rows
    ]
    widths = [max(len(line[column]) for line in lines) for column in range(3)]
    for line in lines:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        typer.echo("  ".join([*cells, line[3]]))


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key's id, or enough of its start.")],
) -> None:
    """Revoke an API key at once: give its id, or the start of it that only it has."""
    settings = settings_or_exit(ctx)
    migrate_or_exit(settings)

    async def work(db: Database) -> str | None:
        return await revoke_by_prefix(db, key_id)

    try:
        revoked = run_with_database(settings, work)
    except AmbiguousKey as exc:
        fail(str(exc))
        return
    if revoked is None:
        fail(f"no active key {key_id!r}")
    typer.echo(f"revoked {revoked}")


@webhooks_app.command("listen")
def webhooks_listen(
    port: Annotated[int, typer.Option(help="Port to listen on (127.0.0.1).")] = 9000,
    secret: Annotated[
        str | None, typer.Option(help="The endpoint's whsec_ secret: verify each delivery.")
    ] = None,
) -> None:
    """A local webhook receiver for labs: prints each event, verifying its signature."""
    from postline.events.listener import listen

    try:
        listen(port, secret)
    except OSError as exc:
        fail(f"cannot listen on 127.0.0.1:{port} ({exc.strerror})", 2)


@queue_app.command("status")
def queue_status(ctx: typer.Context) -> None:
    """Jobs per destination domain, in flight, deferred recipients and breaker state.

    The breakers are rebuilt from the last hour of recorded attempts, the way
    a worker warms them on start, so this works from any host.
    """
    settings = settings_or_exit(ctx)
    migrate_or_exit(settings)

    async def work(services: Services) -> list[tuple[str, ...]]:
        depth, in_flight = await services.queue.depth(), await services.queue.in_flight()
        async with services.db.read() as conn:
            deferred = await email_store.deferred_by_destination(conn)
        await services.engine.warm_up()
        breakers = services.engine.breakers
        names = set(depth) | set(deferred) | {v.domain for v in breakers.views()}
        rows: list[tuple[str, ...]] = []
        for name in sorted(names):
            view = breakers.view(name)
            until = f" until {view.until:%Y-%m-%d %H:%M:%S}Z" if view.until else ""
            rows.append(
                (
                    name,
                    str(depth.get(name, 0)),
                    str(in_flight.get(name, 0)),
                    str(deferred.get(name, 0)),
                    f"{view.state}{until}",
                )
            )
        return rows

    rows = run_with_services(settings, work)
    if not rows:
        typer.echo("the queue is empty")
        return
    table = Table("destination", "jobs", "in flight", "deferred", "breaker")
    for row in rows:
        table.add_row(*row)
    out.print(table)


def main() -> None:
    app()
