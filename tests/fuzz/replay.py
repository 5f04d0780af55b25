"""The fuzz run's random seed: a new one each run, unless ``POSTLINE_FUZZ_SEED`` gives it.

Every generated request derives from it (schemathesis' per-operation seeds, the
hooks' strategies, the stateful runs), so a run that found something is replayed by
setting the variable to the seed it printed: in pytest's header when ``tests/fuzz`` is
run on its own, in the terminal summary otherwise, and on every failure (a note).
The tests share one app, so replay in the same test order too: with pytest-randomly,
pass the ``--randomly-seed`` it printed (or run with ``-p no:randomly``).
"""

from __future__ import annotations

import os
import secrets

__all__ = ["SEED", "replay_hint"]

#: From the system's randomness, not ``random``: pytest-randomly reseeds that one.
SEED = int(os.environ.get("POSTLINE_FUZZ_SEED") or secrets.randbits(32))


def replay_hint() -> str:
    return f"fuzz seed {SEED}: replay with POSTLINE_FUZZ_SEED={SEED}"
