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
  looks at for an hour is half-open at the next look (trap 1 of DESIGN.md: an
  earlier design only half-opened inside "execute", which open jobs never
  reached, so it never recovered).
- Half-open: at most ``half_open_trials`` unsettled trials are admitted;
  ``close_after`` successes close it, a failure re-opens it from that failure.

A refusal has no side effects: the engine defers the job without connecting
and reports nothing, so deferrals can neither count as failures nor push the
open period forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from postline.model import RecipientStatus
from postline.store.attempts import AttemptRow
from postline.store.types import utcnow

__all__ = ["AttemptRow", "BreakerPolicy", "BreakerState", "BreakerView", "Breakers"]


#: Rows that never reached the destination's SMTP server: deferrals by an open
#: breaker, and local outcomes (DNS, a lost body) that say nothing about its health.
_NOT_COUNTED = frozenset({"breaker", "local"})


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


# A transaction-level row with one of these statuses is a failed transaction.
_FAILED = frozenset(
    str(s) for s in (RecipientStatus.DEFERRED, RecipientStatus.BOUNCED, RecipientStatus.FAILED)
)


@dataclass
class _Replayed:
    """One message attempt (all rows sharing an attempt_id) during the warm-up."""

    order: int
    at: datetime
    delivered: bool = False
    transaction: bool = False
    failed: bool = False
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

    # -- what the engine calls ------------------------------------------------

    def allow(self, domain: str) -> bool:
        """True: connect. False: defer the job without connecting, and report nothing.

        In half-open a True takes a trial slot, given back by the verdict
        (:meth:`success`, :meth:`failure`) or by :meth:`release`. A slot whose
        verdict never comes (a lost task) is reclaimed after ``open_seconds``,
        so a lost verdict cannot wedge the breaker half-open forever.
        """
        now = self.clock()
        breaker = self._breakers.get(_key(domain))
        if breaker is None:
            return True
        state = self._state(breaker, now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        horizon = now - self._open_for
        breaker.trials = [t for t in breaker.trials if t > horizon]
        if len(breaker.trials) >= self.policy.half_open_trials:
            return False
        breaker.trials.append(now)
        return True

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
        breaker = self._breakers.setdefault(_key(domain), _Breaker())
        _trip(breaker, until)
        breaker.forced = True

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
        failure, and retries of one message are separate attempts. An attempt
        is a success if anything was delivered or only per-recipient replies
        were recorded (the server answered); a failure if a transaction-level
        row is deferred, bounced or failed. Rows with scope "breaker" are
        deferrals that never connected and never count. Verdicts are replayed
        in time order at their own instants, so an open period ends at the
        last failure + ``open_seconds`` however long ago that was.
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
            if row.status == RecipientStatus.DELIVERED:
                attempt.delivered = True
            if row.scope == "transaction":
                attempt.transaction = True
                if row.status in _FAILED:
                    attempt.failed = True
                    attempt.error = attempt.error or row.response
        for (domain, _), attempt in sorted(attempts.items(), key=lambda i: (i[1].at, i[1].order)):
            if attempt.delivered or not attempt.transaction:
                self._success(domain, attempt.at)
            elif attempt.failed:
                self._failure(domain, attempt.at, attempt.error)

    # -- the state machine -------------------------------------------------------

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
                _trip(breaker, at + self._open_for)
        elif state is BreakerState.OPEN:
            # A late verdict of a transaction admitted before it opened: open
            # until this, the latest failure, + open time — never "now" at a check.
            if not breaker.forced and breaker.until is not None:
                breaker.until = max(breaker.until, at + self._open_for)
        else:
            _trip(breaker, at + self._open_for)  # a trial failed


def _trip(breaker: _Breaker, until: datetime | None) -> None:
    breaker.tripped = True
    breaker.until = until
    breaker.forced = False
    # Trials still in flight stay counted: a new open period must not admit more
    # than the policy allows (unsettled ones are reclaimed after open_seconds).
    breaker.successes = 0


def _key(domain: str) -> str:
    return domain.lower()
