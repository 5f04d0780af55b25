"""The webhook dispatcher: outbox events -> deliveries -> signed POSTs with retries.

Two steps, both safe with several worker processes at once:

1. fan-out: undispatched events become one ``webhook_deliveries`` row per
   matching enabled endpoint, in the transaction that marks them dispatched;
2. delivery: due rows are claimed with a lease, in batches, and handed to a
   fixed pool of sender tasks (never one task per event); each attempt is
   recorded, then the row is succeeded, rescheduled or failed, many attempts
   to one transaction (group commit).

A sender does not wait for its attempt's record before it sends the next one, and
the dispatcher leases several deliveries per sender ahead (``LEASED_AHEAD``): each
lease and each record is a write transaction that waits its turn behind the
accept path's and the recorder's, and a sender that waited for both sent only a
few dozen POSTs a second. A process that dies between a POST and its record
leaves the delivery leased; the lease lapses and it is sent again, with the same
webhook-id, as after a crash in the middle of a POST.

Per delivery the hot path does no more than it must: one long-lived client over
small connection pools (``events.lanes``), the endpoint's checked address kept
for its DNS TTL (``events.ssrf.Targets``), its secret decoded once
(``events.signing.Signers``).

The webhook-id (and the same svix-id) is the event id, the same on every
retry, so receivers can deduplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import dns.asyncresolver
import httpx
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.backoff import Backoff
from postline.config import Settings
from postline.delivery.replies import sanitize
from postline.events.lanes import LANE, LaneTransport
from postline.events.signing import Signers
from postline.events.ssrf import Targets, UnsafeURL
from postline.ids import new_id
from postline.metrics import Metrics
from postline.model import WebhookDeliveryStatus
from postline.store import webhooks as webhook_store
from postline.store.batching import Batcher
from postline.store.db import Database
from postline.store.types import Clock, utcnow
from postline.store.webhooks import DueDelivery, FinishedAttempt, Webhook

log = logging.getLogger("postline.webhooks")

FAN_OUT_BATCH = 500
MAX_RETRY_AFTER = 24 * 3600.0
#: Every delivery carries ``<prefix>-id``, ``<prefix>-timestamp`` and ``<prefix>-signature``.
SIGNATURE_HEADER_PREFIXES = ("webhook", "svix")
USER_AGENT = "Postline-Webhooks/1"
#: Deliveries leased ahead per sender, and attempts sent but not yet recorded per
#: sender. A lease waited up to 360 ms for SQLite's write lock in an embedded
#: benchmark run (bench/peers.py), so 32 senders that leased 32 at a time and
#: waited for each record sent 190-250 POSTs a second while deliveries were
#: recorded at 400 a second (docs/PERFORMANCE.md, stop 32).
LEASED_AHEAD = 8
#: A leased delivery is sent only while its lease will outlast the POST's timeout by
#: this much; one that waited longer behind a slow endpoint is left to lapse and
#: is leased again, so that no other worker can be sending it at the same time.
LEASE_MARGIN = timedelta(seconds=5)


def matches(webhook: Webhook, event_type: str, domain_id: str | None) -> bool:
    wanted = webhook.events or []
    if "*" not in wanted and event_type not in wanted:
        return False
    return webhook.domain_id is None or webhook.domain_id == domain_id


@dataclass(frozen=True)
class AttemptResult:
    code: int | None
    body: str | None
    error: str | None
    duration_ms: int
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.code is not None and 200 <= self.code < 300


class Dispatcher:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        metrics: Metrics,
        resolver: dns.asyncresolver.Resolver,
        *,
        clock: Clock,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        """``clock`` is "now" for due times, leases and endpoint health (``utcnow``,
        or a test's, to run hours of retries in seconds); ``transport`` carries the
        POSTs (None: httpx's own, over the network)."""
        self.db = db
        self.settings = settings
        self.metrics = metrics
        self.resolver = resolver
        self.clock = clock
        self.transport = transport
        self.targets = Targets(resolver, allow_private=settings.webhook_allow_private)
        self.signers = Signers()
        self._timeout = httpx.Timeout(settings.webhook_timeout).as_dict()
        self._wake = asyncio.Event()
        # Set by wake(): events or deliveries may be waiting (new ones, a replay).
        self._events = asyncio.Event()
        self._more_due = False  # the last lease took all it asked for
        #: The last pass left nothing a pass at once could do (``pass_once``).
        self._took_all = False
        # Long enough for one POST and its recording; short enough that a crashed
        # worker's deliveries are picked up again soon.
        self.lease_time = timedelta(seconds=settings.webhook_timeout * 2 + 10)
        #: Records of attempts made, not yet committed (``_sender``).
        self._recording: set[asyncio.Task[None]] = set()
        self._batcher: Batcher[tuple[DueDelivery, AttemptResult]] = Batcher(
            self._write, name="webhooks"
        )

    def wake(self) -> None:
        self._events.set()
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        size = self.settings.webhook_concurrency
        work: asyncio.Queue[DueDelivery] = asyncio.Queue(maxsize=size * LEASED_AHEAD)
        unrecorded = asyncio.Semaphore(size * LEASED_AHEAD)
        # One transport for the life of the process: keep-alive connections, one TLS
        # context. Requests reach it whole (``attempt``): headers, timeout and lane are theirs.
        async with self.transport or LaneTransport(size) as transport:
            senders = [
                asyncio.create_task(
                    self._sender(transport, work, unrecorded, i), name=f"webhook-sender-{i}"
                )
                for i in range(size)
            ]
            backoff = Backoff("webhook dispatch")
            fan_out = True
            try:
                while not stop.is_set():
                    wait = self.settings.poll_interval
                    if fan_out:
                        self._events.clear()  # what arrives from now on waits for the next pass
                    # Cleared before the pass, not after it: a wake that comes while the pass
                    # runs (events written after its read) ends the wait below at once.
                    self._wake.clear()
                    try:
                        busy = await self.pass_once(work, fan_out=fan_out)
                        backoff.succeeded()
                    except Exception as exc:
                        busy, wait = False, backoff.failed(exc)
                        self._wake.clear()  # a failing store is tried after the backoff
                    fan_out = True
                    if busy and not self._took_all:
                        continue  # more may be waiting; else the wake says (set meanwhile)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(_first(self._wake.wait(), stop.wait()), timeout=wait)
                        # Woken only because senders have room for more: lease, no fan-out.
                        fan_out = self._events.is_set()
                # Let the senders finish what they hold; what is left is released.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(work.join(), timeout=self.settings.shutdown_timeout)
            finally:
                for sender in senders:
                    sender.cancel()
                await asyncio.gather(*senders, return_exceptions=True)
                # Every attempt made is recorded before the process goes.
                await asyncio.gather(*self._recording, return_exceptions=True)
                await self._release(work)

    async def _release(self, work: asyncio.Queue[DueDelivery]) -> None:
        """Give back deliveries leased but not started, so another worker sends them now."""
        left = [work.get_nowait().id for _ in range(work.qsize())]
        if left:
            with contextlib.suppress(Exception):
                async with self.db.write() as conn:
                    await webhook_store.release_deliveries(conn, left)

    async def pass_once(self, work: asyncio.Queue[DueDelivery], *, fan_out: bool = True) -> bool:
        """Fan out new events and feed due deliveries to the senders; True if it found work.

        Both in one transaction: on SQLite every commit is a write lock and an fsync.
        """
        free = work.maxsize - work.qsize()
        if not fan_out and free <= 0:
            return False
        now = self.clock()
        async with self.db.write() as conn:
            fanned = await self._fan_out(conn, now) if fan_out else 0
            leased = await self._lease(conn, now, free) if free > 0 else []
        if free > 0:
            # A full lease: more may be due, so senders with room ask for them at once.
            # (No lease, a full queue: what the last lease said still holds.)
            self._more_due = len(leased) == free
        # Every undispatched event claimed, and every due delivery leased (or none new
        # fanned out while the queue was full): a pass at once would find nothing. That
        # empty pass, a write transaction holding SQLite's one lock, followed every pass
        # when events came a few at a time (single sends, SMTP submission).
        self._took_all = fanned < FAN_OUT_BATCH and (len(leased) < free if free > 0 else not fanned)
        for row in leased:
            await work.put(row)
        return bool(fanned or leased)

    async def _fan_out(self, conn: AsyncConnection, now: datetime) -> int:
        pending = await webhook_store.claim_undispatched(conn, FAN_OUT_BATCH)
        if not pending:
            return 0
        endpoints = await webhook_store.enabled_webhooks(conn)
        rows = [
            webhook_store.new_delivery(
                delivery_id=new_id("whd_"), event_id=event.id, webhook_id=endpoint.id, now=now
            )
            for event in pending
            for endpoint in endpoints
            if matches(endpoint, event.type, event.domain_id)
        ]
        await webhook_store.insert_deliveries(conn, rows)
        await webhook_store.mark_dispatched(conn, [e.id for e in pending], now)
        return len(pending)

    async def _lease(self, conn: AsyncConnection, now: datetime, limit: int) -> list[DueDelivery]:
        return await webhook_store.lease_due_deliveries(conn, now, limit, self.lease_time)

    async def _sender(
        self,
        transport: httpx.AsyncBaseTransport,
        work: asyncio.Queue[DueDelivery],
        unrecorded: asyncio.Semaphore,
        lane: int,
    ) -> None:
        """Send what is leased, one at a time; the records follow in the background
        (at most ``unrecorded``'s count waiting), grouped into transactions."""
        low_water = work.maxsize // 2
        while True:
            row = await work.get()
            try:
                # A disabled endpoint's lease lapses; the row waits until it is enabled again.
                if row.enabled and self._lease_holds(row):
                    result = await self.attempt(transport, row, lane)
                    await unrecorded.acquire()
                    task = asyncio.create_task(self._record_logged(row, result, unrecorded))
                    self._recording.add(task)
                    task.add_done_callback(self._recording.discard)
            except Exception:
                log.exception("webhook delivery %s failed unexpectedly", row.id)
            finally:
                work.task_done()
                # Half the slots free and more due: lease now, not at the next poll, and a
                # batch of them rather than one lease (a write transaction) per delivery.
                if self._more_due and work.qsize() <= low_water:
                    self._wake.set()

    def _lease_holds(self, row: DueDelivery) -> bool:
        """Whether the lease outlasts a POST started now: one that lapsed meanwhile may be
        another worker's already."""
        if row.lease_until is None:
            return True
        left = row.lease_until - self.clock()
        if left >= timedelta(seconds=self.settings.webhook_timeout) + LEASE_MARGIN:
            return True
        log.info("webhook delivery_id=%s waited past its lease; sent once leased again", row.id)
        return False

    async def _record_logged(
        self, row: DueDelivery, result: AttemptResult, unrecorded: asyncio.Semaphore
    ) -> None:
        try:
            await self.record(row, result)
        except Exception:
            log.exception("webhook delivery %s failed unexpectedly", row.id)
        finally:
            unrecorded.release()

    async def attempt(
        self, transport: httpx.AsyncBaseTransport, row: DueDelivery, lane: int | None = None
    ) -> AttemptResult:
        """One POST of ``row``; ``lane``: the sender's own (``events.lanes``), or None for
        a caller that is not one of the senders."""
        started = time.monotonic()
        body = json.dumps(row.payload, separators=(",", ":")).encode()
        now = self.clock()
        try:
            target = await self.targets.get(row.url)
        except UnsafeURL as exc:
            return AttemptResult(None, None, f"refused: {exc}", 0)
        timestamp = str(int(now.timestamp()))
        signature = self.signers.header(
            secret=row.secret,
            previous_secret=row.previous_secret,
            rotated_at=row.secret_rotated_at,
            msg_id=row.event_id,
            timestamp=now,
            body=body,
        )
        # The same signature under both names: Standard Webhooks' webhook-* and the
        # svix-* that receivers written for Resend (the svix library) look for.
        # Host (and TLS SNI) name the endpoint; the URL is its checked address.
        headers = [
            ("host", target.host_header),
            ("user-agent", USER_AGENT),
            ("content-type", "application/json"),
        ]
        for prefix in SIGNATURE_HEADER_PREFIXES:
            headers += [
                (f"{prefix}-id", row.event_id),
                (f"{prefix}-timestamp", timestamp),
                (f"{prefix}-signature", signature),
            ]
        extensions: dict[str, Any] = {"timeout": self._timeout}
        if lane is not None:
            extensions[LANE] = lane
        if target.sni_hostname is not None:
            extensions["sni_hostname"] = target.sni_hostname
        # Built whole and sent straight to the transport: no client between them to merge
        # headers, keep cookies or follow redirects (a 3xx is the endpoint's answer). The
        # client's layers did none of that here but cost CPU on every POST (bench/webhooks.py:
        # about 8% of the dispatcher's CPU per event).
        request = httpx.Request(
            "POST", target.url, content=body, headers=headers, extensions=extensions
        )
        try:
            response = await transport.handle_async_request(request)
            try:
                await response.aread()  # the whole answer, so the connection can be reused
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            return AttemptResult(None, None, sanitize(f"{type(exc).__name__}: {exc}"), _ms(started))
        return AttemptResult(
            response.status_code,
            sanitize(response.text[:2048]),
            None,
            _ms(started),
            _retry_after(response),
        )

    async def record(self, row: DueDelivery, result: AttemptResult) -> None:
        await self._batcher.submit((row, result))

    async def _write(self, batch: list[tuple[DueDelivery, AttemptResult]]) -> None:
        """Record a batch of attempts in one transaction (group commit): one statement for
        the deliveries, one for the attempts, one per endpoint whose health changed."""
        now = self.clock()
        finished = [self._finished(row, result, now) for row, result in batch]
        health: dict[str, dict[str, Any]] = {}
        disabled: dict[str, str] = {}
        for row, result in batch:
            change = self._endpoint_health(row, result, now)
            if change:
                # In batch order, as one statement per attempt would have left it.
                health.setdefault(row.webhook_id, {}).update(change)
                if change.get("enabled") is False:
                    disabled[row.webhook_id] = change["disabled_reason"]
        async with self.db.write() as conn:
            await webhook_store.finish_attempts(conn, finished, now)
            for webhook_id, values in health.items():
                await webhook_store.update_webhook(conn, webhook_id, values)
        for webhook_id, reason in disabled.items():
            log.warning("webhook_id=%s disabled: %s", webhook_id, reason)
        for (row, result), done in zip(batch, finished, strict=True):
            self.metrics.webhook_attempts.labels(outcome="ok" if result.ok else "error").inc()
            log.info(
                "webhook delivery_id=%s event_id=%s attempt=%d code=%s status=%s",
                row.id,
                row.event_id,
                done.attempts,
                result.code,
                done.status,
            )

    def _finished(self, row: DueDelivery, result: AttemptResult, now: datetime) -> FinishedAttempt:
        """The delivery's state after this attempt: succeeded, due again later, or failed."""
        attempts = row.attempts + 1
        delays = self.settings.webhook_retry_delays
        status: WebhookDeliveryStatus
        next_at: datetime | None = None
        if result.ok:
            status = WebhookDeliveryStatus.SUCCEEDED
        elif result.code == 410 or attempts > len(delays):
            status = WebhookDeliveryStatus.FAILED
        else:
            delay = delays[attempts - 1]
            if result.retry_after is not None:
                delay = max(delay, result.retry_after)
            status, next_at = WebhookDeliveryStatus.PENDING, now + timedelta(seconds=delay)
        return FinishedAttempt(
            delivery_id=row.id,
            status=status,
            attempts=attempts,
            next_attempt_at=next_at,
            response_code=result.code,
            response_body=result.body,
            error=result.error,
            duration_ms=result.duration_ms,
        )

    def _endpoint_health(
        self, row: DueDelivery, result: AttemptResult, now: datetime
    ) -> dict[str, Any]:
        """The endpoint's columns to change after this attempt (none: nothing changes).

        Continuous failure is tracked from its first attempt; the endpoint is disabled
        on 410 or once it has failed for the configured period."""
        if result.ok:
            return {"failing_since": None} if row.failing_since is not None else {}
        if result.code == 410:
            reason = "the endpoint answered 410 Gone"
        elif row.failing_since is None:
            return {"failing_since": now}
        elif (now - row.failing_since).total_seconds() >= (
            self.settings.webhook_disable_after_seconds
        ):
            reason = f"failing continuously since {row.failing_since.isoformat()}"
        else:
            return {}
        return {"enabled": False, "disabled_reason": reason, "updated_at": now}


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait from a Retry-After of seconds or an HTTP date (RFC 9110 10.2.3)."""
    if response.status_code not in (429, 503):
        return None
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return min(max((moment - utcnow()).total_seconds(), 0.0), MAX_RETRY_AFTER)


async def _first(*waits: Any) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
