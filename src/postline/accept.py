"""Turn submissions into durable, queued emails.

Order matters and is the whole promise: bodies are fsynced in the spool, then
the email, recipient, event and (embedded) job rows are committed in one
transaction, and only then does the caller answer 2xx. A crash before the
commit leaves at most an unreferenced body, which orphan cleanup removes.

Concurrent calls share that work (group commit): each call validates and
composes on its own, writing its bodies to a file spool chunk by chunk as they
are built (``_build``), then joins the group waiting for the next commit, which
starts as soon as the one before it has finished. The group's bodies are made
durable at once (one syncfs) and its rows go into one transaction, as a batch's
do; each call still hears only its own answer (``_commit``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from postline.compose import Composition, Signer, compose_many
from postline.ids import new_id
from postline.inbound.returnpath import ReturnPaths
from postline.keys import Principal
from postline.message import Content
from postline.metrics import Metrics
from postline.model import EmailSource, EventType, RecipientStatus, derive_email_status
from postline.outcomes import Outcome, event_row, is_customer_mail
from postline.queue import Job, Queue
from postline.spool import Spool
from postline.spool.base import copy_ref, copy_refs, owner_ref
from postline.store import domains as domain_store
from postline.store import emails as email_store
from postline.store.batching import connection_broke
from postline.store.db import Database
from postline.store.domains import Domain
from postline.store.emails import Email
from postline.store.emails import Recipient as EmailRecipient
from postline.store.gathering import GroupRead
from postline.store.types import utcnow
from postline.tracking.hosts import TrackingBase
from postline.tracking.rewrite import Linker, Tracking
from postline.tracking.tokens import Tokens
from postline.wakeups import Wakeups

log = logging.getLogger("postline.accept")

MAX_SCHEDULE_AHEAD = timedelta(days=30)
#: Emails of a batch built and signed in one trip to a compose worker.
COMPOSE_CHUNK = 25
#: The most text and HTML (in characters), or received message (in bytes), of an email
#: that is built and signed on the event loop when it comes alone (``_small``).
SMALL_MESSAGE = 16 * 1024
#: Addresses looked up on the suppression list in one query.
SUPPRESSION_CHUNK = 5000
#: A tracked email is built once per recipient: the copies one request asks for may
#: weigh this many times ``POSTLINE_MAX_MESSAGE_BYTES`` together (413 above), so that
#: 1,000 recipients of a large message cannot hold gigabytes of copies in memory.
COPIES_FACTOR = 4
#: Emails whose rows are built between two yields to the event loop: the rows of the
#: largest batch (500 emails, 1,000 recipients and their events) took it 50-100 ms of
#: pure Python in one stretch, during which no other request was answered.
_ROWS_BETWEEN_YIELDS = 50

#: Emails committed together at most by one group commit (a batch counts all its
#: emails; a batch larger than this is a group of its own).
GROUP_EMAILS = 500


class AcceptError(Exception):
    """A submission that cannot be accepted; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Recipient:
    address: str
    kind: str  # "to" | "cc" | "bcc"


@dataclass(frozen=True)
class Submission:
    """One email as the API or the submission port received it, already validated."""

    content: Content
    recipients: list[Recipient]
    source: EmailSource = EmailSource.API
    tags: dict[str, str] = field(default_factory=dict)
    scheduled_at: datetime | None = None
    raw: bytes | None = None  # SMTP submission: the message exactly as received
    envelope_from: str | None = None
    #: Mail Postline writes about another email (a DSN): that email's id.
    original_email_id: str | None = None
    #: SMTP submission: the message's own Message-ID, kept; None: one is added to ``raw``.
    message_id: str | None = None
    #: Open and click tracking asked for by the send; None: the domain's default.
    track_opens: bool | None = None
    track_clicks: bool | None = None
    #: List-Unsubscribe with a one-click endpoint (RFC 8058).
    unsubscribe: bool = False


@dataclass(frozen=True)
class Accepted:
    id: str
    message_id: str
    recipients: list[tuple[str, str]]  # (address, status)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "message_id": self.message_id,
            "recipients": [{"address": a, "status": s} for a, s in self.recipients],
        }


#: Run inside the accepting transaction with its results (the API stores its idempotency key).
#: It may run twice when its group is written again call by call (``Acceptor._commit``):
#: only the run that is committed counts, so it must only write.
OnCommit = Callable[[AsyncConnection, list[Accepted]], Awaitable[None]]


@dataclass
class _Prepared:
    email_id: str
    message_id: str
    domain: Domain
    submission: Submission
    body: bytes
    recipients: list[Recipient]
    #: When it was received: its rows' times, as its message's Date header.
    now: datetime
    #: A tracked email to several recipients: the bodies of recipients 2..n (``body`` is
    #: the first's), each with tokens naming its own; empty for every other email.
    copies: list[bytes] = field(default_factory=list)

    @property
    def bodies(self) -> int:
        return 1 + len(self.copies)

    def spooled(self) -> list[tuple[str, bytes]]:
        """Its bodies as the spool keeps them: the email's ref, then each copy's."""
        if not self.copies:
            return [(self.email_id, self.body)]
        return [
            (copy_ref(self.email_id, position), body)
            for position, body in enumerate([self.body, *self.copies])
        ]


@dataclass(frozen=True)
class _Rows:
    """What accepting some emails writes (``Acceptor._rows``), and what it answers."""

    results: list[Accepted]
    jobs: list[Job]
    emails: list[dict[str, Any]]
    recipients: list[dict[str, Any]]
    events: list[dict[str, Any]]

    @staticmethod
    def joined(parts: list[_Rows]) -> _Rows:
        return _Rows(
            [r for part in parts for r in part.results],
            [j for part in parts for j in part.jobs],
            [e for part in parts for e in part.emails],
            [r for part in parts for r in part.recipients],
            [e for part in parts for e in part.events],
        )


@dataclass(frozen=True)
class _Call:
    """One ``accept`` call's share of a group commit: all or none of it is accepted."""

    prepared: list[_Prepared]
    on_commit: OnCommit | None


def _size_hint(content: Content) -> int:
    """About what one built copy of ``content`` weighs (its parts; attachments in base64),
    known before building it."""
    attachments = sum(len(a.content) for a in content.attachments) * 4 // 3
    return len(content.text or "") + len(content.html or "") + attachments


def _destination(address: str) -> str:
    return address.rpartition("@")[2].lower()


class Acceptor:
    def __init__(
        self,
        db: Database,
        spool: Spool,
        queue: Queue,
        metrics: Metrics,
        *,
        hostname: str,
        max_message_bytes: int,
        wakeups: Wakeups,
        compose_pool: Executor,
        tracking_base: TrackingBase | None = None,
    ) -> None:
        self.db = db
        self.spool = spool
        self.queue = queue
        self.metrics = metrics
        self.hostname = hostname
        self.max_message_bytes = max_message_bytes
        #: Told after each commit, so a local engine looks at once, not at its next poll.
        self.wakeups = wakeups
        #: Where messages are built and signed: never on the event loop (``postline.compose``).
        #: The composition root owns it and shuts it down.
        self.compose_pool = compose_pool
        #: The VERP envelope sender of API mail, with the token the inbound listener checks.
        self.return_paths = ReturnPaths.of(db.secrets)
        #: Signs tracked links; ``tracking_base``: where they point (POSTLINE_TRACKING_URL,
        #: or the sending domain's own tracking host).
        self.tracking_tokens = Tokens.of(db.secrets)
        self.tracking_base = tracking_base or TrackingBase("")
        #: Sending domains asked for while a lookup runs are read together when it
        #: ends (as ``keys.Authenticator`` reads keys).
        self._domains: GroupRead[str, Domain | None] = GroupRead(
            self._look_up_domains, name="sending domain lookups"
        )
        self._group: GroupRead[_Call, list[Accepted]] = GroupRead(
            self._commit_group,
            name="accept group commit",
            max_batch=GROUP_EMAILS,
            size=lambda call: len(call.prepared),
        )

    @property
    def waiting_to_commit(self) -> int:
        """Accept calls waiting for the next group commit (the one running not counted)."""
        return self._group.waiting

    async def _build(
        self, compositions: list[Composition], refs: list[str], owners: list[str]
    ) -> list[bytes]:
        """Build and sign in the pool, in chunks (``COMPOSE_CHUNK``), each one trip to a
        worker rather than a trip per email; the chunks spread over every worker. A
        small email that comes alone (``_small``) is built here, on the loop.

        A file spool takes each chunk's bodies (``refs``) as it comes back, while the
        next chunks are still being built: the group commit then only makes them
        durable. ``owners`` names each composition's field for a 413. On any error the
        bodies written are removed again (orphan cleanup removes those a crash leaves).
        """
        loop = asyncio.get_running_loop()
        chunks = [
            range(start, min(start + COMPOSE_CHUNK, len(compositions)))
            for start in range(0, len(compositions), COMPOSE_CHUNK)
        ]
        built: list[asyncio.Future[list[bytes]]]
        if len(compositions) == 1 and _small(compositions[0]):
            here: asyncio.Future[list[bytes]] = loop.create_future()
            here.set_result(compose_many(compositions))
            built = [here]
        else:
            built = [
                loop.run_in_executor(
                    self.compose_pool, compose_many, [compositions[i] for i in chunk]
                )
                for chunk in chunks
            ]
        early = not self.spool.shares_store
        bodies: list[bytes] = []
        written: list[str] = []
        try:
            for chunk, future in zip(chunks, built, strict=True):
                own = await future
                for i, body in zip(chunk, own, strict=True):
                    if len(body) > self.max_message_bytes:
                        raise AcceptError(
                            413,
                            owners[i],
                            f"the message is {len(body)} bytes;"
                            f" the limit is {self.max_message_bytes}",
                        )
                bodies += own
                if early:
                    await self.spool.write_many([(refs[i], own[k]) for k, i in enumerate(chunk)])
                    written += [refs[i] for i in chunk]
        except BaseException:
            for future in built:
                future.cancel()
            await self._discard_refs(written)
            raise
        return bodies

    async def sending_domain(
        self,
        principal: Principal,
        from_address: str,
        field_name: str,
        cache: dict[str, Domain | None],
    ) -> Domain:
        """The sending domain of ``from_address``, if ``principal`` may send from it
        (AcceptError 403 if not, 422 if it is none); ``cache`` keeps what was read."""
        name = _destination(from_address)
        if name not in cache:
            cache[name] = await self.domain_of(from_address)
        row = cache[name]
        if principal.domain_id is not None and (row is None or row.id != principal.domain_id):
            raise AcceptError(
                403, field_name, f"this API key may only send from {principal.domain_name}"
            )
        if row is None:
            raise AcceptError(
                422, field_name, f"{name} is not a sending domain; add it with POST /v1/domains"
            )
        return row

    async def domain_of(self, address: str) -> Domain | None:
        """The sending domain ``address`` is at, if it is one: read with the lookups
        asked for meanwhile, in one statement outside a transaction (``db.lookup``)."""
        return await self._domains.get(_destination(address))

    async def _look_up_domains(self, names: list[str]) -> list[Domain | None]:
        async with self.db.lookup() as conn:
            found = await domain_store.get_domains_by_name(conn, names)
        return [found.get(name) for name in names]

    async def _prepare(
        self,
        submissions: Sequence[Submission],
        principal: Principal,
        now: datetime,
        cache: dict[str, Domain | None],
    ) -> list[_Prepared]:
        prepared: list[_Prepared] = []
        compositions: list[Composition] = []
        #: How many of ``compositions`` each email has: 1, or one per recipient (tracked).
        counts: list[int] = []
        #: Each composition's ref in the spool (``_Prepared.spooled``), and its field.
        refs: list[str] = []
        owners: list[str] = []
        #: About what the copies of this request's tracked emails weigh (``COPIES_FACTOR``).
        copies_bytes = 0
        many = len(submissions) > 1
        for index, submission in enumerate(submissions):
            prefix = f"[{index}]." if many else ""
            domain = await self.sending_domain(
                principal, submission.content.from_address, prefix + "from", cache
            )
            if submission.scheduled_at and submission.scheduled_at > now + MAX_SCHEDULE_AHEAD:
                raise AcceptError(422, prefix + "scheduled_at", "must be at most 30 days ahead")
            seen: set[str] = set()
            recipients = []
            for recipient in submission.recipients:
                if recipient.address not in seen:
                    seen.add(recipient.address)
                    recipients.append(recipient)
            email_id = new_id("em_")
            message_id = submission.message_id or f"<{email_id}@{self.hostname}>"
            raw = submission.raw
            if raw is not None and submission.message_id is None:
                raw = f"Message-ID: {message_id}\r\n".encode() + raw
            signer = None
            if domain.dkim_private_key:
                signer = Signer(domain.name, domain.dkim_selector, domain.dkim_private_key)
            tracking = self._tracking(submission, domain)
            if tracking is not None and len(recipients) > 1:
                copies_bytes += _size_hint(submission.content) * len(recipients)
                if copies_bytes > COPIES_FACTOR * self.max_message_bytes:
                    raise AcceptError(
                        413,
                        prefix + "track",
                        f"a tracked email is built once per recipient, and this request's"
                        f" copies would be about {copies_bytes} bytes; the limit is"
                        f" {COPIES_FACTOR * self.max_message_bytes} ({COPIES_FACTOR} times"
                        " POSTLINE_MAX_MESSAGE_BYTES): send it to fewer recipients at once,"
                        " or untracked",
                    )
            owner = f"[{index}]" if many else "body"
            if tracking is None:
                compositions.append(Composition(submission.content, message_id, now, raw, signer))
                counts.append(1)
                refs.append(email_id)
                owners.append(owner)
            else:
                # One copy per recipient, each with tokens naming its recipient, so that an
                # open, a click or a one-click unsubscribe is that recipient's alone
                # (``_Prepared.copies``); rewritten and built in the pool, off the loop.
                names = [r.address for r in recipients] or [""]
                base = self.tracking_base.of(domain.live_tracking_host)
                compositions.extend(
                    Composition(
                        submission.content,
                        message_id,
                        now,
                        raw,
                        signer,
                        tracking,
                        Linker(self.tracking_tokens, base, email_id, name),
                    )
                    for name in names
                )
                counts.append(len(names))
                refs += copy_refs(email_id, len(names)) if len(names) > 1 else [email_id]
                owners += [owner] * len(names)
            prepared.append(
                _Prepared(email_id, message_id, domain, submission, b"", recipients, now)
            )
        bodies = iter(await self._build(compositions, refs, owners))
        for item, count in zip(prepared, counts, strict=True):
            own = [next(bodies) for _ in range(count)]
            item.body, item.copies = own[0], own[1:]
        return prepared

    def _tracking(self, submission: Submission, domain: Domain) -> Tracking | None:
        """The tracking asked for (by the send, else by its domain); None when the
        content goes out as it is: nothing asked (the common case), raw mail submitted
        over SMTP, or no key to sign tokens with."""
        opens, clicks = submission.track_opens, submission.track_clicks
        tracking = Tracking(
            opens=domain.track_opens if opens is None else opens,
            clicks=domain.track_clicks if clicks is None else clicks,
            unsubscribe=submission.unsubscribe,
        )
        if submission.raw is not None or not tracking.any or not self.tracking_tokens.enabled:
            return None
        return tracking

    async def accept(
        self,
        submissions: Sequence[Submission],
        principal: Principal,
        *,
        on_commit: OnCommit | None = None,
        domains: Mapping[str, Domain] | None = None,
    ) -> list[Accepted]:
        """Accept all submissions or none. ``on_commit(conn, results)`` runs inside the commit.

        ``domains``: sending domains the caller read for these submissions a moment
        ago, by name (the submission port's, at MAIL and DATA); the rest are read here.

        The commit is shared with the calls made meanwhile (``_commit_group``); what
        this returns or raises is this call's own.
        """
        now = utcnow()
        prepared = await self._prepare(submissions, principal, now, dict(domains or {}))
        results = await self._group.get(_Call(prepared, on_commit))
        # Recipients suppressed at accept are final already: an outcome like any other.
        suppressed = sum(
            status == RecipientStatus.SUPPRESSED
            for result in results
            for _, status in result.recipients
        )
        if suppressed:
            self.metrics.recipient_outcomes.labels(status=str(RecipientStatus.SUPPRESSED)).inc(
                suppressed
            )
        for item in prepared:
            self.metrics.emails_accepted.labels(source=item.submission.source).inc()
            log.info(
                "accepted email_id=%s recipients=%d size=%d source=%s",
                item.email_id,
                len(item.recipients),
                len(item.body),
                item.submission.source,
            )
        return results

    async def _commit_group(self, calls: list[_Call]) -> list[list[Accepted] | Exception]:
        """Make a group of calls durable: one spool sync, one transaction, one enqueue.

        Nothing is answered before both the spool and the commit are durable. A
        spool or commit that fails fails every call of the group, and none of
        their bodies is left; a call refused for its own rows (``_commit``) is
        answered its error alone and only its bodies are removed.
        """
        self.metrics.accept_group_calls.observe(len(calls))
        prepared = [item for call in calls for item in call.prepared]
        # Bodies in the store are written by the transaction itself (``_write``) and
        # undone with it; files are fsynced first and removed again when it fails.
        files = not self.spool.shares_store
        try:
            # Files were written as they were built (``_build``); made durable now, while
            # the suppression list is read, and before the commit.
            outcomes, jobs = await self._commit(calls, self.spool.sync if files else None)
        except BaseException:
            if files:
                await self._discard_bodies(prepared)
            raise
        if files:
            await self._discard_bodies(
                [
                    item
                    for call, outcome in zip(calls, outcomes, strict=True)
                    if isinstance(outcome, Exception)
                    for item in call.prepared
                ]
            )
        if not self.queue.shares_store:
            await self.enqueue_after_commit(jobs)
        self.wakeups.work_arrived()
        return outcomes

    async def _discard_bodies(self, prepared: list[_Prepared]) -> None:
        """The rows were not committed (database down or full): remove every body written.

        Each is tried even when one fails, and a failure never hides the commit's
        error, which is what the client must hear. A body that cannot be removed
        now is unreferenced, so orphan cleanup removes it later.
        """
        for item in prepared:
            await self._discard_refs([ref for ref, _ in item.spooled()])

    async def _discard_refs(self, refs: list[str]) -> None:
        """``_discard_bodies`` for bodies by ref: tried, and a failure only logged."""
        if not refs:
            return
        try:
            await self.spool.delete_many(refs)
        except Exception as exc:
            log.warning(
                "cannot remove the body of unaccepted email_id=%s (orphan cleanup will): %s",
                owner_ref(refs[0]),
                type(exc).__name__,
            )

    async def enqueue_after_commit(self, jobs: list[Job]) -> None:
        """The email is durable already (accepted or rescheduled), so a queue outage must not
        turn the answer into an error.

        Housekeeping rebuilds jobs missing from the queue out of the database
        (``recovery.restore_missing_jobs``), so these are delivered once it is back.
        """
        try:
            await self.queue.enqueue(jobs)
        except Exception as exc:
            log.warning(
                "queue unavailable after commit; %d jobs left for housekeeping to restore: %s",
                len(jobs),
                type(exc).__name__,
            )

    async def _commit(
        self, calls: list[_Call], sync: Callable[[], Awaitable[None]] | None = None
    ) -> tuple[list[list[Accepted] | Exception], list[Job]]:
        """Every call's rows in one transaction, as one batch; each call's own answer.

        When a statement fails (a Message-ID already taken, a refusing ``on_commit``),
        the transaction is rolled back and written again with each call in a
        savepoint of its own, so that only the calls whose rows fail are refused.
        A failed commit, or a lost connection, fails them all.

        The suppression list is read and the rows are built before the write begins:
        on SQLite its lock, which the delivery and webhook processes wait for too, is
        then held for the INSERTs alone, sent with the COMMIT in one trip
        (``defer_inserts``). A listing added meanwhile is one added a moment after
        the commit: the engine looks again before it sends.

        ``sync``: makes the bodies durable (the file spool's one ``syncfs``), run
        meanwhile; the write begins once it is done, and its error is the group's.
        """
        prepared = [item for call in calls for item in call.prepared]
        syncing = asyncio.ensure_future(sync()) if sync is not None else None
        try:
            async with self.db.lookup() as conn:
                suppressed = await self._suppressed(conn, prepared)
            built = [await self._rows(call.prepared, suppressed) for call in calls]
        except BaseException:
            if syncing is not None:
                # Its bodies are removed next (``_commit_group``): not while it runs.
                await asyncio.wait([syncing])
                if not syncing.cancelled():
                    syncing.exception()  # retrieved: the lookup's error is the one raised
            raise
        if syncing is not None:
            await syncing
        everything = _Rows.joined(built)
        written = False
        try:
            async with self.db.write(defer_inserts=True, urgent=True) as conn:
                await self._write(conn, prepared, everything)
                for call, rows in zip(calls, built, strict=True):
                    if call.on_commit is not None:
                        await call.on_commit(conn, rows.results)
                written = True
        except Exception as exc:
            if written or len(calls) == 1 or connection_broke(exc):
                raise
            return await self._commit_each(calls, built)
        return [rows.results for rows in built], everything.jobs

    async def _commit_each(
        self, calls: list[_Call], built: list[_Rows]
    ) -> tuple[list[list[Accepted] | Exception], list[Job]]:
        """The group again, each call in a savepoint: a refused call's rows are undone alone."""
        answers: list[list[Accepted] | Exception] = []
        jobs: list[Job] = []
        async with self.db.write(urgent=True) as conn:
            for call, rows in zip(calls, built, strict=True):
                try:
                    async with conn.begin_nested():
                        await self._write(conn, call.prepared, rows)
                        if call.on_commit is not None:
                            await call.on_commit(conn, rows.results)
                except Exception as exc:
                    if connection_broke(exc):
                        raise
                    answers.append(exc)
                    continue
                answers.append(rows.results)
                jobs += rows.jobs
        return answers, jobs

    async def _write(self, conn: AsyncConnection, prepared: list[_Prepared], rows: _Rows) -> None:
        """The rows, and the bodies too when the spool is in the store, in one transaction."""
        if self.spool.shares_store:
            await self.spool.put_many([pair for p in prepared for pair in p.spooled()], conn)
        await self._store(conn, rows)

    async def stage_notification(
        self,
        conn: AsyncConnection,
        *,
        domain: Domain,
        notify_to: str,
        build: Callable[[str], bytes],
        now: datetime,
        original_email_id: str,
    ) -> list[Job]:
        """Queue a message Postline writes itself (a DSN) inside the caller's transaction.

        ``build(message_id)`` returns the message; it runs in the compose pool, so
        it must pickle (a ``functools.partial`` of a module function). It goes out with the null
        sender, so nothing ever bounces back to it. It is linked to the email it
        reports on (``original_email_id``), whose detail shows it, and writes no
        ``email.*`` event: it is not the customer's mail. Returns the jobs a
        queue that does not share the store must enqueue after the commit.
        """
        email_id = new_id("em_")
        message_id = f"<{email_id}@{self.hostname}>"
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(self.compose_pool, build, message_id)
        await self.spool.put(email_id, body)
        sender = f"MAILER-DAEMON@{self.hostname}"
        submission = Submission(
            content=Content(
                from_name="Mail Delivery System",
                from_address=sender,
                to=[notify_to],
                subject="Undelivered Mail Returned to Sender",
            ),
            recipients=[Recipient(notify_to, "to")],
            source=EmailSource.DSN,
            raw=body,
            envelope_from="",
            original_email_id=original_email_id,
        )
        prepared = _Prepared(
            email_id, message_id, domain, submission, body, submission.recipients, now
        )
        suppressed = await self._suppressed(conn, [prepared])
        rows = await self._rows([prepared], suppressed)
        await self._store(conn, rows)
        jobs = rows.jobs
        self.metrics.emails_accepted.labels(source=EmailSource.DSN).inc()
        return jobs

    async def _suppressed(
        self, conn: AsyncConnection, prepared: list[_Prepared]
    ) -> set[tuple[str, str]]:
        """(domain id, address) of every recipient on its domain's suppression list.

        One query per sending domain for the whole batch (in chunks that stay under
        SQLite's limit on bound values), not one per email. A group's emails were
        received moments apart: a listing is judged as of the latest of them.
        """
        if not prepared:
            return set()
        now = max(item.now for item in prepared)
        wanted: dict[str, set[str]] = {}
        for item in prepared:
            wanted.setdefault(item.domain.id, set()).update(r.address for r in item.recipients)
        found: set[tuple[str, str]] = set()
        for domain_id, addresses in wanted.items():
            ordered = sorted(addresses)
            for start in range(0, len(ordered), SUPPRESSION_CHUNK):
                chunk = ordered[start : start + SUPPRESSION_CHUNK]
                listed = await email_store.suppressed_addresses(conn, domain_id, chunk, now)
                found.update((domain_id, address) for address in listed)
        return found

    async def _rows(self, prepared: list[_Prepared], suppressed: set[tuple[str, str]]) -> _Rows:
        """The emails', recipients', events' rows and the jobs, ``suppressed`` being the
        (domain id, address) pairs on a suppression list (``_suppressed``)."""
        results: list[Accepted] = []
        jobs: list[Job] = []
        email_rows: list[dict[str, Any]] = []
        recipient_rows: list[dict[str, Any]] = []
        event_rows: list[dict[str, Any]] = []
        for count, item in enumerate(prepared, 1):
            if count % _ROWS_BETWEEN_YIELDS == 0:
                await asyncio.sleep(0)
            sub = item.submission
            now = item.now
            scheduled = sub.scheduled_at is not None and sub.scheduled_at > now
            pending = RecipientStatus.SCHEDULED if scheduled else RecipientStatus.QUEUED
            statuses = [
                RecipientStatus.SUPPRESSED if (item.domain.id, r.address) in suppressed else pending
                for r in item.recipients
            ]
            email = {
                "id": item.email_id,
                "domain_id": item.domain.id,
                "source": sub.source,
                "message_id": item.message_id,
                "from_header": (
                    f"{sub.content.from_name} <{sub.content.from_address}>"
                    if sub.content.from_name
                    else sub.content.from_address
                ),
                "from_address": sub.content.from_address,
                "envelope_from": sub.envelope_from
                if sub.envelope_from is not None
                else self.return_paths.address(item.email_id, item.domain.name),
                "subject": sub.content.subject[:1000],
                "size": len(item.body),
                "body_ref": item.email_id,
                "tags": sub.tags,
                "status": str(derive_email_status(statuses)),
                "scheduled_at": sub.scheduled_at if scheduled else None,
                "created_at": now,
                "updated_at": now,
                "original_email_id": sub.original_email_id,
                "body_purged_at": None,
                "bodies": item.bodies,
            }
            email_rows.append(email)
            # The records the event rows are made of, as the store would read them back.
            customer_mail = is_customer_mail(sub)
            email_record = Email.from_mapping(email) if customer_mail else None
            by_destination: dict[str, list[str]] = {}
            for position, (recipient, status) in enumerate(
                zip(item.recipients, statuses, strict=True)
            ):
                recipient_id = new_id("rcp_")
                destination = _destination(recipient.address)
                row = {
                    "id": recipient_id,
                    "email_id": item.email_id,
                    "position": position,
                    "address": recipient.address,
                    "destination": destination,
                    "kind": recipient.kind,
                    "status": str(status),
                    "smtp_code": None,
                    "enhanced_code": None,
                    "response": None,
                    "bounce_type": None,
                    "bounce_rule": None,
                    "attempts": 0,
                    "next_attempt_at": None,
                    "created_at": now,
                    "updated_at": now,
                }
                recipient_rows.append(row)
                event_type = (
                    EventType.SUPPRESSED
                    if status is RecipientStatus.SUPPRESSED
                    else EventType.QUEUED
                )
                reason = "on the suppression list" if event_type is EventType.SUPPRESSED else None
                if email_record is not None:
                    event_rows.append(
                        event_row(
                            email=email_record,
                            recipient=EmailRecipient.from_mapping(row),
                            event_type=event_type,
                            outcome=Outcome(status=status, reason=reason),
                            attempt=0,
                            sequence=position + 1,
                            now=now,
                        )
                    )
                if status is not RecipientStatus.SUPPRESSED:
                    by_destination.setdefault(destination, []).append(recipient_id)
            for destination, recipient_ids in by_destination.items():
                jobs.append(
                    Job(
                        id=new_id("job_"),
                        email_id=item.email_id,
                        destination=destination,
                        recipient_ids=recipient_ids,
                        body_ref=item.email_id,
                        due_at=sub.scheduled_at if scheduled and sub.scheduled_at else now,
                    )
                )
            results.append(
                Accepted(
                    id=item.email_id,
                    message_id=item.message_id,
                    recipients=[
                        (r.address, str(s)) for r, s in zip(item.recipients, statuses, strict=True)
                    ],
                )
            )
        return _Rows(results, jobs, email_rows, recipient_rows, event_rows)

    async def _store(self, conn: AsyncConnection, rows: _Rows) -> None:
        """Write emails, recipients, events and (embedded) jobs into the caller's transaction."""
        await email_store.insert_emails(conn, rows.emails)
        await email_store.insert_recipients(conn, rows.recipients)
        await email_store.insert_events(conn, rows.events)
        if self.queue.shares_store:
            await self.queue.enqueue(rows.jobs, conn, fresh=True)


def _small(item: Composition) -> bool:
    """Whether ``item`` is built on the loop rather than sent to a worker.

    Measured in one process: 0.5-0.7 ms for 5-16 KB of text and HTML with its DKIM
    signature, and 2.7 ms with 1,000 addresses and 50 custom headers of 300 characters
    (the most a request may carry). The step of the accept that sent it to the pool
    (the sending domain, the trip, the spool write) took 9 ms at the median and 29 at
    the 99th percentile at 200 single sends a second; built here, the accept answered
    10-15 ms sooner at the median (docs/PERFORMANCE.md, "Stop 39").
    """
    if item.tracking is not None:
        return False  # a copy per recipient, each link rewritten and signed
    if item.raw is not None:
        return len(item.raw) <= SMALL_MESSAGE
    content = item.content
    return (
        not content.attachments
        and len(content.text or "") + len(content.html or "") <= SMALL_MESSAGE
    )
