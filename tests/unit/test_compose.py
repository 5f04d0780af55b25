"""The compose pool (``postline.compose``): real worker processes, not a stand-in."""

from __future__ import annotations

import functools
import os
import time
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime

import pytest

from postline.compose import Composition, Signer, compose, new_pool
from postline.domains import _generate_dkim_key
from postline.message import Content


def test_a_message_is_built_and_signed_in_a_worker_process() -> None:
    pool = new_pool(1)
    try:
        item = Composition(
            Content(from_name="", from_address="a@example.test", to=["b@dest.test"], text="hi"),
            "<m@example.test>",
            datetime(2026, 1, 2, tzinfo=UTC),
            signer=Signer("example.test", "sel", _generate_dkim_key()),
        )
        body = pool.submit(compose, item).result(timeout=120)
        assert body.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
        assert b"d=example.test" in body and b"s=sel" in body
        assert b"Message-ID: <m@example.test>" in body
    finally:
        pool.shutdown()


def test_the_pool_starts_afresh_after_a_worker_dies() -> None:
    """One lost worker fails what it ran, not all the mail after it."""
    pool = new_pool(1)
    try:
        with pytest.raises(BrokenProcessPool):
            pool.submit(functools.partial(os._exit, 1)).result(timeout=120)
        assert pool.submit(abs, -3).result(timeout=120) == 3
    finally:
        pool.shutdown()


def test_start_starts_every_worker_before_anything_is_composed() -> None:
    """Workers start on demand otherwise: the first email waited for the forkserver."""
    pool = new_pool(2)
    try:
        assert pool.running == 0
        pool.start()
        deadline = time.monotonic() + 120
        while pool.running < 2:
            assert time.monotonic() < deadline, f"{pool.running} of 2 workers started"
            time.sleep(0.05)
        assert pool.submit(abs, -3).result(timeout=120) == 3
    finally:
        pool.shutdown()


def test_the_pool_has_a_worker_for_each_core_the_process_may_use() -> None:
    """Not one fewer: with one worker on two cores a batch of 500 was built one chunk
    after another while the loop waited (docs/PERFORMANCE.md, "Stop 40")."""
    pool = new_pool()
    try:
        assert pool.workers == len(os.sched_getaffinity(0))
    finally:
        pool.shutdown()
