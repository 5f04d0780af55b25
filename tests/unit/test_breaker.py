"""Per-destination circuit breakers on a fake clock: open after consecutive transaction
failures, half-open once the open time has passed since the last one, closed by trials."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from postline.delivery.breaker import (
    AttemptRow,
    BreakerPolicy,
    Breakers,
    BreakerState,
    BreakerView,
    Verdict,
    Waiting,
    attempt_verdict,
)
from postline.model import AttemptScope, RecipientStatus

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
OPEN = timedelta(minutes=5)
D = "dest.test"


class FakeClock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breakers(clock: FakeClock) -> Breakers:
    return Breakers(clock=clock)


def fail(breakers: Breakers, times: int, domain: str = D, error: str = "timed out") -> None:
    for _ in range(times):
        assert breakers.allow(domain)
        breakers.failure(domain, error)


def trip(breakers: Breakers, domain: str = D) -> None:
    fail(breakers, 5, domain)
    assert breakers.view(domain).state is BreakerState.OPEN


def state(breakers: Breakers, domain: str = D) -> BreakerState:
    return breakers.view(domain).state


# -- closed -> open -----------------------------------------------------------------


def test_an_unknown_domain_is_closed(breakers: Breakers) -> None:
    assert breakers.allow(D)
    assert breakers.view(D) == BreakerView(D, BreakerState.CLOSED, None, 0, None)
    assert breakers.views() == []


def test_opens_after_five_consecutive_failures_until_the_last_one_plus_five_minutes(
    breakers: Breakers, clock: FakeClock
) -> None:
    for _ in range(4):
        fail(breakers, 1)
        clock.advance(30)
    assert state(breakers) is BreakerState.CLOSED
    assert breakers.view(D).consecutive_failures == 4
    fail(breakers, 1, error="421 4.3.2 shutting down")
    view = breakers.view(D)
    assert view.state is BreakerState.OPEN
    assert view.until == clock.now + OPEN
    assert view.consecutive_failures == 5
    assert view.last_error == "421 4.3.2 shutting down"
    assert not breakers.allow(D)


def test_a_success_resets_the_count(breakers: Breakers) -> None:
    fail(breakers, 4)
    breakers.success(D)
    assert breakers.view(D).consecutive_failures == 0
    fail(breakers, 4)
    assert state(breakers) is BreakerState.CLOSED
    assert breakers.view(D).consecutive_failures == 4


def test_domains_are_case_insensitive(breakers: Breakers) -> None:
    fail(breakers, 3, "Dest.TEST")
    fail(breakers, 2, "dest.test")
    view = breakers.view("DEST.test")
    assert view.domain == "dest.test"
    assert view.state is BreakerState.OPEN
    assert not breakers.allow("dEsT.tEsT")


def test_domains_are_independent(breakers: Breakers) -> None:
    trip(breakers, "dead.test")
    assert breakers.allow("alive.test")
    assert state(breakers, "alive.test") is BreakerState.CLOSED


def test_held_back_names_the_domains_whose_jobs_allow_would_refuse(
    breakers: Breakers, clock: FakeClock
) -> None:
    """What the engine tells the queue at every lease (``Queue.lease``)."""
    trip(breakers, "dead.test")
    fail(breakers, 2, "sick.test")  # failing, still closed
    assert breakers.held_back() == {"dead.test"}
    clock.advance(OPEN.total_seconds())  # half-open: trial slots free
    assert breakers.held_back() == set()
    assert breakers.allow("dead.test") and breakers.allow("dead.test")
    assert breakers.held_back() == {"dead.test"}  # every trial slot taken
    breakers.success("dead.test")
    breakers.success("dead.test")
    assert breakers.held_back() == set()
    trip(breakers, "dead.test")  # tripped again after closing
    assert breakers.held_back() == {"dead.test"}


def test_a_breaker_warmed_up_open_is_held_back(clock: FakeClock) -> None:
    rows = [
        AttemptRow(
            "dead.test",
            f"att_{i}",
            AttemptScope.TRANSACTION,
            RecipientStatus.DEFERRED,
            clock.now,
            "timed out",
        )
        for i in range(5)
    ]
    breakers = Breakers(clock=clock)
    breakers.warm_up(rows)
    assert breakers.held_back() == {"dead.test"}


# -- trap 1: open until last failure + open time, and recovery -------------------------


def test_the_open_period_counts_from_the_last_failure_not_from_a_later_check(
    breakers: Breakers, clock: FakeClock
) -> None:
    trip(breakers)
    last_failure = clock.now
    clock.advance(4 * 60 + 59)
    assert breakers.view(D).until == last_failure + OPEN  # a check does not move it
    assert state(breakers) is BreakerState.OPEN
    clock.advance(1)
    assert state(breakers) is BreakerState.HALF_OPEN


def test_a_breaker_checked_long_after_opening_is_half_open_and_recovers(
    breakers: Breakers, clock: FakeClock
) -> None:
    trip(breakers)
    clock.advance(3600)  # nobody asked for an hour
    view = breakers.view(D)
    assert view.state is BreakerState.HALF_OPEN
    assert view.until is None
    assert breakers.allow(D)
    breakers.success(D)
    assert breakers.allow(D)
    breakers.success(D)
    assert breakers.view(D) == BreakerView(D, BreakerState.CLOSED, None, 0, None)


def test_deferrals_while_open_neither_count_nor_extend_and_recovery_still_happens(
    breakers: Breakers, clock: FakeClock
) -> None:
    trip(breakers)
    opened = breakers.view(D)
    for _ in range(299):  # a job refused every second; the engine reports nothing
        assert not breakers.allow(D)
        assert breakers.view(D) == opened
        clock.advance(1)
    clock.advance(1)
    assert state(breakers) is BreakerState.HALF_OPEN
    assert breakers.allow(D)
    assert breakers.allow(D)
    assert not breakers.allow(D)  # the many deferred jobs wait for the trials
    breakers.success(D)
    breakers.success(D)
    assert state(breakers) is BreakerState.CLOSED
    assert all(breakers.allow(D) for _ in range(50))


# -- half-open -------------------------------------------------------------------------


def half_open(breakers: Breakers, clock: FakeClock) -> None:
    trip(breakers)
    clock.advance(OPEN.total_seconds())
    assert state(breakers) is BreakerState.HALF_OPEN


def test_half_open_admits_exactly_two_trials(breakers: Breakers, clock: FakeClock) -> None:
    half_open(breakers, clock)
    assert [breakers.allow(D) for _ in range(5)] == [True, True, False, False, False]
    breakers.success(D)  # one trial settled: its slot is free again, one success counted
    assert state(breakers) is BreakerState.HALF_OPEN
    assert [breakers.allow(D) for _ in range(3)] == [True, False, False]
    breakers.success(D)
    assert state(breakers) is BreakerState.CLOSED


def test_a_failure_in_half_open_reopens_from_that_failure(
    breakers: Breakers, clock: FakeClock
) -> None:
    half_open(breakers, clock)
    assert breakers.allow(D)
    assert breakers.allow(D)
    breakers.success(D)
    clock.advance(10)
    breakers.failure(D, "connection refused")
    view = breakers.view(D)
    assert view.state is BreakerState.OPEN
    assert view.until == clock.now + OPEN
    assert view.last_error == "connection refused"
    assert not breakers.allow(D)
    clock.advance(OPEN.total_seconds())
    # A new half-open period: two fresh trials, and the earlier success no longer counts.
    assert [breakers.allow(D) for _ in range(3)] == [True, True, False]
    breakers.success(D)
    assert state(breakers) is BreakerState.HALF_OPEN
    breakers.success(D)
    assert state(breakers) is BreakerState.CLOSED


def test_release_gives_a_trial_slot_back_without_a_verdict(
    breakers: Breakers, clock: FakeClock
) -> None:
    half_open(breakers, clock)
    assert breakers.allow(D)
    assert breakers.allow(D)
    breakers.release(D)  # cancelled at shutdown: neither success nor failure
    view = breakers.view(D)
    assert view.state is BreakerState.HALF_OPEN
    assert view.consecutive_failures == 5
    assert breakers.allow(D)
    assert not breakers.allow(D)


def test_a_trial_that_never_reports_frees_its_slot_after_the_open_time(
    breakers: Breakers, clock: FakeClock
) -> None:
    half_open(breakers, clock)
    assert breakers.allow(D)
    assert breakers.allow(D)  # both verdicts are lost
    clock.advance(OPEN.total_seconds() - 1)
    assert not breakers.allow(D)
    clock.advance(1)
    assert breakers.allow(D)  # never wedged half-open forever


def test_release_outside_half_open_changes_nothing(breakers: Breakers) -> None:
    breakers.release(D)
    fail(breakers, 2)
    breakers.release(D)
    assert breakers.view(D).consecutive_failures == 2


# -- late verdicts of transactions admitted before the breaker opened ------------------


def test_a_late_failure_while_open_extends_to_that_failure(
    breakers: Breakers, clock: FakeClock
) -> None:
    trip(breakers)
    clock.advance(60)
    breakers.failure(D, "timed out")
    assert breakers.view(D).until == clock.now + OPEN
    assert breakers.view(D).consecutive_failures == 6


def test_a_late_success_while_open_ends_the_open_period(
    breakers: Breakers, clock: FakeClock
) -> None:
    trip(breakers)
    clock.advance(60)
    breakers.success(D)  # the server took a whole transaction: it is not dead
    view = breakers.view(D)
    assert view.state is BreakerState.HALF_OPEN
    assert view.consecutive_failures == 0
    assert breakers.allow(D)
    breakers.success(D)  # the second success closes it
    assert state(breakers) is BreakerState.CLOSED


# -- operators ---------------------------------------------------------------------------


def test_force_open_until_a_time_ignores_verdicts_then_half_opens(
    breakers: Breakers, clock: FakeClock
) -> None:
    until = clock.now + timedelta(hours=1)
    breakers.force_open("Dest.Test", until)
    assert breakers.view(D) == BreakerView(D, BreakerState.OPEN, until, 0, None)
    assert not breakers.allow(D)
    breakers.success(D)
    breakers.success(D)
    breakers.failure(D, "late")
    assert breakers.view(D).until == until  # verdicts neither close nor extend it
    clock.now = until
    assert state(breakers) is BreakerState.HALF_OPEN
    assert breakers.allow(D)
    breakers.failure(D)  # now an ordinary half-open: a failed trial re-opens it
    assert breakers.view(D).until == clock.now + OPEN


def test_force_open_without_an_end_lasts_until_force_close(
    breakers: Breakers, clock: FakeClock
) -> None:
    breakers.force_open(D)
    clock.advance(86400 * 30)
    view = breakers.view(D)
    assert view.state is BreakerState.OPEN
    assert view.until is None
    assert not breakers.allow(D)
    breakers.force_close(D)
    assert breakers.view(D) == BreakerView(D, BreakerState.CLOSED, None, 0, None)
    assert breakers.allow(D)


def test_force_close_resets_an_open_breaker_and_its_count(breakers: Breakers) -> None:
    trip(breakers)
    breakers.force_close(D.upper())
    assert breakers.view(D).consecutive_failures == 0
    fail(breakers, 4)
    assert state(breakers) is BreakerState.CLOSED


def test_force_open_refuses_a_naive_datetime(breakers: Breakers) -> None:
    # The whole message: it tells the caller what to pass instead.
    with pytest.raises(
        ValueError, match=r"^force_open needs an aware datetime; use datetime\.now\(UTC\)$"
    ):
        breakers.force_open(D, datetime(2030, 1, 1))


def test_views_list_non_default_breakers_sorted(breakers: Breakers, clock: FakeClock) -> None:
    trip(breakers, "b.test")
    fail(breakers, 2, "c.test")
    breakers.force_open("a.test")
    fail(breakers, 3, "clean.test")
    breakers.success("clean.test")
    views = breakers.views()
    assert [(v.domain, v.state, v.consecutive_failures) for v in views] == [
        ("a.test", BreakerState.OPEN, 0),
        ("b.test", BreakerState.OPEN, 5),
        ("c.test", BreakerState.CLOSED, 2),
    ]


def test_a_custom_policy_is_honoured(clock: FakeClock) -> None:
    policy = BreakerPolicy(failure_threshold=2, open_seconds=10, half_open_trials=1, close_after=1)
    breakers = Breakers(policy, clock)
    fail(breakers, 2)
    assert breakers.view(D).until == clock.now + timedelta(seconds=10)
    clock.advance(10)
    assert [breakers.allow(D), breakers.allow(D)] == [True, False]
    breakers.success(D)
    assert state(breakers) is BreakerState.CLOSED


# -- warm-up -----------------------------------------------------------------------------

_serial = iter(range(10**9))


def attempt(
    at: datetime,
    outcome: str,
    recipients: int = 1,
    destination: str = D,
    attempt_id: str | None = None,
) -> list[AttemptRow]:
    """The rows one SMTP transaction leaves behind, one per recipient."""
    attempt_id = attempt_id or f"att_{next(_serial)}"
    scope, status, response = {
        "failure": ("transaction", "deferred", "421 4.4.2 timeout"),
        "rejected": ("transaction", "bounced", "554 5.7.1 go away"),
        "delivered": ("transaction", "delivered", "250 2.0.0 OK"),
        "user_unknown": ("recipient", "bounced", "550 5.1.1 no such user"),
        "greylisted": ("recipient", "deferred", "451 4.7.1 greylisted"),
        "breaker": ("breaker", "deferred", "circuit breaker open"),  # before parking
        "waiting": ("breaker", "deferred", "waiting: circuit breaker for d, next trial at T"),
        "too_big": ("local", "bounced", "552 5.3.4 message exceeds the server's SIZE"),
        "no_smtputf8": ("local", "bounced", "553 5.6.7 the server does not support SMTPUTF8"),
        "dns": ("local", "deferred", "DNS lookup timed out"),
    }[outcome]
    return [
        AttemptRow(
            destination, attempt_id, AttemptScope(scope), RecipientStatus(status), at, response
        )
        for _ in range(recipients)
    ]


def warmed(rows: list[AttemptRow], now: datetime = T0) -> Breakers:
    breakers = Breakers(clock=FakeClock(now))
    breakers.warm_up(rows)
    return breakers


def ago(minutes: float) -> datetime:
    return T0 - timedelta(minutes=minutes)


def test_warm_up_five_recipient_rows_of_one_failed_attempt_do_not_open() -> None:
    breakers = warmed(attempt(ago(1), "failure", recipients=5))
    view = breakers.view(D)
    assert view.state is BreakerState.CLOSED
    assert view.consecutive_failures == 1
    assert view.last_error == "421 4.4.2 timeout"


def test_warm_up_retries_of_one_message_count_separately() -> None:
    rows = [row for m in range(5) for row in attempt(ago(5 - m), "failure", recipients=3)]
    view = warmed(rows).view(D)
    assert view.state is BreakerState.OPEN
    assert view.until == ago(1) + OPEN


def test_warm_up_failures_then_a_recent_success_stays_closed() -> None:
    rows = [row for m in range(4) for row in attempt(ago(10 - m), "failure")]
    rows += attempt(ago(2), "delivered", recipients=2)
    view = warmed(rows).view(D)
    assert view.state is BreakerState.CLOSED
    assert view.consecutive_failures == 0


def test_warm_up_a_success_resets_the_count_between_failures() -> None:
    rows = [row for m in range(4) for row in attempt(ago(20 - m), "failure")]
    rows += attempt(ago(15), "delivered")
    rows += [row for m in range(4) for row in attempt(ago(5 - m), "failure")]
    view = warmed(rows).view(D)
    assert view.state is BreakerState.CLOSED  # 8 failures in the hour, but 4 consecutive
    assert view.consecutive_failures == 4


def test_warm_up_success_then_five_recent_failures_opens_from_the_last_failure() -> None:
    rows = attempt(ago(30), "delivered")
    rows += [row for m in range(5) for row in attempt(ago(4 - 0.5 * m), "failure")]
    view = warmed(rows).view(D)
    assert view.state is BreakerState.OPEN
    assert view.until == ago(2) + OPEN
    assert view.consecutive_failures == 5


def test_warm_up_a_breaker_whose_last_failure_was_ten_minutes_ago_is_not_open() -> None:
    rows = [row for m in range(5) for row in attempt(ago(14 - m), "failure")]
    breakers = warmed(rows)
    assert state(breakers) is BreakerState.HALF_OPEN
    assert breakers.allow(D)


def test_warm_up_never_counts_breaker_deferrals() -> None:
    rows = [row for m in range(5) for row in attempt(ago(20 - m), "failure")]
    # Deferred without connecting while it was open, right up to now.
    rows += [row for m in range(15) for row in attempt(ago(15 - m), "breaker", recipients=2)]
    breakers = warmed(rows)
    assert state(breakers) is BreakerState.HALF_OPEN  # open until 11 minutes ago
    assert breakers.view(D).consecutive_failures == 5
    breakers = warmed([row for m in range(20) for row in attempt(ago(m), "breaker")])
    assert breakers.views() == []


def test_warm_up_per_recipient_refusals_are_the_server_answering() -> None:
    rows = [row for m in range(4) for row in attempt(ago(10 - m), "failure")]
    rows += attempt(ago(5), "user_unknown", recipients=3)
    rows += [row for m in range(4) for row in attempt(ago(4 - m), "failure")]
    rows += attempt(ago(0.5), "greylisted")
    assert warmed(rows).view(D).consecutive_failures == 0


def test_warm_up_an_attempt_with_any_delivery_is_a_success() -> None:
    # One transaction: DATA accepted for two recipients, no RCPT reply for a third.
    rows = [row for m in range(4) for row in attempt(ago(10 - m), "failure")]
    mixed = attempt(ago(2), "delivered", recipients=2, attempt_id="att_mixed")
    mixed += attempt(ago(2), "failure", attempt_id="att_mixed")
    breakers = warmed(rows + mixed)
    assert breakers.view(D).consecutive_failures == 0


def test_warm_up_counts_a_transaction_level_rejection() -> None:
    rows = [row for m in range(5) for row in attempt(ago(5 - m), "rejected", recipients=2)]
    view = warmed(rows).view(D)
    assert view.state is BreakerState.OPEN
    assert view.last_error == "554 5.7.1 go away"


def test_warm_up_replays_in_time_order_whatever_the_row_order() -> None:
    rows = attempt(ago(30), "delivered")
    rows += [row for m in range(5) for row in attempt(ago(4 - 0.5 * m), "failure")]
    rows.reverse()
    assert state(warmed(rows)) is BreakerState.OPEN
    rows = [row for m in range(5) for row in attempt(ago(9 - m), "failure")]
    rows += attempt(ago(1), "delivered")
    rows.reverse()
    assert warmed(rows).view(D).consecutive_failures == 0


def test_warm_up_replays_attempts_of_one_instant_in_the_order_of_their_rows() -> None:
    """Attempts recorded at the same instant (one group commit) are replayed in the order
    their rows came: four failures, a success and a failure all at once leave one failure
    counted, and four failures after a success at that instant leave four."""
    at = ago(1)
    rows = [row for _ in range(4) for row in attempt(at, "failure")]
    rows += attempt(at, "delivered") + attempt(at, "failure")
    assert warmed(rows).view(D).consecutive_failures == 1
    rows = attempt(at, "delivered") + [row for _ in range(4) for row in attempt(at, "failure")]
    assert warmed(rows).view(D).consecutive_failures == 4


def test_warm_up_keeps_the_error_of_the_transaction_not_of_a_refused_recipient() -> None:
    """One transaction: the server refused the first recipient at RCPT (550), then failed
    the transaction at DATA (421). The breaker's last error is the 421, what a live
    breaker keeps (the transaction's error), never the one recipient's refusal."""
    rows = attempt(ago(1), "user_unknown", attempt_id="att_both")
    rows += attempt(ago(1), "failure", recipients=2, attempt_id="att_both")
    view = warmed(rows).view(D)
    assert view.consecutive_failures == 1
    assert view.last_error == "421 4.4.2 timeout"


def test_warm_up_groups_by_lower_case_destination() -> None:
    rows = [
        row
        for m in range(5)
        for row in attempt(ago(5 - m), "failure", destination=("DEST.test", "dest.TEST")[m % 2])
    ]
    assert state(warmed(rows), "Dest.Test") is BreakerState.OPEN


# -- properties ----------------------------------------------------------------------------


class BreakerMachine(RuleBasedStateMachine):
    """Random verdicts, deferrals, operator actions and time: the rules always hold.

    Jobs are tokens: each allow() that says yes puts one in flight and a later
    rule settles it. A trial is a token admitted while half-open; the breaker
    cannot tell a trial's verdict from that of a job admitted earlier (its API
    hands out no tickets), so such a stale verdict, or one of a trial older
    than the open time, may free a slot: ``credit`` counts those.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.breakers = Breakers(clock=self.clock)
        self.policy = self.breakers.policy
        self.open_for = timedelta(seconds=self.policy.open_seconds)
        self.last_failure: datetime | None = None
        self.forced_until: datetime | None = None
        self.forced_forever = False
        self.tokens: list[tuple[int, datetime]] = []
        self.period = 0
        self.was_half_open = False
        self.credit = 0

    def _state(self) -> BreakerState:
        return self.breakers.view(D).state

    def _observe(self) -> None:
        half_open = self._state() is BreakerState.HALF_OPEN
        if half_open and not self.was_half_open:
            self.period += 1
            self.credit = 0
        self.was_half_open = half_open

    @initialize()
    def start(self) -> None:
        self._observe()

    @rule(seconds=st.integers(min_value=0, max_value=700))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)
        self._observe()

    @rule(jobs=st.integers(min_value=1, max_value=4))
    def jobs_arrive(self, jobs: int) -> None:
        for _ in range(jobs):
            self._job_arrives()

    def _job_arrives(self) -> None:
        self._observe()
        before = self.breakers.view(D)
        admitted = self.breakers.allow(D)
        if before.state is BreakerState.CLOSED:
            assert admitted
        if before.state is BreakerState.OPEN:
            assert not admitted
        if admitted:
            trial = before.state is BreakerState.HALF_OPEN
            self.tokens.append((self.period if trial else 0, self.clock.now))
        else:
            assert self.breakers.view(D) == before  # a deferral changes nothing
        self._observe()

    @precondition(lambda self: bool(self.tokens))
    @rule(
        data=st.data(),
        verdict=st.sampled_from(["success", "failure", "release"]),
        jobs=st.integers(min_value=1, max_value=5),
    )
    def jobs_settle(self, data: st.DataObject, verdict: str, jobs: int) -> None:
        for _ in range(min(jobs, len(self.tokens))):
            index = data.draw(st.integers(min_value=0, max_value=len(self.tokens) - 1))
            self._job_settles(index, verdict)

    def _job_settles(self, index: int, verdict: str) -> None:
        self._observe()
        period, admitted_at = self.tokens.pop(index)
        stale = period != self.period or self.clock.now - admitted_at >= self.open_for
        if self.was_half_open and stale:
            self.credit += 1
        if verdict == "success":
            self.breakers.success(D)
        elif verdict == "failure":
            self.breakers.failure(D, "timed out")
            self.last_failure = self.clock.now
        else:
            self.breakers.release(D)
        self._observe()

    @rule(minutes=st.none() | st.integers(min_value=0, max_value=15))
    def operator_forces_open(self, minutes: int | None) -> None:
        if minutes is None:
            self.forced_forever = True
            self.breakers.force_open(D)
        else:
            self.forced_forever = False
            self.forced_until = self.clock.now + timedelta(minutes=minutes)
            self.breakers.force_open(D, self.forced_until)
        self._observe()

    @rule()
    def operator_forces_close(self) -> None:
        self.forced_forever = False
        self.breakers.force_close(D)
        assert self._state() is BreakerState.CLOSED
        self._observe()

    @precondition(lambda self: not self.forced_forever)
    @rule()
    def destination_recovers(self) -> None:
        """After the open time, two good trials close it, however it got here."""
        ends = [self.clock.now + self.open_for]
        if self.forced_until is not None:
            ends.append(self.forced_until)
        self.clock.now = max(ends)
        for _ in range(self.policy.close_after):
            assert self.breakers.allow(D)
            self.breakers.success(D)
        assert self._state() is BreakerState.CLOSED
        self._observe()

    @invariant()
    def never_open_past_the_last_failure_plus_open_time_unless_forced(self) -> None:
        if self.forced_forever or self._state() is not BreakerState.OPEN:
            return
        bounds = [self.forced_until] if self.forced_until is not None else []
        if self.last_failure is not None:
            bounds.append(self.last_failure + self.open_for)
        assert bounds
        assert self.clock.now < max(bounds)

    @invariant()
    def never_more_than_two_trials_in_flight(self) -> None:
        if self._state() is not BreakerState.HALF_OPEN:
            return
        in_flight = [
            t
            for period, t in self.tokens
            if period == self.period and self.clock.now - t < self.open_for
        ]
        assert len(in_flight) <= self.policy.half_open_trials + self.credit

    @invariant()
    def held_back_is_what_allow_would_refuse(self) -> None:
        refused = not self.breakers.admits(D)
        assert self.breakers.held_back() == ({D} if refused else set())

    @invariant()
    def closed_means_below_the_threshold(self) -> None:
        view = self.breakers.view(D)
        if view.state is BreakerState.CLOSED:
            assert view.consecutive_failures < self.policy.failure_threshold


BreakerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=60)
test_breaker_state_machine = BreakerMachine.TestCase


#: What each kind of attempt must mean to a breaker, live and replayed: the model.
MEANING = {
    "failure": Verdict.FAILURE,
    "rejected": Verdict.FAILURE,
    "delivered": Verdict.SUCCESS,
    "user_unknown": Verdict.SUCCESS,
    "greylisted": Verdict.SUCCESS,
    # Never reached the server: neither.
    "too_big": Verdict.NEUTRAL,
    "no_smtputf8": Verdict.NEUTRAL,
    "dns": Verdict.NEUTRAL,
    "breaker": Verdict.NEUTRAL,
    "waiting": Verdict.NEUTRAL,
}
#: Rows of jobs the breaker refused: never admitted, so never reported live.
WAITS = {"breaker", "waiting"}
_OUTCOMES = st.sampled_from(sorted(MEANING))


@settings(max_examples=200)
@given(
    history=st.lists(
        st.tuples(st.integers(min_value=1, max_value=240), _OUTCOMES, st.integers(1, 4)),
        max_size=40,
    ),
    tail=st.integers(min_value=0, max_value=900),
    seed=st.integers(),
)
def test_warm_up_matches_living_through_the_same_history(
    history: list[tuple[int, str, int]], tail: int, seed: int
) -> None:
    """Per attempt, not per row, in time order, waits and local refusals neither success
    nor failure: the same logic as live, which reports what the engine reports."""
    clock = FakeClock(T0 - timedelta(hours=1))
    live = Breakers(clock=clock)
    rows: list[AttemptRow] = []
    for gap, outcome, recipients in history:
        clock.advance(gap)
        made = attempt(clock.now, outcome, recipients)
        rows += made
        verdict = attempt_verdict((row.scope, row.status) for row in made)
        assert verdict is MEANING[outcome]
        if outcome in WAITS:
            continue  # refused before connecting: parked, never reported
        # Reported whatever the state now: a verdict may come late, from a transaction
        # admitted before the breaker opened.
        live.settle(D, verdict, made[-1].response)
    clock.advance(tail)
    random.Random(seed).shuffle(rows)
    restarted = Breakers(clock=clock)
    restarted.warm_up(rows)
    assert restarted.views() == live.views()
    if live.view(D).state is not BreakerState.CLOSED:
        # The same opening: a recipient told of it before the restart is not told again.
        assert restarted.waiting(D).opened_at == live.waiting(D).opened_at


# -- one definition of a failure -----------------------------------------------------------


@pytest.mark.parametrize(
    ("outcomes", "verdict"),
    [
        (["delivered"], Verdict.SUCCESS),
        (["user_unknown", "greylisted"], Verdict.SUCCESS),  # the server answered
        (["delivered", "failure"], Verdict.SUCCESS),  # anything delivered
        (["failure"], Verdict.FAILURE),
        (["rejected", "user_unknown"], Verdict.FAILURE),
        (["too_big"], Verdict.NEUTRAL),
        (["no_smtputf8"], Verdict.NEUTRAL),
        (["dns"], Verdict.NEUTRAL),
        (["waiting"], Verdict.NEUTRAL),
        ([], Verdict.NEUTRAL),
        # A row that never reached the server comes first: the rows after it still count.
        (["no_smtputf8", "failure"], Verdict.FAILURE),
        (["too_big", "delivered"], Verdict.SUCCESS),
        (["dns", "user_unknown"], Verdict.SUCCESS),
    ],
)
def test_attempt_verdict(outcomes: list[str], verdict: Verdict) -> None:
    rows = [row for outcome in outcomes for row in attempt(T0, outcome, recipients=2)]
    assert attempt_verdict((row.scope, row.status) for row in rows) is verdict


def test_local_refusals_neither_reset_nor_count_live_and_at_warm_up(clock: FakeClock) -> None:
    """Oversized messages to a failing provider: neither a success that hides its
    failures nor failures that open it (live, it was a success; at warm-up, a failure)."""
    live = Breakers(clock=clock)
    rows: list[AttemptRow] = []
    for outcome in ["failure"] * 4 + ["too_big"] * 5 + ["failure"]:
        clock.advance(10)
        made = attempt(clock.now, outcome)
        rows += made
        assert live.allow(D)
        live.settle(D, attempt_verdict((r.scope, r.status) for r in made), made[-1].response)
    assert live.view(D).state is BreakerState.OPEN  # five consecutive failures
    restarted = Breakers(clock=clock)
    restarted.warm_up(rows)
    assert restarted.views() == live.views()
    fresh = Breakers(clock=clock)
    fresh.warm_up([row for m in range(6) for row in attempt(ago(m), "too_big")])
    assert fresh.views() == []  # a restart after six big messages opens nothing


def test_a_neutral_trial_gives_its_slot_back_and_lets_parked_jobs_go(
    breakers: Breakers, clock: FakeClock
) -> None:
    trip(breakers)
    clock.advance(OPEN.total_seconds())
    assert breakers.allow(D) and breakers.allow(D) and not breakers.allow(D)
    assert breakers.settle(D, Verdict.NEUTRAL)  # a slot is free again
    assert state(breakers) is BreakerState.HALF_OPEN
    assert breakers.allow(D)
    assert not breakers.settle(D, Verdict.FAILURE, "timed out")  # open again
    assert state(breakers) is BreakerState.OPEN


def test_settle_says_when_parked_jobs_may_go(breakers: Breakers, clock: FakeClock) -> None:
    assert not breakers.settle(D, Verdict.SUCCESS)  # never tripped: nothing is parked
    trip(breakers)
    clock.advance(OPEN.total_seconds())
    assert breakers.allow(D) and breakers.allow(D)
    assert breakers.settle(D, Verdict.SUCCESS)  # a slot freed: the next trial may go
    assert breakers.settle(D, Verdict.SUCCESS)  # closed
    assert state(breakers) is BreakerState.CLOSED


def test_settle_lets_no_parked_job_go_while_an_operator_holds_the_breaker_open(
    breakers: Breakers,
) -> None:
    """A success or a neutral verdict of a transaction admitted before the operator forced
    the breaker open changes nothing: the breaker stays open, so the jobs parked behind it
    stay parked (a True would make them due, only to be refused and parked again)."""
    assert breakers.allow(D)
    breakers.force_open(D)
    assert not breakers.settle(D, Verdict.SUCCESS)
    assert not breakers.settle(D, Verdict.NEUTRAL)
    assert state(breakers) is BreakerState.OPEN


def test_waiting_names_the_opening_and_the_next_trial(breakers: Breakers, clock: FakeClock) -> None:
    fail(breakers, 4)
    opened = clock.advance(3)
    fail(breakers, 1)
    clock.advance(60)
    assert not breakers.allow(D)
    assert breakers.waiting(D) == Waiting(opened, opened + OPEN)
    clock.now = opened + OPEN  # half-open: two trials take the slots
    first = clock.now
    assert breakers.allow(D)
    clock.advance(5)
    assert breakers.allow(D)
    assert not breakers.admits(D)
    # The next trial: when the oldest slot is reclaimed, unless a verdict frees one first.
    assert breakers.waiting(D) == Waiting(opened, first + OPEN)
    failed = clock.advance(1)
    breakers.failure(D, "timed out")  # a trial failed: a new opening
    assert breakers.waiting(D) == Waiting(failed, failed + OPEN)


def test_waiting_while_forced_open_without_an_end(breakers: Breakers, clock: FakeClock) -> None:
    breakers.force_open(D)
    assert breakers.waiting(D) == Waiting(clock.now, None)


def test_waiting_of_a_breaker_that_admits_says_now(breakers: Breakers, clock: FakeClock) -> None:
    """Asked of a destination it would admit, ``waiting`` says "now": no breaker yet, a
    closed one counting failures, and a half-open one with a trial slot free (found by
    mutation testing, docs/TESTING.md)."""
    assert breakers.waiting("unknown.test") == Waiting(clock.now, clock.now)
    fail(breakers, 2)
    assert breakers.waiting(D) == Waiting(clock.now, clock.now)
    fail(breakers, 3)
    opened = clock.now
    clock.now = opened + OPEN  # half-open, both trial slots free
    assert breakers.admits(D)
    assert breakers.waiting(D) == Waiting(opened, clock.now)
    assert breakers.allow(D)  # one slot taken, one still free
    assert breakers.admits(D)
    assert breakers.waiting(D) == Waiting(opened, clock.now)


def test_a_late_failure_does_not_lengthen_an_operators_forced_period(
    breakers: Breakers, clock: FakeClock
) -> None:
    """The operator's end stands: a failure reported while forced open (a transaction
    admitted before) does not push it back, as it would an ordinary opening (found by
    mutation testing, docs/TESTING.md)."""
    end = clock.now + timedelta(minutes=1)
    breakers.force_open(D, end)
    clock.advance(30)
    breakers.failure(D, "timed out")
    assert breakers.view(D).until == end
    clock.now = end
    assert breakers.view(D).state is BreakerState.HALF_OPEN
