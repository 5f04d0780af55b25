"""``syncfs(2)``: make every write to one filesystem durable in one call.

The standard library has ``os.sync`` (every filesystem of the machine) and
``os.fsync`` (one file); Linux's ``syncfs`` is in between and is what a batch
of new files wants (postline.spool.files). Reached through ctypes from the C
library; None where there is none.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Callable


@functools.cache
def linux_syncfs() -> Callable[[int], None] | None:
    """``syncfs`` of the C library as a function raising ``OSError``; None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        if function(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return syncfs
