"""The recipient state machine and the email status derived from it (docs/API.md, "Statuses")."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postline.model import (
    EVENT_FOR_STATUS,
    FINAL_STATUSES,
    PENDING_STATUSES,
    WAITING_EMAIL_STATUSES,
    EmailStatus,
    RecipientStatus,
    allowed_sources,
    can_transition,
    derive_email_status,
)

S = RecipientStatus
E = EmailStatus

# Written out by hand from the moves of docs/API.md, "Statuses"; not derived from the code.
EXPECTED: dict[RecipientStatus, set[RecipientStatus]] = {
    S.SCHEDULED: {S.QUEUED, S.CANCELLED},
    S.QUEUED: {S.DEFERRED, S.DELIVERED, S.BOUNCED, S.FAILED, S.SUPPRESSED, S.CANCELLED},
    # suppressed while its retry waited (issue 5: checked again just before delivery)
    S.DEFERRED: {S.DEFERRED, S.DELIVERED, S.BOUNCED, S.FAILED, S.SUPPRESSED, S.CANCELLED},
    S.DELIVERED: {S.BOUNCED, S.COMPLAINED},
    S.BOUNCED: set(),
    S.FAILED: set(),
    S.SUPPRESSED: set(),
    S.COMPLAINED: set(),
    S.CANCELLED: set(),
}

ALL_PAIRS = list(itertools.product(RecipientStatus, RecipientStatus))
TERMINAL = [S.BOUNCED, S.FAILED, S.SUPPRESSED, S.COMPLAINED, S.CANCELLED]


def test_expected_table_covers_every_status() -> None:
    assert set(EXPECTED) == set(RecipientStatus)
    assert len(ALL_PAIRS) == len(RecipientStatus) ** 2 == 81


@pytest.mark.parametrize(("current", "new"), ALL_PAIRS, ids=[f"{c}->{n}" for c, n in ALL_PAIRS])
def test_can_transition_every_pair(current: RecipientStatus, new: RecipientStatus) -> None:
    assert can_transition(current, new) is (new in EXPECTED[current])


@pytest.mark.parametrize("final", TERMINAL)
def test_terminal_statuses_allow_nothing(final: RecipientStatus) -> None:
    assert not any(can_transition(final, new) for new in RecipientStatus)


@pytest.mark.parametrize("final", sorted(FINAL_STATUSES))
@pytest.mark.parametrize("late", [S.QUEUED, S.DEFERRED, S.DELIVERED, S.FAILED, S.SCHEDULED])
def test_late_or_duplicate_outcome_never_overwrites_final(
    final: RecipientStatus, late: RecipientStatus
) -> None:
    # A duplicate report of the same outcome, a stale worker's deferral or a
    # retry finishing after the end: none of them may move a final recipient.
    assert not can_transition(final, late)
    assert not can_transition(final, final)


def test_delivered_only_leaves_via_async_dsn_or_complaint() -> None:
    exits = {new for new in RecipientStatus if can_transition(S.DELIVERED, new)}
    assert exits == {S.BOUNCED, S.COMPLAINED}


def test_bounced_never_becomes_delivered_again() -> None:
    assert can_transition(S.DELIVERED, S.BOUNCED)
    assert not can_transition(S.BOUNCED, S.DELIVERED)
    assert not can_transition(S.COMPLAINED, S.DELIVERED)


def test_deferred_may_repeat_but_queued_and_scheduled_may_not() -> None:
    assert can_transition(S.DEFERRED, S.DEFERRED)
    assert not can_transition(S.QUEUED, S.QUEUED)
    assert not can_transition(S.SCHEDULED, S.SCHEDULED)


def test_nothing_moves_back_to_pending_once_attempted() -> None:
    for current in RecipientStatus:
        if current is S.SCHEDULED:
            continue
        assert not can_transition(current, S.SCHEDULED)
        assert not can_transition(current, S.QUEUED)


def test_suppressed_only_before_delivery() -> None:
    # At accept (queued), or when the address was suppressed while a retry waited.
    assert allowed_sources(S.SUPPRESSED) == {S.QUEUED, S.DEFERRED}


@pytest.mark.parametrize("new", list(RecipientStatus))
def test_allowed_sources_matches_can_transition(new: RecipientStatus) -> None:
    expected = {cur for cur in RecipientStatus if can_transition(cur, new)}
    assert allowed_sources(new) == expected
    assert allowed_sources(new) == {cur for cur, targets in EXPECTED.items() if new in targets}


def test_allowed_sources_of_entry_states() -> None:
    assert allowed_sources(S.SCHEDULED) == frozenset()
    assert allowed_sources(S.QUEUED) == {S.SCHEDULED}
    assert allowed_sources(S.CANCELLED) == {S.SCHEDULED, S.QUEUED, S.DEFERRED}
    assert allowed_sources(S.COMPLAINED) == {S.DELIVERED}


def test_final_and_pending_partition_the_statuses() -> None:
    assert set(RecipientStatus) == FINAL_STATUSES | PENDING_STATUSES
    assert not FINAL_STATUSES & PENDING_STATUSES
    assert {S.SCHEDULED, S.QUEUED, S.DEFERRED} == PENDING_STATUSES


def test_every_status_has_its_event() -> None:
    assert set(EVENT_FOR_STATUS) == set(RecipientStatus)
    for status, event in EVENT_FOR_STATUS.items():
        assert event.value == f"email.{status.value}"


DERIVE_CASES: list[tuple[list[RecipientStatus], EmailStatus]] = [
    ([S.DELIVERED], E.DELIVERED),
    ([S.DELIVERED, S.DELIVERED, S.DELIVERED], E.DELIVERED),
    ([S.DELIVERED, S.COMPLAINED], E.DELIVERED),
    ([S.COMPLAINED], E.DELIVERED),
    ([S.DELIVERED, S.BOUNCED], E.PARTIALLY_DELIVERED),
    ([S.DELIVERED, S.FAILED], E.PARTIALLY_DELIVERED),
    ([S.DELIVERED, S.SUPPRESSED], E.PARTIALLY_DELIVERED),
    ([S.DELIVERED, S.CANCELLED], E.PARTIALLY_DELIVERED),
    ([S.COMPLAINED, S.BOUNCED], E.PARTIALLY_DELIVERED),
    ([S.BOUNCED], E.BOUNCED),
    ([S.BOUNCED, S.BOUNCED], E.BOUNCED),
    ([S.BOUNCED, S.FAILED], E.BOUNCED),
    ([S.BOUNCED, S.SUPPRESSED], E.BOUNCED),
    ([S.BOUNCED, S.CANCELLED], E.BOUNCED),
    ([S.FAILED], E.FAILED),
    ([S.FAILED, S.FAILED], E.FAILED),
    ([S.FAILED, S.SUPPRESSED], E.FAILED),
    ([S.FAILED, S.CANCELLED], E.FAILED),
    ([S.QUEUED], E.QUEUED),
    ([S.QUEUED, S.QUEUED], E.QUEUED),
    ([S.SCHEDULED], E.SCHEDULED),
    ([S.SCHEDULED, S.SCHEDULED], E.SCHEDULED),
    ([S.SCHEDULED, S.QUEUED], E.QUEUED),
    # Waiting for a retry reads "deferred", whatever the other recipients do.
    ([S.DEFERRED], E.DEFERRED),
    ([S.QUEUED, S.DEFERRED], E.DEFERRED),
    ([S.SCHEDULED, S.DEFERRED], E.DEFERRED),
    ([S.DEFERRED, S.SUPPRESSED], E.DEFERRED),
    ([S.DELIVERED, S.DEFERRED], E.DEFERRED),
    ([S.BOUNCED, S.DEFERRED], E.DEFERRED),
    ([S.DELIVERED, S.QUEUED, S.DEFERRED], E.DEFERRED),
    # Another destination domain still waiting for its first attempt.
    ([S.DELIVERED, S.QUEUED], E.SENDING),
    ([S.BOUNCED, S.QUEUED], E.SENDING),
    ([S.FAILED, S.SCHEDULED], E.SENDING),
    ([S.SUPPRESSED], E.SUPPRESSED),
    ([S.SUPPRESSED, S.SUPPRESSED], E.SUPPRESSED),
    ([S.CANCELLED], E.CANCELLED),
    ([S.CANCELLED, S.CANCELLED], E.CANCELLED),
    # Suppressed at accept, the rest not yet attempted: still queued.
    ([S.QUEUED, S.SUPPRESSED], E.QUEUED),
    ([S.QUEUED, S.CANCELLED], E.QUEUED),
    ([S.SCHEDULED, S.SUPPRESSED], E.SCHEDULED),
    # Nothing was or will be sent: cancellation is the user's act and wins.
    ([S.SUPPRESSED, S.CANCELLED], E.CANCELLED),
]


@pytest.mark.parametrize(
    ("statuses", "expected"),
    DERIVE_CASES,
    ids=["+".join(s.value for s in statuses) for statuses, _ in DERIVE_CASES],
)
def test_derive_email_status(statuses: list[RecipientStatus], expected: EmailStatus) -> None:
    assert derive_email_status(statuses) is expected
    assert derive_email_status(reversed(statuses)) is expected


def test_derive_email_status_accepts_any_iterable() -> None:
    assert derive_email_status(iter([S.DELIVERED, S.BOUNCED])) is E.PARTIALLY_DELIVERED
    assert derive_email_status(s for s in (S.FAILED,)) is E.FAILED


def test_derive_email_status_without_recipients_is_queued() -> None:
    assert derive_email_status([]) is E.QUEUED


statuses_lists = st.lists(st.sampled_from(list(RecipientStatus)), min_size=1, max_size=12)


@given(statuses_lists)
def test_derive_is_valid_and_delivered_iff_all_delivered(statuses: list[RecipientStatus]) -> None:
    result = derive_email_status(statuses)
    assert isinstance(result, EmailStatus)
    all_delivered = all(s in (S.DELIVERED, S.COMPLAINED) for s in statuses)
    assert (result is E.DELIVERED) == all_delivered


@given(statuses_lists)
def test_derive_pending_and_final_statuses(statuses: list[RecipientStatus]) -> None:
    result = derive_email_status(statuses)
    present = set(statuses)
    if present & PENDING_STATUSES:
        # While anything is still to be attempted the email is not finished.
        assert result in WAITING_EMAIL_STATUSES
    else:
        assert result not in WAITING_EMAIL_STATUSES
    # "deferred" says exactly that some recipient waits for a retry.
    assert (result is E.DEFERRED) == (S.DEFERRED in present)
    if result is E.PARTIALLY_DELIVERED:
        assert present & {S.DELIVERED, S.COMPLAINED}
        assert present - {S.DELIVERED, S.COMPLAINED}
    if result is E.BOUNCED:
        assert S.BOUNCED in present
        assert not present & {S.DELIVERED, S.COMPLAINED}
    if result in (E.SUPPRESSED, E.CANCELLED):
        assert present <= {S.SUPPRESSED, S.CANCELLED}


@given(statuses_lists, st.randoms(use_true_random=False))
def test_derive_ignores_order_and_duplicates(
    statuses: list[RecipientStatus], rnd: random.Random
) -> None:
    shuffled = list(statuses)
    rnd.shuffle(shuffled)
    assert derive_email_status(shuffled) is derive_email_status(set(statuses))


@given(statuses_lists)
def test_an_email_waits_iff_one_of_its_recipients_is_pending(
    statuses: list[RecipientStatus],
) -> None:
    """Job recovery and orphan cleanup select emails by WAITING_EMAIL_STATUSES: it must
    name exactly the emails some recipient of which is still pending."""
    waiting = derive_email_status(statuses) in WAITING_EMAIL_STATUSES
    assert waiting == bool(set(statuses) & PENDING_STATUSES)
