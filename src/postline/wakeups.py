"""Who to wake when new work is written, so that waiting loops look now, not at their next poll.

The parts that write work (the acceptor: jobs and events; the recorder: events)
take a :class:`Wakeups` in their constructor and call it after each commit; the
parts that wait for work (the engine, the webhook dispatcher) are registered
with it as they are built. Neither side needs the other to exist first, which
breaks the cycle acceptor -> engine -> recorder -> acceptor (the recorder
stages DSNs through the acceptor).
"""

from __future__ import annotations

from collections.abc import Callable

Listener = Callable[[], None]


class Wakeups:
    def __init__(self) -> None:
        self._work: list[Listener] = []
        self._events: list[Listener] = []

    def on_work(self, listener: Listener) -> None:
        """Call ``listener`` when jobs were queued (a delivery engine)."""
        self._work.append(listener)

    def on_events(self, listener: Listener) -> None:
        """Call ``listener`` when events were written to the outbox (a webhook dispatcher)."""
        self._events.append(listener)

    def work_arrived(self) -> None:
        """Jobs and their events were committed (an email was accepted)."""
        for listener in self._work:
            listener()
        self.events_written()

    def events_written(self) -> None:
        """Events were committed (outcomes were recorded)."""
        for listener in self._events:
            listener()
