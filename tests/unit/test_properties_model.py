"""Properties of the recipient state machine, driven by random sequences of outcomes.

test_model.py checks every (from, to) pair of ``can_transition`` against a
table written by hand. Here a Hypothesis state machine plays whole lives of the
recipients of one email: random outcomes, late and duplicate reports, stale
workers. It checks what the table is for: a final status absorbs everything but
the two documented exits of ``delivered``, the store's SQL guard
(``allowed_sources``) agrees with the check, every accepted move yields exactly
one event, and the derived email status follows its recipients.
"""

from __future__ import annotations

import re

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from postline.model import (
    EVENT_FOR_STATUS,
    FINAL_STATUSES,
    PENDING_STATUSES,
    WAITING_EMAIL_STATUSES,
    EmailStatus,
    EventType,
    RecipientStatus,
    allowed_sources,
    can_transition,
    derive_email_status,
)

S = RecipientStatus
STATUSES = st.sampled_from(list(RecipientStatus))

# The recipient state machine (docs/API.md, "Statuses") as a regular language over the path of one
# recipient: scheduled -> queued -> deferred* -> delivered | bounced | failed; queued ->
# suppressed (also after a deferral: suppressed while the retry waited); cancelled
# before any delivery; delivered -> bounced (late DSN) | complained (feedback report).
_LETTER = {
    S.SCHEDULED: "s",
    S.QUEUED: "q",
    S.DEFERRED: "d",
    S.DELIVERED: "D",
    S.BOUNCED: "B",
    S.FAILED: "F",
    S.SUPPRESSED: "S",
    S.COMPLAINED: "C",
    S.CANCELLED: "X",
}
DESIGN_PATHS = re.compile(r"^(sX?|s?qd*(D[BC]?|B|F|S|X)?)$")


def path_word(path: list[RecipientStatus]) -> str:
    return "".join(_LETTER[status] for status in path)


class Recipients(RuleBasedStateMachine):
    """The recipients of one email, moved only through ``can_transition``, as outcomes.py does."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[list[RecipientStatus]] = []
        self.events: list[list[EventType]] = []
        self.refused_from_final = 0

    @initialize(
        scheduled=st.lists(st.booleans(), min_size=1, max_size=4),
    )
    def accept(self, scheduled: list[bool]) -> None:
        # At accept each recipient is scheduled (scheduled_at in the future) or queued.
        for later in scheduled:
            first = S.SCHEDULED if later else S.QUEUED
            self.paths.append([first])
            self.events.append([EVENT_FOR_STATUS[first]])

    def status(self, index: int) -> RecipientStatus:
        return self.paths[index % len(self.paths)][-1]

    def move(self, index: int, new: RecipientStatus) -> bool:
        """The one guarded write: the check in Python and the WHERE clause of the store agree."""
        index %= len(self.paths)
        current = self.paths[index][-1]
        allowed = can_transition(current, new)
        assert allowed == (current in allowed_sources(new))
        if allowed:
            self.paths[index].append(new)
            self.events[index].append(EVENT_FOR_STATUS[new])
        return allowed

    @rule(index=st.integers(0, 3), new=STATUSES)
    def outcome(self, index: int, new: RecipientStatus) -> None:
        before = self.status(index)
        accepted = self.move(index, new)
        if before in FINAL_STATUSES and before is not S.DELIVERED:
            assert not accepted, f"{before} is final, yet moved to {new}"
        if before is S.DELIVERED and accepted:
            assert new in (S.BOUNCED, S.COMPLAINED)

    @rule(index=st.integers(0, 3))
    def duplicate_report(self, index: int) -> None:
        # The same outcome reported twice (a retried webhook, a replayed job): only a
        # further deferral is a new state; any other repeat is refused.
        current = self.status(index)
        assert self.move(index, current) is (current is S.DEFERRED)

    @precondition(lambda self: any(len(path) > 2 for path in self.paths))
    @rule(index=st.integers(0, 3), back=st.integers(1, 8))
    def stale_worker(self, index: int, back: int) -> None:
        # A worker that read an older status reports that status again: it must never
        # undo a later move (only deferred -> deferred repeats).
        path = self.paths[index % len(self.paths)]
        old = path[max(0, len(path) - 1 - back)]
        current = path[-1]
        if current in FINAL_STATUSES and current is not S.DELIVERED:
            assert not self.move(index, old)
        elif old in PENDING_STATUSES and old is not S.DEFERRED:
            assert not self.move(index, old), f"{current} went back to {old}"

    @invariant()
    def every_path_is_a_documented_one(self) -> None:
        for path in self.paths:
            assert DESIGN_PATHS.match(path_word(path)), path

    @invariant()
    def one_event_per_status_change(self) -> None:
        for path, events in zip(self.paths, self.events, strict=True):
            assert events == [EVENT_FOR_STATUS[status] for status in path]

    @invariant()
    def at_most_one_exit_from_a_final_status(self) -> None:
        for path in self.paths:
            finals = [i for i, status in enumerate(path) if status in FINAL_STATUSES]
            assert len(finals) <= 2
            if len(finals) == 2:
                assert path[finals[0]] is S.DELIVERED
                assert path[finals[1]] in (S.BOUNCED, S.COMPLAINED)
                assert finals[1] == len(path) - 1

    @invariant()
    def email_status_follows_recipients(self) -> None:
        current = [path[-1] for path in self.paths]
        email = derive_email_status(current)
        pending = [status for status in current if status in PENDING_STATUSES]
        assert (email in WAITING_EMAIL_STATUSES) == bool(pending)
        assert (email is EmailStatus.DEFERRED) == (S.DEFERRED in current)
        if all(status in (S.DELIVERED, S.COMPLAINED) for status in current):
            assert email is EmailStatus.DELIVERED
        if email is EmailStatus.DELIVERED:
            assert set(current) <= {S.DELIVERED, S.COMPLAINED}


Recipients.TestCase.settings = settings(
    max_examples=200, stateful_step_count=30, derandomize=True, deadline=None
)
TestRecipients = Recipients.TestCase


def test_design_paths_pattern_is_the_table() -> None:
    # The regular language above and can_transition describe the same paths, up to
    # length 8 (long enough for every state, the deferral loop and a late exit).
    frontier = [[S.SCHEDULED], [S.QUEUED]]
    seen: set[RecipientStatus] = set()
    for _ in range(8):
        nxt = []
        for path in frontier:
            assert DESIGN_PATHS.match(path_word(path)), path
            seen.update(path)
            for new in RecipientStatus:
                grown = [*path, new]
                legal = can_transition(path[-1], new)
                assert legal == bool(DESIGN_PATHS.match(path_word(grown))), grown
                if legal:
                    nxt.append(grown)
        frontier = nxt
    assert seen == set(RecipientStatus)


def test_every_status_is_reachable_from_accept() -> None:
    reached = {S.SCHEDULED, S.QUEUED}
    while True:
        more = {new for cur in reached for new in RecipientStatus if can_transition(cur, new)}
        if more <= reached:
            break
        reached |= more
    assert reached == set(RecipientStatus)
