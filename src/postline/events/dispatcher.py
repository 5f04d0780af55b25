"""The webhook dispatcher: outbox events -> deliveries -> signed POSTs with retries.

Two steps, both safe with several worker processes at once:

1. fan-out: undispatched events become one ``webhook_deliveries`` row per
   matching enabled endpoint, in the transaction that marks them dispatched;
2. delivery: due rows are claimed with a lease and handed to a fixed pool of
   sender tasks (never one task per event); each attempt is recorded, then
   the row is succeeded, rescheduled or failed.

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
from postline.events.signing import signature_header
from postline.events.ssrf import UnsafeURL, checked_addresses, split_url
from postline.ids import new_id
from postline.metrics import Metrics
from postline.model import WebhookDeliveryStatus
from postline.store import webhooks as webhook_store
from postline.store.batching import Batcher
from postline.store.db import Database
from postline.store.types import Clock, utcnow
from postline.store.webhooks import DueDelivery, Webhook

log = logging.getLogger("postline.webhooks")

FAN_OUT_BATCH = 500
MAX_RETRY_AFTER = 24 * 3600.0
#: Every delivery carries ``<prefix>-id``, ``<prefix>-timestamp`` and ``<prefix>-signature``.
SIGNATURE_HEADER_PREFIXES = ("webhook", "svix")


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
        self._wake = asyncio.Event()
        # Long enough for one POST and its recording; short enough that a crashed
        # worker's deliveries are picked up again soon.
        self.lease_time = timedelta(seconds=settings.webhook_timeout * 2 + 10)
        self._batcher: Batcher[tuple[DueDelivery, AttemptResult]] = Batcher(
            self._write, name="webhooks"
        )

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        size = self.settings.webhook_concurrency
        work: asyncio.Queue[DueDelivery] = asyncio.Queue(maxsize=size)
        async with httpx.AsyncClient(
            transport=self.transport,
            timeout=self.settings.webhook_timeout,
            follow_redirects=False,
            headers={"User-Agent": "Postline-Webhooks/1"},
        ) as client:
            senders = [
                asyncio.create_task(self._sender(client, work), name=f"webhook-sender-{i}")
                for i in range(size)
            ]
            backoff = Backoff("webhook dispatch")
            try:
                while not stop.is_set():
                    wait = self.settings.poll_interval
                    try:
                        busy = await self.pass_once(work)
                        backoff.succeeded()
                    except Exception as exc:
                        busy, wait = False, backoff.failed(exc)
                    if busy:
                        continue
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(_first(self._wake.wait(), stop.wait()), timeout=wait)
                # Let the senders finish what they hold; what is left is released.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(work.join(), timeout=self.settings.shutdown_timeout)
            finally:
                for sender in senders:
                    sender.cancel()
                await asyncio.gather(*senders, return_exceptions=True)
                await self._release(work)

    async def _release(self, work: asyncio.Queue[DueDelivery]) -> None:
        """Give back deliveries leased but not started, so another worker sends them now."""
        left = [work.get_nowait().id for _ in range(work.qsize())]
        if left:
            with contextlib.suppress(Exception):
                async with self.db.write() as conn:
                    await webhook_store.release_deliveries(conn, left)

    async def pass_once(self, work: asyncio.Queue[DueDelivery]) -> bool:
        """Fan out new events and feed due deliveries to the senders; True if it found work."""
        fanned = await self.fan_out()
        free = work.maxsize - work.qsize()
        leased = await self.lease(free) if free > 0 else []
        for row in leased:
            await work.put(row)
        return bool(fanned or leased)

    async def fan_out(self) -> int:
        now = self.clock()
        async with self.db.write() as conn:
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

    async def lease(self, limit: int) -> list[DueDelivery]:
        async with self.db.write() as conn:
            return await webhook_store.lease_due_deliveries(
                conn, self.clock(), limit, self.lease_time
            )

    async def _sender(self, client: httpx.AsyncClient, work: asyncio.Queue[DueDelivery]) -> None:
        while True:
            row = await work.get()
            try:
                await self.deliver(client, row)
            except Exception:
                log.exception("webhook delivery %s failed unexpectedly", row.id)
            finally:
                work.task_done()
                self._wake.set()  # a slot is free: lease more now, not at the next poll

    async def deliver(self, client: httpx.AsyncClient, row: DueDelivery) -> None:
        if not row.enabled:
            return  # the lease lapses; the row waits until the endpoint is enabled again
        result = await self.attempt(client, row)
        await self.record(row, result)

    async def attempt(self, client: httpx.AsyncClient, row: DueDelivery) -> AttemptResult:
        started = time.monotonic()
        body = json.dumps(row.payload, separators=(",", ":"))
        now = self.clock()
        try:
            addresses = await checked_addresses(
                row.url, self.resolver, allow_private=self.settings.webhook_allow_private
            )
        except UnsafeURL as exc:
            return AttemptResult(None, None, f"refused: {exc}", 0)
        scheme, host, port = split_url(row.url)
        signed = {
            "id": row.event_id,
            "timestamp": str(int(now.timestamp())),
            "signature": signature_header(
                secret=row.secret,
                previous_secret=row.previous_secret,
                rotated_at=row.secret_rotated_at,
                msg_id=row.event_id,
                timestamp=now,
                body=body,
            ),
        }
        # The same signature under both names: Standard Webhooks' webhook-* and the
        # svix-* that receivers written for Resend (the svix library) look for.
        headers = {"content-type": "application/json"}
        for prefix in SIGNATURE_HEADER_PREFIXES:
            headers |= {f"{prefix}-{name}": value for name, value in signed.items()}
        # Connect to the address that passed the check (no second look-up to rebind),
        # while Host and TLS SNI still name the endpoint.
        pinned = httpx.URL(row.url).copy_with(host=addresses[0])
        headers["host"] = host if port in (80, 443) else f"{host}:{port}"
        extensions = {"sni_hostname": host} if scheme == "https" else {}
        try:
            response = await client.post(
                pinned, content=body.encode(), headers=headers, extensions=extensions
            )
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
        """Record a batch of attempts in one transaction (group commit)."""
        now = self.clock()
        outcomes = []
        async with self.db.write() as conn:
            for row, result in batch:
                status, attempts = await self._record_one(conn, row, result, now)
                outcomes.append((row, result, status, attempts))
        for row, result, status, attempts in outcomes:
            self.metrics.webhook_attempts.labels(outcome="ok" if result.ok else "error").inc()
            log.info(
                "webhook delivery_id=%s event_id=%s attempt=%d code=%s status=%s",
                row.id,
                row.event_id,
                attempts,
                result.code,
                status,
            )

    async def _record_one(
        self, conn: AsyncConnection, row: DueDelivery, result: AttemptResult, now: datetime
    ) -> tuple[WebhookDeliveryStatus, int]:
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
        await webhook_store.finish_attempt(
            conn,
            delivery_id=row.id,
            status=status,
            attempts=attempts,
            next_attempt_at=next_at,
            response_code=result.code,
            response_body=result.body,
            error=result.error,
            duration_ms=result.duration_ms,
            now=now,
        )
        await self._endpoint_health(conn, row, result, now)
        return status, attempts

    async def _endpoint_health(
        self, conn: AsyncConnection, row: DueDelivery, result: AttemptResult, now: datetime
    ) -> None:
        """Track continuous failure; disable on 410 or after the configured period."""
        if result.ok:
            if row.failing_since is not None:
                await webhook_store.update_webhook(conn, row.webhook_id, {"failing_since": None})
            return
        if result.code == 410:
            reason = "the endpoint answered 410 Gone"
        elif row.failing_since is None:
            await webhook_store.update_webhook(conn, row.webhook_id, {"failing_since": now})
            return
        elif (now - row.failing_since).total_seconds() >= (
            self.settings.webhook_disable_after_seconds
        ):
            reason = f"failing continuously since {row.failing_since.isoformat()}"
        else:
            return
        await webhook_store.update_webhook(
            conn,
            row.webhook_id,
            {"enabled": False, "disabled_reason": reason, "updated_at": now},
        )
        log.warning("webhook_id=%s disabled: %s", row.webhook_id, reason)


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
