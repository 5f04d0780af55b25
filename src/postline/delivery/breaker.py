"""Per-destination-domain circuit breakers: stop hammering a mail server that is down.

Pure logic with an injectable clock; the engine asks :meth:`Breakers.allow`
before it connects and reports the transaction-level verdict afterwards.

- Closed: everything goes. ``failure_threshold`` consecutive transaction-level
  failures (connect, TLS, greeting, 4xx on MAIL/DATA, timeouts) open it; a
  success resets the count. A per-recipient 5xx is the server answering, so
  the caller reports the transaction as a success (or not at all), never as
  a failure.
- Open: nothing goes, until ``last failure + open_seconds``. The state is
  *computed* from that instant whenever it is asked for, so a breaker nobody
  looks at for an hour is half-open at the next look (an earlier design only
  half-opened inside "execute", which open jobs never reached, so it never
  recovered).
- Half-open: at most ``half_open_trials`` unsettled trials are admitted;
  ``close_after`` successes close it, a failure re-opens it from that failure.

A refusal has no side effects: the engine parks the job without connecting
and reports nothing, so waits can neither count as failures nor push the
open period forward. :meth:`Breakers.waiting` tells it until when, and which
opening the wait belongs to (one timeline row per recipient per opening).

What counts is decided once, by :func:`attempt_verdict`, from the rows an
attempt leaves: the engine reports a live attempt's verdict with
:meth:`Breakers.settle`, and :meth:`Breakers.warm_up` replays recorded ones
through the same function, so a restart reaches the state the live breaker had.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from postline.model import AttemptScope, RecipientStatus
from postline.store.attempts import AttemptRow
from postline.store.types import utcnow

__all__ = [
    "AttemptRow",
    "BreakerPolicy",
    "BreakerState",
    "BreakerView",
    "Breakers",
    "Verdict",
    "Waiting",
    "attempt_verdict",
]


#: Rows that say nothing about the destination's health: waits behind an open
#: breaker, and local outcomes: DNS, a lost body, and refusals before sending
#: (the message is over the server's SIZE, or needs an SMTPUTF8 it does not offer).
_NOT_COUNTED = frozenset({AttemptScope.BREAKER, AttemptScope.LOCAL})


class BreakerState(StrEnum):
    """Where one destination's breaker stands."""

    CLOSED = "closed"  # deliveries go ahead
    OPEN = "open"  # deliveries are deferred without connecting
    HALF_OPEN = "half_open"  # a few trial deliveries probe the destination


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int = 5
    open_seconds: float = 300
    half_open_trials: int = 2
    close_after: int = 2


@dataclass(frozen=True)
class BreakerView:
    """A snapshot for operators; ``until`` is set only while open (None if forced open
    until :meth:`Breakers.force_close`)."""

    domain: str
    state: BreakerState
    until: datetime | None
    consecutive_failures: int
    last_error: str | None


@dataclass
class _Breaker:
    """The state of one non-default breaker (a closed one with no failures has none)."""

    failures: int = 0
    last_error: str | None = None
    tripped: bool = False  # open or half-open
    #: While tripped: open before this instant, half-open from it on. None only
    #: when forced open without an end.
    until: datetime | None = None
    #: Forced open by an operator: verdicts do not move it until ``until``.
    forced: bool = False
    #: Admission times of the half-open trials not yet settled.
    trials: list[datetime] = field(default_factory=list)
    successes: int = 0
    #: When it last opened (tripped, or a trial failed): the opening waits belong to.
    opened_at: datetime | None = None


# A transaction-level row with one of these statuses is a failed transaction.
_FAILED = frozenset({RecipientStatus.DEFERRED, RecipientStatus.BOUNCED, RecipientStatus.FAILED})


class Verdict(StrEnum):
    """What one message attempt says about its destination's health."""

    SUCCESS = "success"  # the server answered: something delivered, or per-recipient replies
    FAILURE = "failure"  # the transaction failed as a whole: connect, TLS, greeting, MAIL, DATA
    NEUTRAL = "neutral"  # nothing reached the server (a local refusal, a wait): neither


def attempt_verdict(rows: Iterable[tuple[AttemptScope, RecipientStatus]]) -> Verdict:
    """The verdict of one attempt from its rows' ``(scope, status)``, one per recipient.

    The one definition, used live (the engine, on the results it is about to
    record) and at warm-up (on the rows it recorded), so that they cannot
    disagree: any delivery is a success; else a transaction-level deferral,
    bounce or failure is a failure; else, if the server said anything (per-
    recipient replies), a success. Rows that never reached the server
    (``_NOT_COUNTED``) are left out, and an attempt made only of those is neutral.
    """
    answered = failed = False
    for scope, status in rows:
        if scope in _NOT_COUNTED:
            continue
        if status == RecipientStatus.DELIVERED:
            return Verdict.SUCCESS
        answered = True
        failed = failed or (scope is AttemptScope.TRANSACTION and status in _FAILED)
    if failed:
        return Verdict.FAILURE
    return Verdict.SUCCESS if answered else Verdict.NEUTRAL


@dataclass(frozen=True)
class Waiting:
    """Why a refused job waits, and for how long (:meth:`Breakers.waiting`)."""

    #: When this opening began: waits of one opening share it, the next opening's do not.
    opened_at: datetime
    #: When a trial may be admitted next (the job is due again then); None while an
    #: operator holds the breaker open without an end.
    next_trial: datetime | None


@dataclass
class _Replayed:
    """One message attempt (all rows sharing an attempt_id) during the warm-up."""

    order: int
    at: datetime
    rows: list[tuple[AttemptScope, RecipientStatus]] = field(default_factory=list)
    error: str | None = None


class Breakers:
    """All breakers of one engine, keyed by lower-case destination domain.

    Not thread-safe: it belongs to one event loop, like the engine.
    """

    def __init__(
        self,
        policy: BreakerPolicy = BreakerPolicy(),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.policy = policy
        self.clock = clock
        self._open_for = timedelta(seconds=policy.open_seconds)
        self._breakers: dict[str, _Breaker] = {}
        #: Every domain tripped since it was last seen closed: a superset of the open and
        #: half-open ones, so that :meth:`held_back` looks at those only.
        self._tripped: set[str] = set()

    # -- what the engine calls ------------------------------------------------

    def allow(self, domain: str) -> bool:
        """True: connect. False: park the job without connecting, and report nothing.

        In half-open a True takes a trial slot, given back by the verdict
        (:meth:`settle`, :meth:`success`, :meth:`failure`) or by :meth:`release`.
        A slot whose verdict never comes (a lost task) is reclaimed after
        ``open_seconds``, so a lost verdict cannot wedge the breaker half-open forever.
        """
        now = self.clock()
        breaker = self._breakers.get(_key(domain))
        if breaker is None:
            return True
        if not self._admits(breaker, now):
            return False
        if breaker.tripped:  # half-open: a trial
            breaker.trials.append(now)
        return True

    def admits(self, domain: str) -> bool:
        """Whether :meth:`allow` would say True now, without taking a trial slot."""
        breaker = self._breakers.get(_key(domain))
        return breaker is None or self._admits(breaker, self.clock())

    def held_back(self) -> frozenset[str]:
        """The domains :meth:`allow` would refuse now: open, or half-open with every
        trial slot taken.

        Asked at every lease, so that the queue gives the jobs of these domains only
        their own turns, not the slots the others leave: each such job is leased only
        to be parked, and a backlog parked job by job would keep the rest of the mail
        waiting (``Queue.lease``). Looks at the tripped breakers only, not at every one.
        """
        now = self.clock()
        held: set[str] = set()
        for domain in list(self._tripped):
            breaker = self._breakers.get(domain)
            if breaker is None or not breaker.tripped:
                self._tripped.discard(domain)
            elif not self._admits(breaker, now):
                held.add(domain)
        return frozenset(held)

    def waiting(self, domain: str) -> Waiting:
        """For a job :meth:`allow` refused: its opening, and when the next trial is due.

        Open: at the end of the open period. Half-open with every trial slot
        taken: when the oldest trial's slot is reclaimed, unless a verdict frees
        one sooner (:meth:`settle` says so). Asked of a breaker that would admit
        a job, it says "now".
        """
        now = self.clock()
        breaker = self._breakers.get(_key(domain))
        if breaker is None or breaker.opened_at is None:
            return Waiting(now, now)
        state = self._state(breaker, now)
        if state is BreakerState.OPEN:
            return Waiting(breaker.opened_at, breaker.until)
        if state is BreakerState.HALF_OPEN and not self._admits(breaker, now):
            return Waiting(breaker.opened_at, min(breaker.trials) + self._open_for)
        return Waiting(breaker.opened_at, now)

    def settle(self, domain: str, verdict: Verdict, error: str | None = None) -> bool:
        """Report an admitted attempt's :func:`attempt_verdict`.

        A neutral one gives its trial slot back (:meth:`release`) and changes
        nothing else. Returns True when jobs parked for the destination may go
        now: the breaker was open or half-open, and this verdict closed it or
        freed a trial slot.
        """
        key = _key(domain)
        before = self._breakers.get(key)
        tripped = before is not None and before.tripped
        if verdict is Verdict.FAILURE:
            self.failure(domain, error)
            return False
        if verdict is Verdict.SUCCESS:
            self.success(domain)
        else:
            self.release(domain)
        after = self._breakers.get(key)
        return tripped and (after is None or self._admits(after, self.clock()))

    def success(self, domain: str) -> None:
        """The destination completed a transaction (even if it refused every recipient)."""
        self._success(_key(domain), self.clock())

    def failure(self, domain: str, error: str | None = None) -> None:
        """The transaction failed as a whole: connect, TLS, greeting, 4xx on MAIL/DATA, timeout."""
        self._failure(_key(domain), self.clock(), error)

    def release(self, domain: str) -> None:
        """Give back a trial slot whose job ended without a verdict (cancelled, shutdown)."""
        breaker = self._breakers.get(_key(domain))
        if breaker is not None and breaker.trials:
            breaker.trials.pop(0)

    # -- operators --------------------------------------------------------------

    def force_open(self, domain: str, until: datetime | None = None) -> None:
        """Open until ``until`` (or until :meth:`force_close`), whatever the verdicts say.

        When ``until`` passes the breaker half-opens like any other, so the
        destination has to prove itself with trials before traffic resumes.
        """
        if until is not None and until.tzinfo is None:
            raise ValueError("force_open needs an aware datetime; use datetime.now(UTC)")
        key = _key(domain)
        breaker = self._breakers.setdefault(key, _Breaker())
        _trip(breaker, self.clock(), until)
        breaker.forced = True
        self._tripped.add(key)

    def force_close(self, domain: str) -> None:
        """Back to closed with a clean count: the operator vouches for the destination."""
        self._breakers.pop(_key(domain), None)

    def view(self, domain: str) -> BreakerView:
        key = _key(domain)
        breaker = self._breakers.get(key)
        if breaker is None:
            return BreakerView(key, BreakerState.CLOSED, None, 0, None)
        state = self._state(breaker, self.clock())
        until = breaker.until if state is BreakerState.OPEN else None
        return BreakerView(key, state, until, breaker.failures, breaker.last_error)

    def views(self) -> list[BreakerView]:
        """Every domain that is open, half-open, or has failures since its last success."""
        return [self.view(domain) for domain in sorted(self._breakers)]

    # -- start-up -------------------------------------------------------------------

    def warm_up(self, rows: Iterable[AttemptRow]) -> None:
        """Replay recent delivery attempts so a restart does not hammer a dead server.

        Rows are grouped into message attempts (one SMTP transaction each, by
        ``attempt_id``): a transaction that failed for five recipients is one
        failure, and retries of one message are separate attempts. Each
        attempt's verdict is :func:`attempt_verdict` of its rows, as live:
        waits behind an open breaker and local refusals are neither success
        nor failure. Verdicts are replayed in time order at their own
        instants, so an open period ends at the last failure + ``open_seconds``
        however long ago that was.
        """
        attempts: dict[tuple[str, str], _Replayed] = {}
        for row in rows:
            if row.scope in _NOT_COUNTED:
                continue
            key = (_key(row.destination), row.attempt_id)
            attempt = attempts.get(key)
            if attempt is None:
                attempt = attempts[key] = _Replayed(order=len(attempts), at=row.created_at)
            attempt.at = max(attempt.at, row.created_at)
            attempt.rows.append((row.scope, row.status))
            if row.scope is AttemptScope.TRANSACTION and row.status in _FAILED:
                attempt.error = attempt.error or row.response
        for (domain, _), attempt in sorted(attempts.items(), key=lambda i: (i[1].at, i[1].order)):
            verdict = attempt_verdict(attempt.rows)
            if verdict is Verdict.SUCCESS:
                self._success(domain, attempt.at)
            elif verdict is Verdict.FAILURE:
                self._failure(domain, attempt.at, attempt.error)

    # -- the state machine -------------------------------------------------------

    def _admits(self, breaker: _Breaker, now: datetime) -> bool:
        """Closed, or half-open with a trial slot free (reclaiming those too old)."""
        state = self._state(breaker, now)
        if state is not BreakerState.HALF_OPEN:
            return state is BreakerState.CLOSED
        horizon = now - self._open_for
        breaker.trials = [t for t in breaker.trials if t > horizon]
        return len(breaker.trials) < self.policy.half_open_trials

    def _state(self, breaker: _Breaker, now: datetime) -> BreakerState:
        """Computed from ``until`` at every look: nothing has to "notice" the time passing."""
        if not breaker.tripped:
            return BreakerState.CLOSED
        if breaker.until is None or now < breaker.until:
            return BreakerState.OPEN
        breaker.forced = False  # a forced period that ended is an ordinary half-open
        return BreakerState.HALF_OPEN

    def _success(self, domain: str, at: datetime) -> None:
        breaker = self._breakers.get(domain)
        if breaker is None:
            return
        state = self._state(breaker, at)
        if state is BreakerState.CLOSED:
            del self._breakers[domain]  # the count is reset: nothing left to remember
            return
        breaker.failures = 0
        if state is BreakerState.OPEN:
            if breaker.forced:
                return
            # A transaction admitted before the breaker opened went through:
            # the same evidence a trial gives, so the open period ends here.
            breaker.until = at
        if breaker.trials:
            breaker.trials.pop(0)
        breaker.successes += 1
        if breaker.successes >= self.policy.close_after:
            del self._breakers[domain]

    def _failure(self, domain: str, at: datetime, error: str | None) -> None:
        breaker = self._breakers.setdefault(domain, _Breaker())
        state = self._state(breaker, at)
        breaker.failures += 1
        if error is not None:
            breaker.last_error = error
        if state is BreakerState.CLOSED:
            if breaker.failures >= self.policy.failure_threshold:
                _trip(breaker, at, at + self._open_for)
                self._tripped.add(domain)
        elif state is BreakerState.OPEN:
            # A late verdict of a transaction admitted before it opened: open
            # until this, the latest failure, + open time — never "now" at a check.
            if not breaker.forced and breaker.until is not None:
                breaker.until = max(breaker.until, at + self._open_for)
        else:
            _trip(breaker, at, at + self._open_for)  # a trial failed


def _trip(breaker: _Breaker, at: datetime, until: datetime | None) -> None:
    breaker.tripped = True
    breaker.opened_at = at
    breaker.until = until
    breaker.forced = False
    # Trials still in flight stay counted: a new open period must not admit more
    # than the policy allows (unsettled ones are reclaimed after open_seconds).
    breaker.successes = 0


def _key(domain: str) -> str:
    return domain.lower()
