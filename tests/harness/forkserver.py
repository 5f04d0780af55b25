"""Let a test process forked from another use multiprocessing's forkserver.

The compose pool starts its workers from a ``forkserver`` (postline/compose.py), whose
process id and socket multiprocessing keeps in module state. mutmut runs each mutant's
tests in a process forked from the one that ran the clean tests: that copy still names
the parent's forkserver, which is not its child, and every compose then fails with
``ChildProcessError`` — so every test that sends mail "killed" every mutant. Forgetting
the inherited forkserver makes the forked process start its own, as a fresh one would.
"""

from __future__ import annotations

import os
from multiprocessing import forkserver
from typing import Any


def forget_inherited_forkserver() -> None:
    """Drop the forkserver state copied from a parent process, if there is any."""
    server: Any = forkserver._forkserver  # private: no public way to reset it
    pid = server._forkserver_pid
    if pid is None:
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # the parent's forkserver, not ours
        server._forkserver_pid = None
        server._forkserver_address = None
        server._forkserver_alive_fd = None
