"""The harness's teardown fails a test whose engine or dispatcher crashed, hung or
connected off loopback, even when the test never stops them itself.

A test can pass while the engine dies in the background: nothing awaits the
engine's task but the teardown. So these run small tests in a pytest of their
own, and look at how that run ended.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

INNER = """
import asyncio

import tests.harness.postline as harness
from tests.conftest import *  # noqa: F403 - the fixtures: postline_factory, fake_mx...

harness.STOP_SECONDS = 2.0  # the hung engine: not 30 s of waiting


async def crash(stop: asyncio.Event) -> None:
    raise RuntimeError("boom: the engine fell over")


async def hang(stop: asyncio.Event) -> None:
    await asyncio.Event().wait()  # ignores stop


async def test_a_healthy_engine(postline_factory):
    pl = await postline_factory()
    sent = await pl.send(to="fine@dest.test")
    await pl.wait_until_final(sent["id"])


async def test_engine_crashes(postline_factory):
    pl = await postline_factory(engine=False)
    pl.services.engine.run = crash
    pl.start_engine()
    await asyncio.sleep(0)  # the test itself passes


async def test_dispatcher_crashes(postline_factory):
    pl = await postline_factory(engine=False)
    pl.services.dispatcher.run = crash
    pl.start_engine()


async def test_engine_hangs(postline_factory):
    pl = await postline_factory(engine=False)
    pl.services.engine.run = hang
    pl.start_engine()


async def test_webhook_off_loopback(postline_factory):
    pl = await postline_factory()
    pl.transport.violations.append("http://192.0.2.1/hook")
"""


def test_teardown_fails_tests_that_broke_the_engine(tmp_path: Path) -> None:
    inner = tmp_path / "test_inner.py"
    inner.write_text(textwrap.dedent(INNER))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTLINE_", "PYTEST_"))}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(ROOT),
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rA",
            str(inner),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 1, output  # tests failed, not an internal error
    outcomes = dict(
        (name, outcome)
        for outcome, name in re.findall(r"^(PASSED|ERROR|FAILED) \S*::(\w+)", output, re.M)
    )
    assert outcomes == {
        "test_a_healthy_engine": "PASSED",
        "test_engine_crashes": "ERROR",
        "test_dispatcher_crashes": "ERROR",
        "test_engine_hangs": "ERROR",
        "test_webhook_off_loopback": "ERROR",
    }, output
    assert "the engine crashed: RuntimeError('boom: the engine fell over')" in output
    assert "the webhook dispatcher crashed" in output
    assert "the engine did not stop within 2 s" in output
    assert "webhooks sent off loopback: ['http://192.0.2.1/hook']" in output
