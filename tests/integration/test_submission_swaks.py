"""The submission port with swaks, the Swiss Army Knife for SMTP (Debian's ``swaks``):
a client that is not Python's, speaking STARTTLS and AUTH PLAIN and LOGIN the way
operators test a mail server by hand. Without swaks the test skips (fails under CI,
which installs it: ``.ci/run``)."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Awaitable, Callable

import pytest

from tests.harness import FakeMX
from tests.harness.capability import missing
from tests.harness.postline import PostlineUnderTest
from tests.harness.submission import running_submission

Factory = Callable[..., Awaitable[PostlineUnderTest]]


async def swaks(*args: str) -> tuple[int, str]:
    program = shutil.which("swaks")
    if program is None:
        missing("swaks", "install Debian's swaks package")
    process = await asyncio.create_subprocess_exec(
        program,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, out.decode(errors="replace")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_swaks_sends_with_starttls_and_an_api_key(
    postline_factory: Factory, fake_mx: FakeMX, mechanism: str
) -> None:
    pl = await postline_factory(submission_loopback_plaintext_auth=False)
    async with running_submission(pl) as listening:
        host, port = listening.starttls
        code, transcript = await swaks(
            "--server", f"{host}:{port}", "--tls", "--auth", mechanism,
            "--auth-user", "anyone", "--auth-password", pl.admin_key,
            "--from", "app@example.test", "--to", "alice@dest.test",
            "--header", "Subject: sent with swaks", "--body", "Hello from swaks.",
        )  # fmt: skip
        assert code == 0, transcript
        assert "<-  220 " in transcript and "-> STARTTLS" in transcript, transcript
        found = re.search(r"<~\s+250 2\.0\.0 .*queued as (em_\w+)", transcript)
        assert found is not None, transcript
        detail = await pl.wait_for_status(found.group(1), ["delivered"])
    assert detail["source"] == "smtp"
    assert detail["subject"] == "sent with swaks"
    (received,) = await fake_mx.wait_for_messages(1)
    assert received.rcpt_tos == ["alice@dest.test"]
    assert b"Hello from swaks." in received.data


async def test_swaks_with_a_wrong_key_is_refused_535(postline_factory: Factory) -> None:
    pl = await postline_factory(submission_loopback_plaintext_auth=False)
    async with running_submission(pl) as listening:
        host, port = listening.starttls
        code, transcript = await swaks(
            "--server", f"{host}:{port}", "--tls", "--auth", "PLAIN",
            "--auth-user", "anyone", "--auth-password", "pl_not_a_key",
            "--from", "app@example.test", "--to", "alice@dest.test",
        )  # fmt: skip
    assert code != 0
    assert re.search(r"<~\* 535 5\.7\.8 ", transcript), transcript
    listed = await pl.client.get("/v1/emails", headers=pl.auth())
    assert listed.json()["data"] == []
