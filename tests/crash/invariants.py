"""The promises Postline makes about every email, checked against what really happened.

Reusable by any test that ran Postline, in-process or as a subprocess, on any topology:
it reads the store directly (SQLite or PostgreSQL URL), the spool (a file spool
directory or the ``spool_bodies`` table) and the queue (embedded or Redis), and compares
them with what the test observed from the outside: which emails got a 2xx, what the fake
MX servers received, which event ids the webhook receiver acknowledged.

The invariants (issue 6, "crash suite"):

1. every email that got a 2xx exists and each of its recipients reached a terminal status
   (and the one the test expected, when it said which); no email in the store is stuck;
2. every recipient the store calls delivered was received by its MX at least once;
   copies beyond the first are *duplicates* (delivery is at least once), counted and
   bounded by what was in flight when things broke;
3. nothing was received for a recipient the store says was never delivered (bounced,
   failed, ...), nor for an address no email was sent to;
4. every terminal outcome has exactly one event of its type, and that event id was
   acknowledged by the webhook receiver (more than once is a counted webhook duplicate;
   an id the store never wrote is a violation);
5. after a cleanup pass no spool body is left without a live reference (a queue job or
   an email with a recipient still waiting), no temporary file is left behind, and no
   body a waiting recipient needs is missing. A body gone once every recipient of its
   email is final is expected (housekeeping frees it, store/retention.py); only one
   missing for a recipient still waiting is a loss.

Run it with Postline stopped (or at least idle): the cleanup pass deletes every
unreferenced body regardless of age, which would race an accept in progress.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from postline.config import normalize_database_url
from postline.model import EVENT_FOR_STATUS, FINAL_STATUSES, PENDING_STATUSES, RecipientStatus
from postline.orphans import CleanupReport, clean_orphans
from postline.queue.base import Queue
from postline.queue.embedded import EmbeddedQueue
from postline.queue.redis import RedisQueue
from postline.spool.base import Spool, owner_ref
from postline.spool.database import DatabaseSpool
from postline.spool.files import FileSpool
from postline.spool.spares import SPARE_DIR
from postline.store.db import Database
from postline.store.schema import email_recipients, events, sent_emails, spool_bodies
from postline.store.types import utcnow
from tests.harness.fake_mx import FakeMX
from tests.harness.receiver import WebhookReceiver

__all__ = [
    "DATABASE_SPOOL",
    "Expectation",
    "InvariantReport",
    "acknowledged_ids",
    "assert_each_received",
    "assert_recorded_once",
    "check_invariants",
    "clean_spool",
    "event_ids",
    "received_copies",
    "recipient_events",
    "unsettled",
]

#: Pass as ``spool`` when bodies live in the database (``POSTLINE_SPOOL_URL=database``).
DATABASE_SPOOL = "database"

_FINAL = frozenset(str(s) for s in FINAL_STATUSES)
_PENDING = frozenset(str(s) for s in PENDING_STATUSES)
#: Statuses that mean "an MX accepted it" (complained comes after delivered).
_DELIVERED = frozenset({"delivered", "complained"})
_SHOWN = 10  # offenders listed per violation


@dataclass
class Expectation:
    """What the test sent and what each recipient should end as.

    ``accepted`` holds only emails whose request got a 2xx: a request cut off by a crash
    may or may not have created its email, and either is allowed, so those are left out.
    ``outcome`` may be partial: a recipient it does not name must only end terminal.
    """

    accepted: dict[str, list[str]] = field(default_factory=dict)  # email id -> addresses
    outcome: dict[str, str] = field(default_factory=dict)  # address -> expected final status

    def add(self, email_id: str, addresses: Iterable[str], outcome: str | None = None) -> None:
        listed = list(addresses)
        self.accepted[email_id] = listed
        if outcome is not None:
            for address in listed:
                self.outcome[address.lower()] = outcome


@dataclass
class InvariantReport:
    """What the check counted; ``violations`` is empty when every invariant held."""

    emails: int = 0  # emails in the store (including any whose request got no 2xx)
    accepted: int = 0  # emails whose request got a 2xx
    recipients: int = 0
    delivered: int = 0
    bounced: int = 0
    failed: int = 0
    received: int = 0  # recipient copies the MX servers received, in all
    duplicates: int = 0  # copies beyond the first, for recipients the store calls delivered
    in_flight_bound: int = 0
    lost_emails: int = 0  # accepted, and missing, stuck, or delivered but never received
    lost_events: int = 0  # terminal outcomes without their event, or never acknowledged
    webhook_events: int = 0  # terminal events the receiver acknowledged
    webhook_duplicates: int = 0  # acknowledgements beyond the first, per event id
    spool_cleaned: int = 0  # bodies the cleanup pass deleted
    spool_temp_files: int = 0  # temp files (writes cut short by a crash) before it
    spool_left: int = 0  # spool entries left after it
    orphan_spool_files: int = 0
    violations: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line, for the test report and docs/RELIABILITY.md."""
        return (
            f"emails={self.emails} accepted={self.accepted} recipients={self.recipients} "
            f"delivered={self.delivered} bounced={self.bounced} failed={self.failed} "
            f"received={self.received} duplicates={self.duplicates} "
            f"(bound {self.in_flight_bound}) lost={self.lost_emails} "
            f"lost_events={self.lost_events} webhook_duplicates={self.webhook_duplicates} "
            f"spool_cleaned={self.spool_cleaned} (temp files {self.spool_temp_files}) "
            f"orphans={self.orphan_spool_files}"
        )

    def measures(self) -> dict[str, int]:
        """The counts by name, for ``record_property``."""
        return {
            name: value
            for name, value in vars(self).items()
            if isinstance(value, int) and not isinstance(value, bool)
        }


# ------------------------------------------------------------------------- observations


def received_copies(servers: Iterable[FakeMX]) -> Counter[str]:
    """How many times each recipient address (lower case) was received, over every MX."""
    counts: Counter[str] = Counter()
    for mx in servers:
        for received in mx.received:
            counts.update(address.lower() for address in received.rcpt_tos)
    return counts


def acknowledged_ids(receiver: WebhookReceiver) -> Counter[str]:
    """``webhook-id`` -> how many times the receiver answered it with a 2xx."""
    return Counter(
        hook.headers.get("webhook-id", "") for hook in receiver.received if 200 <= hook.status < 300
    )


# ------------------------------------------------------------------------- store reads


def _database(database_url: str) -> Database:
    return Database(normalize_database_url(database_url))


@dataclass(frozen=True)
class _Recipient:
    id: str
    email_id: str
    address: str
    status: str


@dataclass
class _Store:
    emails: dict[str, tuple[str, str]]  # id -> (status, body_ref)
    recipients: list[_Recipient]
    # (recipient id, event type) -> event ids, for the terminal event types
    events: dict[tuple[str, str], list[str]]
    all_event_ids: set[str]

    def by_email(self) -> dict[str, list[_Recipient]]:
        grouped: dict[str, list[_Recipient]] = defaultdict(list)
        for recipient in self.recipients:
            grouped[recipient.email_id].append(recipient)
        return grouped


_TERMINAL_EVENT_TYPES = sorted(str(EVENT_FOR_STATUS[RecipientStatus(s)]) for s in _FINAL)


async def _read_store(db: Database) -> _Store:
    async with db.read() as conn:
        emails = {
            str(row.id): (str(row.status), str(row.body_ref))
            for row in await conn.execute(
                select(sent_emails.c.id, sent_emails.c.status, sent_emails.c.body_ref)
            )
        }
        recipients = [
            _Recipient(str(row.id), str(row.email_id), str(row.address).lower(), str(row.status))
            for row in await conn.execute(
                select(
                    email_recipients.c.id,
                    email_recipients.c.email_id,
                    email_recipients.c.address,
                    email_recipients.c.status,
                )
            )
        ]
        found: dict[tuple[str, str], list[str]] = defaultdict(list)
        all_ids: set[str] = set()
        for row in await conn.execute(select(events.c.id, events.c.type, events.c.recipient_id)):
            all_ids.add(str(row.id))
            if row.recipient_id is not None and row.type in _TERMINAL_EVENT_TYPES:
                found[(str(row.recipient_id), str(row.type))].append(str(row.id))
    return _Store(emails, recipients, found, all_ids)


async def recipient_events(database_url: str) -> list[tuple[str, str, int]]:
    """Each recipient as (address, status, number of events of that status)."""
    db = _database(database_url)
    try:
        async with db.read() as conn:
            counted = (
                select(func.count())
                .select_from(events)
                .where(
                    events.c.recipient_id == email_recipients.c.id,
                    events.c.type == "email." + email_recipients.c.status,
                )
                .scalar_subquery()
            )
            rows = await conn.execute(
                select(email_recipients.c.address, email_recipients.c.status, counted)
            )
            return [(str(a), str(s), int(n)) for a, s, n in rows]
    finally:
        await db.close()


async def event_ids(database_url: str, event_type: str) -> set[str]:
    """The ids of every event of ``event_type`` (the webhook-ids receivers dedupe on)."""
    db = _database(database_url)
    try:
        async with db.read() as conn:
            rows = await conn.execute(select(events.c.id).where(events.c.type == event_type))
            return {str(row.id) for row in rows}
    finally:
        await db.close()


async def assert_recorded_once(database_url: str, recipients: Iterable[str]) -> None:
    """Every recipient delivered, each with exactly one ``email.delivered`` event: a job
    run twice (after a crash, or rebuilt by housekeeping) must not record twice."""
    rows = await recipient_events(database_url)
    by_address = {address.lower(): (address, status, n) for address, status, n in rows}
    expected = {address.lower() for address in recipients}
    assert set(by_address) == expected, sorted(set(by_address) ^ expected)[:_SHOWN]
    wrong = [row for row in rows if row[1] != "delivered" or row[2] != 1]
    assert wrong == [], f"{len(wrong)} recipients not delivered exactly once: {wrong[:_SHOWN]}"


def assert_each_received(copies: Mapping[str, int], recipients: Iterable[str]) -> Counter[str]:
    """Every recipient reached its MX at least once and nothing else arrived; the counts."""
    counts = Counter({address.lower(): n for address, n in copies.items() if n > 0})
    expected = {address.lower() for address in recipients}
    missing = expected - set(counts)
    assert missing == set(), f"{len(missing)} recipients never received: {sorted(missing)[:10]}"
    unexpected = set(counts) - expected
    assert unexpected == set(), f"received for no email sent: {sorted(unexpected)[:10]}"
    return counts


async def unsettled(
    database_url: str,
    acknowledged: Mapping[str, int] | None,
    webhook_event_types: Collection[str] | None = None,
) -> tuple[int, int]:
    """(recipients not yet terminal, terminal events not yet acknowledged): what a test
    polls, with a deadline, before it stops Postline and checks the invariants."""
    store_db = _database(database_url)
    try:
        store = await _read_store(store_db)
    finally:
        await store_db.close()
    waiting = sum(1 for r in store.recipients if r.status not in _FINAL)
    unacked = 0
    if acknowledged is not None:
        for r in store.recipients:
            if r.status not in _FINAL:
                continue
            kind = str(EVENT_FOR_STATUS[RecipientStatus(r.status)])
            if webhook_event_types is not None and kind not in webhook_event_types:
                continue
            ids = store.events.get((r.id, kind), [])
            if not any(acknowledged.get(i, 0) > 0 for i in ids):
                unacked += 1
    return waiting, unacked


# ------------------------------------------------------------------------- spool


def _build_spool(db: Database, spool: Path | str) -> Spool:
    if spool == DATABASE_SPOOL:
        return DatabaseSpool(db)
    return FileSpool(Path(spool))


def _build_queue(db: Database, queue_url: str, queue_prefix: str) -> Queue:
    if queue_url == "embedded":
        return EmbeddedQueue(db)
    return RedisQueue(queue_url, prefix=queue_prefix)


async def clean_spool(
    *,
    database_url: str,
    spool: Path | str,
    queue_url: str = "embedded",
    queue_prefix: str = "postline",
) -> CleanupReport:
    """One orphan cleanup pass (Postline's own, ``postline.orphans``) with ``max_age`` 0:
    every body nothing references is deleted now. Only with Postline stopped or idle."""
    db = _database(database_url)
    queue = _build_queue(db, queue_url, queue_prefix)
    try:
        return await clean_orphans(db, queue, _build_spool(db, spool), utcnow(), 0)
    finally:
        await queue.close()
        await db.close()


async def _spool_entries(db: Database, spool: Path | str) -> dict[str, str]:
    """Everything the spool holds, listed independently of Postline's own scan: entry ->
    the body ref it stores, or "" for a file that is not a body (a leftover temp file)."""
    if spool == DATABASE_SPOOL:
        async with db.read() as conn:
            rows = await conn.execute(select(spool_bodies.c.ref))
            return {f"spool_bodies:{row.ref}": str(row.ref) for row in rows}
    root = Path(spool)
    if not root.exists():
        return {}
    return {
        str(path.relative_to(root)): path.stem if path.suffix == ".eml" else ""
        for path in root.rglob("*")
        if path.is_file() and path.parent.name != SPARE_DIR
    }


def _full_spares(spool: Path | str) -> list[str]:
    """Spare files (deleted bodies' files kept for reuse) that still hold content."""
    spares = Path(spool) / SPARE_DIR
    if spool == DATABASE_SPOOL or not spares.exists():
        return []
    return sorted(path.name for path in spares.iterdir() if path.stat().st_size)


# ------------------------------------------------------------------------- the check


class _Findings:
    def __init__(self) -> None:
        self.violations: list[str] = []

    def add(self, what: str, offenders: Sequence[Any]) -> None:
        if offenders:
            shown = ", ".join(str(o) for o in list(offenders)[:_SHOWN])
            more = f" (+{len(offenders) - _SHOWN} more)" if len(offenders) > _SHOWN else ""
            self.violations.append(f"{len(offenders)} {what}: {shown}{more}")


async def check_invariants(
    *,
    database_url: str,
    expectation: Expectation,
    received: Mapping[str, int],
    webhook_event_ids: Mapping[str, int] | WebhookReceiver | None,
    spool: Path | str | None,
    in_flight_bound: int,
    queue_url: str = "embedded",
    queue_prefix: str = "postline",
    webhook_event_types: Collection[str] | None = None,
    cleanup: bool = True,
    raise_on_violation: bool = True,
) -> InvariantReport:
    """Check every invariant of the module docstring; raise AssertionError listing the
    offenders of each one that failed (or, with ``raise_on_violation=False``, return them
    in ``report.violations``).

    ``received``: recipient address -> times received, over every fake MX
    (:func:`received_copies`). ``webhook_event_ids``: webhook-id -> times acknowledged, or
    the receiver itself; ``None`` skips the webhook check. ``webhook_event_types``: the
    event types the endpoint subscribed to (``None``: all). ``spool``: the file spool
    directory, :data:`DATABASE_SPOOL`, or ``None`` to skip the spool check.
    ``in_flight_bound``: how many duplicate copies the run could explain (for example
    concurrency times crashes). ``cleanup``: run one orphan cleanup pass first (see
    :func:`clean_spool`; Postline must be stopped or idle).
    """
    report = InvariantReport(in_flight_bound=in_flight_bound)
    found = _Findings()
    if spool is not None and spool != DATABASE_SPOOL and Path(spool).exists():
        report.spool_temp_files = sum(1 for _ in Path(spool).glob("*/*.tmp"))
    if spool is not None and cleanup:
        cleaned = await clean_spool(
            database_url=database_url, spool=spool, queue_url=queue_url, queue_prefix=queue_prefix
        )
        report.spool_cleaned = cleaned.deleted
        if cleaned.refused is not None:
            found.add("cleanup passes refused", [cleaned.refused])

    db = _database(database_url)
    queue = _build_queue(db, queue_url, queue_prefix)
    try:
        store = await _read_store(db)
        if spool is not None:
            entries = await _spool_entries(db, spool)
            found.add("spare files holding a deleted body's content", _full_spares(spool))
            queued = await queue.body_refs()
        else:
            entries, queued = {}, set()
    finally:
        await queue.close()
        await db.close()

    by_email = store.by_email()
    report.emails = len(store.emails)
    report.accepted = len(expectation.accepted)
    report.recipients = len(store.recipients)
    statuses = Counter(r.status for r in store.recipients)
    report.delivered = statuses["delivered"]
    report.bounced = statuses["bounced"]
    report.failed = statuses["failed"]
    lost: set[str] = set()

    # 1. Every 2xx email exists with its recipients, all terminal, as expected.
    missing = [e for e in expectation.accepted if e not in store.emails]
    found.add("accepted emails missing from the store", missing)
    lost.update(missing)
    wrong_set, stuck, wrong_outcome = [], [], []
    for email_id, addresses in expectation.accepted.items():
        if email_id not in store.emails:
            continue
        rows = by_email.get(email_id, [])
        if Counter(r.address for r in rows) != Counter(a.lower() for a in addresses):
            wrong_set.append(f"{email_id} {sorted(r.address for r in rows)} != {addresses}")
            lost.add(email_id)
        for r in rows:
            if r.status not in _FINAL:
                stuck.append(f"{email_id}/{r.address}={r.status}")
                lost.add(email_id)
            elif (want := expectation.outcome.get(r.address)) and r.status != want:
                wrong_outcome.append(f"{email_id}/{r.address}={r.status} (expected {want})")
    found.add("accepted emails with other recipients than sent", wrong_set)
    found.add("recipients of accepted emails not terminal", stuck)
    found.add("recipients with another outcome than expected", wrong_outcome)
    unaccepted = set(store.emails) - set(expectation.accepted)
    found.add(
        "recipients of emails without a 2xx not terminal",
        [
            f"{r.email_id}/{r.address}={r.status}"
            for r in store.recipients
            if r.email_id in unaccepted and r.status not in _FINAL
        ],
    )

    # 2. and 3. What the MX servers received against what the store says.
    delivered_rows: Counter[str] = Counter()
    seen: dict[str, set[str]] = defaultdict(set)
    emails_of: dict[str, set[str]] = defaultdict(set)
    for r in store.recipients:
        seen[r.address].add(r.status)
        emails_of[r.address].add(r.email_id)
        if r.status in _DELIVERED or store.events.get((r.id, "email.delivered")):
            delivered_rows[r.address] += 1
    copies = Counter({a.lower(): n for a, n in received.items() if n > 0})
    report.received = sum(copies.values())
    not_received, unexplained = [], []
    for address, count in delivered_rows.items():
        got = copies.get(address, 0)
        if got < count:
            not_received.append(f"{address} (delivered {count}, received {got})")
            lost.update(e for e in emails_of[address] if e in expectation.accepted)
        else:
            report.duplicates += got - count
    for address, got in copies.items():
        if not delivered_rows[address]:
            says = ",".join(sorted(seen[address])) or "no such recipient"
            unexplained.append(f"{address} x{got} (store: {says})")
    found.add("recipients delivered but never received", not_received)
    found.add("recipients received though the store says not delivered", unexplained)
    if report.duplicates > in_flight_bound:
        found.add(
            "duplicate copies beyond what was in flight",
            [f"{report.duplicates} > {in_flight_bound}"],
        )

    # 4. One event per terminal outcome, acknowledged by the receiver.
    if isinstance(webhook_event_ids, WebhookReceiver):
        webhook_event_ids = acknowledged_ids(webhook_event_ids)
    no_event, doubled, not_acked = [], [], []
    terminal_ids: set[str] = set()
    for r in store.recipients:
        if r.status not in _FINAL:
            continue
        kind = str(EVENT_FOR_STATUS[RecipientStatus(r.status)])
        ids = store.events.get((r.id, kind), [])
        if not ids:
            no_event.append(f"{r.email_id}/{r.address}={r.status}")
        elif len(ids) > 1:
            doubled.append(f"{r.email_id}/{r.address} {kind} x{len(ids)}")
        terminal_ids.update(ids)
        subscribed = webhook_event_types is None or kind in webhook_event_types
        if webhook_event_ids is not None and subscribed:
            acked = [i for i in ids if webhook_event_ids.get(i, 0) > 0]
            report.webhook_events += len(acked)
            if ids and not acked:
                not_acked.append(f"{ids[0]} {kind} {r.address}")
    report.lost_events = len(no_event) + len(not_acked)
    found.add("terminal outcomes without their event", no_event)
    found.add("terminal outcomes with more than one event", doubled)
    found.add("terminal events never acknowledged by the webhook receiver", not_acked)
    if webhook_event_ids is not None:
        known = store.all_event_ids
        invented = [i for i, n in webhook_event_ids.items() if n > 0 and i not in known]
        found.add("webhook ids acknowledged that the store never wrote", invented)
        report.webhook_duplicates = sum(
            n - 1 for i, n in webhook_event_ids.items() if i in terminal_ids and n > 1
        )

    # 5. The spool: nothing left without a live reference, nothing live missing.
    if spool is not None:
        live = {
            store.emails[r.email_id][1]
            for r in store.recipients
            if r.status in _PENDING and r.email_id in store.emails
        }
        report.spool_left = len(entries)
        # A tracked email's copy per recipient lives and goes with its email's body.
        orphans = [
            entry
            for entry, ref in entries.items()
            if not ref or (ref not in live | queued and owner_ref(ref) not in live | queued)
        ]
        report.orphan_spool_files = len(orphans)
        found.add("spool entries without a live reference after cleanup", sorted(orphans))
        held = set(entries.values())
        gone = sorted(ref for ref in live if ref not in held)
        found.add("bodies missing that waiting recipients need", gone)
        lost.update(e for e, (_, ref) in store.emails.items() if ref in gone)

    report.lost_emails = len(lost & set(expectation.accepted))
    report.violations = found.violations
    if report.violations and raise_on_violation:
        raise AssertionError(
            "invariants violated:\n  - "
            + "\n  - ".join(report.violations)
            + f"\n{report.summary()}"
        )
    return report
