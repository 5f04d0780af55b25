"""The engine: a bounded window of leased jobs, each delivered and recorded.

Like Postfix's qmgr it keeps at most ``concurrency`` deliveries in flight and
takes more only as slots free up. While a job runs its lease is extended, so
no other worker takes it; on shutdown unfinished jobs are released, not lost.
The engine beats its heartbeat while it runs (``postline.heartbeat``), so that
if it is killed the others take its jobs over in seconds; a delivery whose
lease went to another worker stops before the final dot and records nothing
(``delivery.lease``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy.ext.asyncio import AsyncConnection

from postline.backoff import Backoff
from postline.config import Settings
from postline.delivery.breaker import Breakers, BreakerState, Verdict, attempt_verdict
from postline.delivery.lease import LeaseGuard, LeaseLost
from postline.delivery.policies import TlsPolicies
from postline.delivery.record import RecipientResult, Recorder, Wait
from postline.delivery.replies import Reply, classify
from postline.delivery.routing import RouteError, Router
from postline.delivery.shaping import Limits, Shaper, parse_limits
from postline.delivery.smtp import SmtpDelivery, TransactionResult
from postline.delivery.tls import PolicyError, TlsInfo
from postline.delivery.tlsrpt import TlsCounts
from postline.heartbeat import Heartbeat
from postline.ids import new_id
from postline.metrics import Metrics
from postline.model import PENDING_STATUSES, AttemptScope, BounceType, RecipientStatus
from postline.outcomes import Outcome, activate_scheduled
from postline.queue import Job, Queue
from postline.spool import Spool, SpoolMissing
from postline.spool.base import copy_ref
from postline.store import breakers as breaker_store
from postline.store import emails as email_store
from postline.store.attempts import recent_attempts
from postline.store.batching import Batcher
from postline.store.db import Database
from postline.store.emails import Email, Recipient
from postline.store.gathering import GroupRead
from postline.store.types import utcnow

log = logging.getLogger("postline.engine")

#: How often a worker looks for breakers opened or closed by hand elsewhere (a read):
#: `serve`'s delivery process learns of an operator's command this way, so it must
#: come before the mail the operator sends next (2 s let such mail through).
COMMAND_SYNC_SECONDS = 0.25
#: How often a worker writes its counts of TLS outcomes.
TLS_FLUSH_SECONDS = 2.0

#: After a delivery failed in an unexpected way, when its job is first tried again;
#: each further failure doubles the wait (see :func:`unexpected_retry_delay`).
UNEXPECTED_RETRY_SECONDS = 10.0
#: The longest wait between two tries of a job that keeps failing unexpectedly.
UNEXPECTED_RETRY_CAP_SECONDS = 1800.0
#: The reason an email.failed event gives when a job kept raising until max_age.
INTERNAL_ERROR = "internal_error"

#: Deliveries whose reads share one statement at most, and addresses per suppression
#: lookup: under every driver's limit of bound parameters, whatever the recipients.
_READ_BATCH = 200
_SUPPRESSION_CHUNK = 1000

_SUPPRESSED = Outcome(status=RecipientStatus.SUPPRESSED, reason="on the suppression list")


def retry_delay(delays: list[float], attempt: int) -> float:
    """Backoff for the given attempt (0-based), with +-10% jitter to spread retries."""
    base = delays[min(attempt, len(delays) - 1)]
    return base * random.uniform(0.9, 1.1)


def unexpected_retry_delay(delays: list[float], attempt: int) -> float:
    """Backoff after the ``attempt``-th (0-based) unexpected failure of a job, with jitter.

    10 s, 20 s, 40 s ... up to a cap: a storage hiccup clears within seconds,
    while a bug that raises every time costs a few tries an hour, not one
    every 10 s for ever. Never slower than the configured retry schedule
    (``delays``), whose first and last steps bound the first wait and the cap.
    """
    first = min(UNEXPECTED_RETRY_SECONDS, delays[0])
    cap = max(first, min(UNEXPECTED_RETRY_CAP_SECONDS, delays[-1]))
    base = min(first * 2.0 ** min(attempt, 64), cap)
    return base * random.uniform(0.9, 1.1)


def _pending(recipients: list[Recipient], job: Job) -> list[Recipient]:
    """The job's recipients still waiting: a job leased again skips those already final."""
    wanted = set(job.recipient_ids)
    return [r for r in recipients if r.id in wanted and r.status in PENDING_STATUSES]


def outcome_for(reply: Reply) -> Outcome:
    """A reply's meaning for one recipient: 2xx delivered, 5xx bounced, else deferred."""
    if reply.is_success:
        status = RecipientStatus.DELIVERED
    elif reply.is_permanent:
        status = RecipientStatus.BOUNCED
    else:
        status = RecipientStatus.DEFERRED
    verdict = classify(reply)
    return Outcome(
        status=status,
        smtp_code=reply.code,
        enhanced_code=reply.enhanced_code,
        response=reply.line,
        bounce_type=verdict.bounce_type if verdict else None,
        bounce_rule=verdict.rule if verdict else None,
        domain_level=verdict.domain_level if verdict else False,
    )


class _JobView(NamedTuple):
    """A job's email (None: deleted), its pending recipients and those suppressed."""

    email: Email | None
    pending: list[Recipient]
    suppressed: set[str]


@dataclass
class _AttemptOutcome:
    results: list[RecipientResult]
    mx_host: str | None = None
    duration_ms: int = 0
    retry_at: datetime | None = None  # sooner or later than the backoff
    wait: Wait | None = None  # nothing was tried: the destination's breaker parks the job
    tls: TlsInfo | None = None  # for the timeline: the TLS used, or the policy that deferred


class Engine:
    def __init__(
        self,
        *,
        db: Database,
        queue: Queue,
        spool: Spool,
        router: Router,
        delivery: SmtpDelivery,
        recorder: Recorder,
        metrics: Metrics,
        settings: Settings,
        breakers: Breakers | None = None,
        tls_policies: TlsPolicies | None = None,
        tls_counts: TlsCounts | None = None,
    ) -> None:
        """``breakers``: the circuit breakers to start from (their policy and clock are
        kept when warm-up rebuilds them from the database); default ones if None.
        ``tls_policies``: who decides each MX's TLS demand; None: the operator's
        settings only (no MTA-STS or DANE). ``tls_counts``: where sessions under a
        policy are counted for TLS reports; None: a counter of the engine's own."""
        self.db = db
        self.queue = queue
        self.spool = spool
        self.router = router
        self.delivery = delivery
        self.recorder = recorder
        self.metrics = metrics
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{new_id()}"
        self.heartbeat = Heartbeat(
            queue, self.owner, settings.heartbeat_seconds, settings.heartbeat_timeout
        )
        self.shaper = Shaper(
            Limits(settings.destination_connections, settings.destination_per_minute),
            parse_limits(settings.destination_limits),
        )
        self.breakers = breakers if breakers is not None else Breakers()
        self.tls_policies = tls_policies or TlsPolicies(
            router, default=settings.tls_default, configured=settings.tls_policies
        )
        self.tls_counts = tls_counts or TlsCounts(db, metrics)
        self.running = False
        self._command_cursor = 0
        self._wake = asyncio.Event()
        self._active: dict[asyncio.Task[None], Job] = {}
        #: Set when the loop ends: no more jobs are taken, with the outcomes or alone.
        self._stopping = False
        #: Jobs leased with outcomes as the engine stopped, being given back.
        self._releasing: set[asyncio.Future[int]] = set()
        #: Scheduled recipients whose delivery starts: (email id, recipient ids), activated
        #: before sending, with those of every other delivery starting at the same time.
        self._activator: Batcher[tuple[str, list[str]]] = Batcher(self._activate, name="activator")
        #: Each delivery's look at the store before sending, shared by those starting together.
        self._reads: GroupRead[Job, _JobView] = GroupRead(
            self._read_jobs, name="delivery reads", max_batch=_READ_BATCH
        )

    async def _activate(self, batch: list[tuple[str, list[str]]]) -> None:
        due: dict[str, list[str]] = defaultdict(list)
        for email_id, recipient_ids in batch:
            due[email_id] += recipient_ids
        async with self.db.write() as conn:
            await activate_scheduled(conn, due, utcnow())

    def wake(self) -> None:
        """New work was queued here: look now instead of at the next poll."""
        self._wake.set()

    async def load_breakers(self) -> tuple[Breakers, int]:
        """Breakers as the database tells them: the last hour of attempts, then manual commands.

        Returns them with the id of the newest command applied, from which
        :meth:`sync_commands` goes on.
        """
        since = utcnow() - timedelta(hours=1)
        async with self.db.read() as conn:
            rows = await recent_attempts(conn, since)
            commands = await breaker_store.latest_commands(conn)
        closed_at = {c.domain: c.created_at for c in commands if c.action == "close"}
        # An operator's close vouches for the destination: failures before it do not count.
        rows = [r for r in rows if r.created_at > closed_at.get(r.destination, since)]
        breakers = Breakers(self.breakers.policy, self.breakers.clock)
        breakers.warm_up(rows)
        for command in commands:
            if command.action == "open":
                breakers.force_open(command.domain)
        return breakers, max((c.id for c in commands), default=0)

    async def warm_up(self) -> None:
        """Breakers start from the database, so a restart does not hammer a dead MX."""
        self.breakers, self._command_cursor = await self.load_breakers()
        for view in self.breakers.views():
            if view.state is not BreakerState.CLOSED:
                log.warning(
                    "breaker for %s starts %s until %s", view.domain, view.state, view.until
                )

    async def sync_commands(self) -> None:
        """Apply breakers opened or closed by hand on any API process since the last look."""
        async with self.db.read() as conn:
            commands = await breaker_store.commands_after(conn, self._command_cursor)
        for command in commands:
            if command.action == "open":
                self.breakers.force_open(command.domain)
            else:
                self.breakers.force_close(command.domain)
                await self._release_parked(command.domain)
            self._command_cursor = command.id

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.warm_up()
        except Exception:
            log.exception("breaker warm-up failed; starting with every breaker closed")
        log.info("engine started owner=%s concurrency=%d", self.owner, self.settings.concurrency)
        self.running = True
        self._stopping = False
        if self.queue.shares_store:
            self.recorder.refill = self
        try:
            await self.heartbeat.beat()  # before the first lease; the loop keeps trying
        except Exception as exc:
            log.warning("first heartbeat failed: %s", exc)
        # The heartbeat stops after the drain: released jobs first, then the goodbye.
        beating = asyncio.Event()
        heartbeat = asyncio.create_task(self.heartbeat.run(beating), name="heartbeat")
        try:
            await self._loop(stop)
        finally:
            self._stopping = True
            if self.recorder.refill is self:
                self.recorder.refill = None
            self.running = False
            beating.set()
            with contextlib.suppress(Exception):
                await heartbeat
            await self.heartbeat.retire()

    async def _loop(self, stop: asyncio.Event) -> None:
        backoff = Backoff("leasing delivery jobs")
        loop = asyncio.get_running_loop()
        next_sync = loop.time() + COMMAND_SYNC_SECONDS
        next_flush = loop.time() + TLS_FLUSH_SECONDS
        while not stop.is_set():
            if loop.time() >= next_sync:
                next_sync = loop.time() + COMMAND_SYNC_SECONDS
                with contextlib.suppress(Exception):  # storage outages are the lease's to report
                    await self.sync_commands()
            if loop.time() >= next_flush:
                next_flush = loop.time() + TLS_FLUSH_SECONDS
                with contextlib.suppress(Exception):  # kept in memory until the next try
                    await self.tls_counts.flush()
            free = self.settings.concurrency - len(self._active)
            leased: list[Job] = []
            wait = self.settings.poll_interval
            if free > 0 and self.heartbeat.live:
                try:
                    leased = await self.lease(free)
                    backoff.succeeded()
                except Exception as exc:
                    wait = backoff.failed(exc)
            self.start(leased)
            if leased and len(self._active) < self.settings.concurrency:
                continue
            self._wake.clear()
            idle = not self._active
            waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait(waiters, timeout=wait, return_when="FIRST_COMPLETED")
            for waiter in waiters:
                waiter.cancel()
            if idle:
                # An idle engine woken by new mail reads the breaker commands before it
                # leases: a breaker opened by hand a moment before the mail was accepted
                # holds it (the dashboard's "open breaker, then send"), where the
                # COMMAND_SYNC_SECONDS throttle could let it through. A busy engine
                # keeps the throttle.
                next_sync = loop.time()
        self._stopping = True
        await self._drain()
        with contextlib.suppress(Exception):
            await self.tls_counts.flush()

    def start(self, jobs: list[Job]) -> None:
        """Deliver leased jobs, each in a task of its own (the recorder's ``Refill``).

        Jobs the recorder leased for a stopping engine are given back instead: the
        drain has taken its list of deliveries to wait for already.
        """
        if self._stopping:
            releasing = asyncio.ensure_future(self._release_all(jobs))
            self._releasing.add(releasing)
            releasing.add_done_callback(self._releasing.discard)
            return
        for job in jobs:
            task = asyncio.create_task(self._process(job), name=f"deliver:{job.id}")
            self._active[task] = job
            task.add_done_callback(self._done)

    def wanted(self, finishing: int) -> int:
        """The slots ``finishing`` deliveries leave free once recorded, none while
        stopping or while the heartbeat says this worker may be presumed dead."""
        if self._stopping or not self.heartbeat.live:
            return 0
        return max(0, self.settings.concurrency - len(self._active) + finishing)

    async def lease(self, limit: int) -> list[Job]:
        """This worker's next jobs: those of destinations its breakers refuse get
        their turns only (``Queue.lease``), as they are leased only to be parked."""
        held_back = self.breakers.held_back()
        return await self.queue.lease(self.owner, limit, self.settings.lease_seconds, held_back)

    async def lease_in(self, conn: AsyncConnection, limit: int) -> list[Job]:
        held_back = self.breakers.held_back()
        return await self.queue.lease_in(
            conn, self.owner, limit, self.settings.lease_seconds, held_back
        )

    async def _release_all(self, jobs: list[Job]) -> int:
        released = 0
        for job in jobs:
            with contextlib.suppress(Exception):
                released += await self.queue.release(job)
        return released

    def _done(self, task: asyncio.Task[None]) -> None:
        self._active.pop(task, None)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())

    async def _drain(self) -> None:
        """Let in-flight deliveries finish up to the timeout; release the rest."""
        if self._active:
            await self._drain_active()
        # Jobs leased with the outcomes of the last deliveries, given back (``start``).
        await asyncio.gather(*self._releasing, return_exceptions=True)

    async def _drain_active(self) -> None:
        log.info("draining %d in-flight deliveries", len(self._active))
        _, pending = await asyncio.wait(list(self._active), timeout=self.settings.shutdown_timeout)
        jobs = [self._active[task] for task in pending if task in self._active]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        released = await self._release_all(jobs)
        log.info("drained; released %d unfinished jobs", released)
        if released < len(jobs):
            log.info(
                "%d unfinished jobs were another worker's or could not be released",
                len(jobs) - released,
            )

    async def _process(self, job: Job) -> None:
        started = time.monotonic()
        guard = LeaseGuard(self.queue, job, self.settings.lease_seconds)
        keeper = asyncio.create_task(guard.keep())
        try:
            await self._deliver(job, guard)
        except LeaseLost:
            # Another worker owns the job now: it delivers and records; this one
            # sent no final dot. Give the job back in case the lease was only in
            # doubt (the queue did not answer); a lost one is not touched.
            log.warning("lease lost job_id=%s: stopped before the end of DATA", job.id)
            with contextlib.suppress(Exception):
                if not await self.queue.release(job):
                    log.info("job_id=%s is another worker's: left as it is", job.id)
        except Exception:
            await self._failed_unexpectedly(job)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            self.metrics.delivery_seconds.observe(time.monotonic() - started)

    async def _failed_unexpectedly(self, job: Job) -> None:
        """A delivery raised (a storage hiccup such as a failover, or a bug).

        The job is tried again with a growing backoff (:func:`unexpected_retry_delay`)
        rather than at lease expiry, and is held to ``max_age`` like a deferral:
        once its email has waited that long since it became due, its pending
        recipients become ``failed`` (reason ``internal_error``) with their
        ``email.failed`` events, recorded as any outcome is. Called while the
        exception is being handled, so the log carries its traceback. If even
        this fails, the lease expiry tries the job again.
        """
        log.exception("delivery of job_id=%s failed unexpectedly", job.id)
        try:
            if await self._give_up_if_expired(job):
                return
        except Exception as exc:
            log.warning("cannot judge the expiry of job_id=%s: %s", job.id, type(exc).__name__)
        delay = unexpected_retry_delay(self.settings.retry_delays, job.attempt)
        with contextlib.suppress(Exception):
            if not await self.queue.retry(
                job, utcnow() + timedelta(seconds=delay), job.recipient_ids
            ):
                log.warning("job_id=%s went to another worker before its retry", job.id)

    async def _give_up_if_expired(self, job: Job) -> bool:
        """Fail the job's pending recipients if its email is past ``max_age``; whether it was."""
        async with self.db.read() as conn:
            email = await email_store.get_email(conn, job.email_id)
            recipients = await email_store.get_recipients(conn, job.email_id)
        if email is None or not self.recorder.expired(email):
            return False
        pending = _pending(recipients, job)
        scheduled = [r.id for r in pending if r.status == RecipientStatus.SCHEDULED]
        if scheduled:  # due, since the job was leased: only a queued recipient may fail
            await self._activator.submit((email.id, scheduled))
        failed = Outcome(
            status=RecipientStatus.FAILED,
            response="delivery kept failing with an internal error until max_age",
            reason=INTERNAL_ERROR,
        )
        await self.recorder.record(
            job,
            [RecipientResult(r.id, failed, AttemptScope.LOCAL) for r in pending],
            mx_host=None,
            duration_ms=0,
            retry_at=utcnow(),
        )
        return True

    async def _read_jobs(self, jobs: list[Job]) -> list[_JobView]:
        """What deliveries starting together need from the store, in one read.

        Their emails, their pending recipients and which of those are suppressed,
        in three statements (plus one per sending domain) for all of them rather
        than three each: a delivery costs what its share of the reads does.
        """
        now = utcnow()
        email_ids = sorted({job.email_id for job in jobs})
        recipients: defaultdict[str, list[Recipient]] = defaultdict(list)
        async with self.db.read() as conn:
            emails = {email.id: email for email in await email_store.get_emails(conn, email_ids)}
            for recipient in await email_store.recipients_of(conn, email_ids):
                recipients[recipient.email_id].append(recipient)
            pendings = [_pending(recipients[job.email_id], job) for job in jobs]
            # Checked again here: an address suppressed while the job waited is not sent to.
            addresses: defaultdict[str, set[str]] = defaultdict(set)
            for job, pending in zip(jobs, pendings, strict=True):
                email = emails.get(job.email_id)
                if email is not None:
                    addresses[email.domain_id].update(r.address for r in pending)
            suppressed: dict[str, set[str]] = {}
            for domain_id, wanted in addresses.items():
                ordered = sorted(wanted)
                found: set[str] = set()
                for start in range(0, len(ordered), _SUPPRESSION_CHUNK):
                    chunk = ordered[start : start + _SUPPRESSION_CHUNK]
                    found |= await email_store.suppressed_addresses(conn, domain_id, chunk, now)
                suppressed[domain_id] = found
        views = []
        for job, pending in zip(jobs, pendings, strict=True):
            email = emails.get(job.email_id)
            barred = suppressed.get(email.domain_id, set()) if email is not None else set()
            views.append(_JobView(email, pending, barred))
        return views

    async def _deliver(self, job: Job, guard: LeaseGuard) -> None:
        now = utcnow()
        email, pending, suppressed = await self._reads.get(job)
        retry_at = now + timedelta(seconds=retry_delay(self.settings.retry_delays, job.attempt))
        if email is None or not pending:
            await self.recorder.record(job, [], mx_host=None, duration_ms=0, retry_at=retry_at)
            return
        scheduled = [r.id for r in pending if r.status == RecipientStatus.SCHEDULED]
        if scheduled:
            await self._activator.submit((email.id, scheduled))
        skipped = [
            RecipientResult(r.id, _SUPPRESSED, AttemptScope.RECIPIENT, attempted=False)
            for r in pending
            if r.address in suppressed
        ]
        to_send = [r for r in pending if r.address not in suppressed]
        guard.check()
        attempt = await self._attempt(job, email, to_send, guard)
        if attempt.wait is not None:
            await self.recorder.park(job, [r.id for r in to_send], attempt.wait, skipped)
            return
        await self.recorder.record(
            job,
            skipped + attempt.results,
            mx_host=attempt.mx_host,
            duration_ms=attempt.duration_ms,
            retry_at=attempt.retry_at or retry_at,
            tls=attempt.tls,
        )

    async def _bodies(
        self, job: Job, email: Email, recipients: list[Recipient]
    ) -> tuple[list[tuple[bytes, list[Recipient]]], list[Recipient]]:
        """What to send, as (body, its recipients) transactions, and whose body is lost.

        One transaction with every recipient, as nearly every email is; a tracked
        email with several recipients (``email.bodies`` > 1) has a body for each,
        whose tokens name that recipient only, so one transaction each.
        """
        if email.bodies <= 1:
            try:
                return [(await self.spool.get(job.body_ref), recipients)], []
            except SpoolMissing:
                return [], recipients
        parcels: list[tuple[bytes, list[Recipient]]] = []
        lost: list[Recipient] = []
        for recipient in recipients:
            try:
                body = await self.spool.get(copy_ref(job.body_ref, recipient.position))
            except SpoolMissing:
                lost.append(recipient)
                continue
            parcels.append((body, [recipient]))
        return parcels, lost

    async def _attempt(
        self, job: Job, email: Email, recipients: list[Recipient], guard: LeaseGuard
    ) -> _AttemptOutcome:
        """One delivery attempt for these recipients."""
        if not recipients:
            return _AttemptOutcome([])
        parcels, lost = await self._bodies(job, email, recipients)
        gone = Outcome(status=RecipientStatus.FAILED, reason="the message body was lost")
        failed = [RecipientResult(r.id, gone, AttemptScope.LOCAL) for r in lost]
        if not parcels:
            return _AttemptOutcome(failed)
        to_send = [r for _, group in parcels for r in group]
        try:
            targets = await self.router.route(job.destination)
            targets, plan = await self.tls_policies.plan(job.destination, targets)
        except RouteError as exc:
            outcome = self._route_outcome(exc)
            tls = None
            if isinstance(exc, PolicyError):
                tls = TlsInfo(exc.policy, failure=exc.result_type)
                self.tls_counts.note(job.destination, None, tls)
            return _AttemptOutcome(
                failed + [RecipientResult(r.id, outcome, AttemptScope.LOCAL) for r in to_send],
                tls=tls,
            )
        destination = job.destination
        if not self.breakers.admits(destination):
            return _AttemptOutcome([], wait=self._wait(destination))
        key = self.shaper.key(destination, targets[0].mx if targets else None)
        admitted = False
        try:
            async with self.shaper.slot(key):
                # Asked again with the connection slot held: jobs that queued for it
                # behind the transactions that opened the breaker wait, not connect.
                admitted = self.breakers.allow(destination)
                if not admitted:
                    return _AttemptOutcome([], wait=self._wait(destination))
                results: list[RecipientResult] = []
                duration_ms = 0
                result = TransactionResult()
                for index, (body, group) in enumerate(parcels):
                    if index:  # the slot paid the first message's turn, not the others'
                        await self.shaper.pace(key)
                        guard.check()
                    result = await self.delivery.send(
                        targets,
                        email.envelope_from,
                        [r.address for r in group],
                        body,
                        plan,
                        guard.still_mine,
                    )
                    duration_ms += result.duration_ms
                    for mx_host, tls in result.tls_sessions:
                        self.tls_counts.note(destination, mx_host, tls)
                    own = self._results(group, result)
                    results += own
                    if attempt_verdict((r.scope, r.outcome.status) for r in own) is (
                        Verdict.FAILURE
                    ):
                        # The destination failed a whole transaction (down, TLS, 4xx on
                        # MAIL or DATA): the copies not sent yet share its fate, as they
                        # would have in one transaction, rather than each wait for it.
                        for _, rest in parcels[index + 1 :]:
                            results += self._results(rest, result)
                        break
                # Settled before the slot is given back: the next job in line sees it.
                verdict = attempt_verdict((r.scope, r.outcome.status) for r in results)
                error = result.error.line if result.error is not None else None
                reopened = self.breakers.settle(destination, verdict, error)
        except (asyncio.CancelledError, LeaseLost):
            if admitted:
                self.breakers.release(destination)
            raise
        if reopened:
            await self._release_parked(destination)
        return _AttemptOutcome(failed + results, result.mx_host, duration_ms, tls=result.tls)

    @staticmethod
    def _results(recipients: list[Recipient], result: TransactionResult) -> list[RecipientResult]:
        results = []
        for recipient in recipients:
            reply, scope = result.reply_for(recipient.address)
            if result.refused_locally:
                scope = AttemptScope.LOCAL  # never sent: says nothing of the server's health
            results.append(RecipientResult(recipient.id, outcome_for(reply), scope))
        return results

    def _wait(self, destination: str) -> Wait:
        """The park of a job the destination's breaker refused, on the queue's clock.

        The breaker's instants are moved to the queue's clock by their distance
        from the breaker's "now", so that a test may drive the breaker's clock.
        A breaker held open by an operator without an end is asked again after
        ``open_seconds`` (or sooner, when closed: :meth:`sync_commands`).
        """
        waiting = self.breakers.waiting(destination)
        now, breaker_now = utcnow(), self.breakers.clock()
        if waiting.next_trial is None:
            until = now + timedelta(seconds=self.breakers.policy.open_seconds)
            text = f"waiting: circuit breaker for {destination}, held open by an operator"
        else:
            until = now + (waiting.next_trial - breaker_now)
            text = (
                f"waiting: circuit breaker for {destination}, "
                f"next trial at {until.isoformat(timespec='seconds')}"
            )
        return Wait(since=now + (waiting.opened_at - breaker_now), until=until, response=text)

    async def _release_parked(self, destination: str) -> None:
        """The destination takes jobs again: those parked for it (by any worker) go now.

        If the queue is away, they still go at the time their park gave them.
        """
        try:
            released = await self.queue.release_parked(destination)
        except Exception as exc:
            log.warning("releasing the jobs parked for %s failed: %s", destination, exc)
            return
        if released:
            log.info("breaker for %s admits jobs again: released %d", destination, released)
            self.wake()

    @staticmethod
    def _route_outcome(exc: RouteError) -> Outcome:
        """Our own resolver's verdict: a domain-level bounce (a hard one suppressed for a
        while only; a block, our policy refusing the MX addresses, not at all), or a
        deferral when the resolver cannot be trusted (routing.py)."""
        if exc.permanent:
            return Outcome(
                status=RecipientStatus.BOUNCED,
                smtp_code=None,
                enhanced_code=exc.enhanced_code,
                response=str(exc),
                bounce_type=exc.bounce_type,
                bounce_rule=exc.rule,
                domain_level=True,
            )
        return Outcome(
            status=RecipientStatus.DEFERRED,
            response=str(exc),
            bounce_type=BounceType.SOFT,
            bounce_rule=exc.rule,
        )
