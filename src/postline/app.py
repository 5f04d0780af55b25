"""Composition root: build every part from Settings, run them, stop them.

One supervisor owns the named tasks (API server, engine, housekeeping,
sandbox) and the graceful shutdown, like Postfix's master.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from postline.accept import Acceptor
from postline.backoff import first_line
from postline.compose import RenewingPool, new_pool
from postline.config import ConfigError, Settings
from postline.delivery.bounces import BounceNotifier
from postline.delivery.breaker import Breakers
from postline.delivery.dnssec_validate import Validator, load_anchors
from postline.delivery.engine import Engine
from postline.delivery.pinned_https import PinnedHttps
from postline.delivery.policies import DaneLookup, TlsPolicies
from postline.delivery.pool import SmtpSettings
from postline.delivery.record import Recorder
from postline.delivery.routing import Router
from postline.delivery.smtp import SmtpDelivery
from postline.delivery.sts_cache import MtaSts
from postline.delivery.sts_fetch import MAX_POLICY_BYTES, PolicyFetcher
from postline.delivery.tlsa import TlsaLookup, validating_resolver
from postline.delivery.tlsrpt import TlsCounts
from postline.delivery.tlsrpt_mail import MailedReports
from postline.delivery.tlsrpt_send import TlsReporter
from postline.delivery_process import METRICS_DIR_ENV
from postline.domains import SANDBOX_DOMAIN, SIMULATOR_DOMAIN, ensure_domain
from postline.events.dispatcher import Dispatcher
from postline.inbound.apply import InboundReports
from postline.inbound.listener import InboundHandler, InboundListener
from postline.inbound.routed import RoutedMail
from postline.keys import Authenticator, create_key
from postline.metrics import Metrics
from postline.private_files import permission_warnings
from postline.queue import Queue
from postline.queue.embedded import EmbeddedQueue
from postline.sandbox.simulator import Simulator
from postline.secrets import load_box, shared_database_without_key
from postline.spool import Spool
from postline.spool.database import DatabaseSpool
from postline.spool.files import FileSpool
from postline.store import keys as key_store
from postline.store.db import Database
from postline.store.domains import set_bounce_notifications
from postline.store.types import Clock, utcnow
from postline.templates import Renderer
from postline.tracking.hosts import TrackingBase
from postline.wakeups import Wakeups

log = logging.getLogger("postline")


@dataclass
class Services:
    """Everything a process needs, built once."""

    settings: Settings
    db: Database
    spool: Spool
    queue: Queue
    metrics: Metrics
    router: Router
    acceptor: Acceptor
    #: Turns presented API keys into principals (the API, the dashboard, SMTP AUTH).
    authenticator: Authenticator
    engine: Engine
    dispatcher: Dispatcher
    #: Where messages are built and signed, off the event loop; shut down by :meth:`close`.
    compose_pool: RenewingPool
    #: Applies the late bounces and complaints the inbound listener takes.
    inbound: InboundReports
    #: Renders email templates (a send naming one, and the preview).
    templates: Renderer
    #: Destinations' MTA-STS policies (None: POSTLINE_MTA_STS=false).
    mta_sts: MtaSts | None = None
    #: Sends the daily TLS reports (housekeeping).
    tls_reporter: TlsReporter | None = None
    #: Who is told of committed work: this process's engine and dispatcher, and the
    #: delivery and webhook processes of ``postline serve`` (postline.delivery_process).
    wakeups: Wakeups = field(default_factory=Wakeups)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        clock: Clock = utcnow,
        webhook_transport: httpx.AsyncBaseTransport | None = None,
        breakers: Breakers | None = None,
    ) -> Services:
        """Every part, wired. ``clock``, ``webhook_transport`` and ``breakers`` are for
        tests: a simulated "now" for the webhook dispatcher and the recorder's expiry,
        where the dispatcher's POSTs go, and the engine's circuit breakers."""
        db = Database(settings.database_url, load_box(settings))
        spool = build_spool(settings, db)
        queue = build_queue(settings, db)
        metrics = Metrics(os.environ.get(METRICS_DIR_ENV))
        # The engine and the dispatcher listen here; the acceptor and the recorder
        # tell it when they commit work, without needing either to exist first.
        wakeups = Wakeups()
        compose_pool = new_pool()
        router = Router(
            nameservers=settings.nameservers,
            delivery_port=settings.delivery_port,
            relay=settings.relay,
            canary=settings.dns_canary,
            allow_private=settings.delivery_allow_private,
        )
        acceptor = Acceptor(
            db,
            spool,
            queue,
            metrics,
            hostname=settings.hostname,
            max_message_bytes=settings.max_message_bytes,
            wakeups=wakeups,
            compose_pool=compose_pool,
            tracking_base=TrackingBase(settings.tracking_base, settings.tracking_host_scheme),
        )
        smtp_settings = SmtpSettings(
            helo_name=settings.hostname,
            connect_timeout=settings.smtp_connect_timeout,
            command_timeout=settings.smtp_command_timeout,
            max_messages_per_session=settings.smtp_max_messages_per_session,
            idle_seconds=settings.smtp_idle_seconds,
            ca_file=settings.tls_ca_file or None,
        )
        delivery = SmtpDelivery(router, smtp_settings)
        tls_counts = TlsCounts(db, metrics, clock=clock)
        mta_sts = None
        if settings.mta_sts:
            mta_sts = build_mta_sts(settings, db, router, smtp_settings, tls_counts)
        tls_policies = TlsPolicies(
            router,
            default=settings.tls_default,
            configured=settings.tls_policies,
            mta_sts=mta_sts.policy if mta_sts is not None else None,
            dane=build_dane(settings),
        )
        recorder = Recorder(
            db,
            queue,
            metrics,
            settings.max_age_seconds,
            bounces=BounceNotifier(acceptor, spool, settings.hostname),
            wakeups=wakeups,
            clock=clock,
        )
        engine = Engine(
            db=db,
            queue=queue,
            spool=spool,
            router=router,
            delivery=delivery,
            recorder=recorder,
            metrics=metrics,
            settings=settings,
            breakers=breakers,
            tls_policies=tls_policies,
            tls_counts=tls_counts,
        )
        tls_reporter = build_tls_reporter(settings, db, router, smtp_settings, metrics, acceptor)
        dispatcher = Dispatcher(
            db, settings, metrics, router.resolver, clock=clock, transport=webhook_transport
        )
        inbound = InboundReports(db, metrics, wakeups, acceptor.return_paths, clock=clock)
        wakeups.on_work(engine.wake)
        wakeups.on_events(dispatcher.wake)
        return cls(
            settings,
            db,
            spool,
            queue,
            metrics,
            router,
            acceptor,
            Authenticator(db),
            engine,
            dispatcher,
            compose_pool,
            inbound,
            Renderer(output_limit=settings.max_message_bytes),
            mta_sts,
            tls_reporter,
            wakeups,
        )

    async def close(self) -> None:
        if self.mta_sts is not None:
            await self.mta_sts.close()
        await self.engine.delivery.pool.close()
        await self.queue.close()
        await self.db.close()
        # In a thread: joining the workers must not hold up the loop.
        await asyncio.to_thread(self.compose_pool.shutdown, wait=True, cancel_futures=True)


def build_mta_sts(
    settings: Settings, db: Database, router: Router, smtp: SmtpSettings, counts: TlsCounts
) -> MtaSts:
    """The MTA-STS policy cache, fetching through our resolver with the trust anchors
    the SMTP client verifies MX certificates with."""
    https = PinnedHttps(
        router.addresses,
        smtp.verify_context,
        timeout=settings.mta_sts_fetch_timeout,
        allow_private=settings.delivery_allow_private,
        max_bytes=MAX_POLICY_BYTES,
    )
    fetcher = PolicyFetcher(https, port=settings.mta_sts_port)
    return MtaSts(db, router.resolver, fetcher, on_fetch_failed=counts.note_result)


def build_tls_reporter(
    settings: Settings,
    db: Database,
    router: Router,
    smtp: SmtpSettings,
    metrics: Metrics,
    acceptor: Acceptor,
) -> TlsReporter:
    organization = settings.tlsrpt_organization or settings.hostname
    mail = None
    if settings.tlsrpt_from:
        mail = MailedReports(acceptor, settings.tlsrpt_from, organization).send
    https = PinnedHttps(
        router.addresses,
        smtp.verify_context,
        timeout=settings.mta_sts_fetch_timeout,
        allow_private=settings.delivery_allow_private,
    )
    return TlsReporter(
        db,
        router.resolver,
        https,
        metrics,
        organization=organization,
        contact=settings.tlsrpt_contact or f"postmaster@{settings.hostname}",
        mail=mail,
    )


def build_dane(settings: Settings) -> DaneLookup | None:
    """TLSA lookups for DANE, or None when POSTLINE_DNSSEC=off (no lookup at all)."""
    if settings.dnssec == "off":
        return None
    if settings.dnssec == "validate":
        resolver = validating_resolver(settings.nameservers, check=True)
        anchors = load_anchors(settings.dnssec_trust_anchors)
        return TlsaLookup(resolver, Validator(resolver, anchors)).demands
    return TlsaLookup(validating_resolver(settings.nameservers)).demands


def build_spool(settings: Settings, db: Database) -> Spool:
    if settings.spool_url == "database":
        return DatabaseSpool(db)
    return FileSpool(settings.spool_path)


def build_queue(settings: Settings, db: Database) -> Queue:
    if settings.queue_url == "embedded":
        return EmbeddedQueue(db)
    # Imported here: the Redis client cost every process of an installation without
    # Redis 40-45 ms of CPU at start (``python -X importtime``).
    from postline.queue.redis import RedisQueue

    return RedisQueue(settings.queue_url, prefix=settings.queue_prefix)


def start_warnings(settings: Settings) -> list[str]:
    """What an operator should fix, said once at start: files other users can read,
    and a shared database whose hosts may each have made a key of their own."""
    extra: list[Path] = []
    if settings.sqlite_path is not None:
        db_file = settings.sqlite_path
        extra = [db_file, *(db_file.with_name(db_file.name + s) for s in ("-wal", "-shm"))]
    spool = settings.spool_path if settings.spool_url.startswith("file:") else None
    lines = permission_warnings(settings.data_dir, extra, spool)
    if shared_database_without_key(settings):
        lines.append(
            f"POSTLINE_SECRET_KEY is not set: the secrets in this shared database are sealed "
            f"with {settings.secret_key_file}, which every other host needs too; set "
            "POSTLINE_SECRET_KEY to the same key on each host"
        )
    return lines


async def check_reachable(services: Services, timeout: float = 10.0) -> None:
    """Fail at start when the database or the queue does not answer (ConfigError, one line)."""
    try:
        await asyncio.wait_for(services.db.ping(), timeout)
    except Exception as exc:
        reason = first_line(exc)
        raise ConfigError(f"POSTLINE_DATABASE_URL: cannot reach the database ({reason})") from None
    try:
        await asyncio.wait_for(services.queue.depth(), timeout)
    except Exception as exc:
        reason = first_line(exc)
        raise ConfigError(f"POSTLINE_QUEUE_URL: cannot reach the queue ({reason})") from None


def inbound_listener(services: Services, host: str, port: int) -> InboundListener:
    """The inbound MX (postline.inbound.listener) for these services, not yet started."""
    settings = services.settings
    reports = services.inbound
    routed = RoutedMail(services.db, reports.wakeups, clock=reports.clock)
    handler = InboundHandler(
        reports, services.acceptor.return_paths, settings.fbl_address, services.metrics, routed
    )
    return InboundListener(handler, host, port, settings.hostname)


async def start_sandbox(services: Services, inbound: tuple[str, int] | None = None) -> Simulator:
    """Start the simulator MX and route the simulator domain to it. ``inbound``: the
    inbound listener its complaints go to, as a mailbox provider's feedback loop would
    send them (None: ``complained@`` is only accepted)."""
    simulator = Simulator(inbound=inbound)
    await simulator.start()
    services.router.static[SIMULATOR_DOMAIN] = (simulator.host, simulator.port)
    domain = await ensure_domain(services.db, SANDBOX_DOMAIN)
    if domain.bounce_notifications:
        # Sandbox senders are not mailboxes: a DSN to them could only bounce.
        async with services.db.write() as conn:
            await set_bounce_notifications(conn, domain.id, False)
    return simulator


@dataclass(frozen=True)
class FirstKey:
    key: str | None  # the secret, only on the run that created it
    path: Path


async def ensure_admin_key(services: Services) -> FirstKey | None:
    """Create an admin key on first run, write it to a 0600 file, show it once."""
    path = services.settings.admin_key_file
    async with services.db.read() as conn:
        existing = await key_store.count_keys(conn)
    if existing:
        return FirstKey(None, path) if path.exists() else None
    created = await create_key(services.db, "admin (first run)")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(created.key + "\n")
    return FirstKey(created.key, path)
