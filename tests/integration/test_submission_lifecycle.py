"""The submission port starts and stops with the processes that accept mail (``serve``,
``api``): run by the real supervisor, on free loopback ports."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from postline.cli import submission_lines
from postline.config import ConfigError
from postline.supervisor import serve
from tests.harness.postline import PostlineUnderTest
from tests.harness.postline import test_settings as settings_in
from tests.harness.submission import RawSession

Factory = Callable[..., Awaitable[PostlineUnderTest]]
DEADLINE = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_serve_opens_the_port_and_shutdown_says_421_and_closes_it(
    postline_factory: Factory,
) -> None:
    smtp = free_port()
    pl = await postline_factory(
        engine=False, http_addr=f"127.0.0.1:{free_port()}", smtp_addr=f"127.0.0.1:{smtp}"
    )
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(pl.services, engine=False, ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), DEADLINE)
    raw = await RawSession.open(("127.0.0.1", smtp))
    try:
        assert (await raw.command("EHLO app.example.test")).startswith("250-")
        stop.set()
        assert (await raw.reply()).startswith("421 4.3.2")
        assert await raw.closed()
    finally:
        await raw.close()
    await asyncio.wait_for(task, DEADLINE)
    with pytest.raises(OSError):
        await RawSession.open(("127.0.0.1", smtp))


async def test_a_taken_submission_port_is_one_config_error(postline_factory: Factory) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        pl = await postline_factory(
            engine=False, http_addr=f"127.0.0.1:{free_port()}", smtp_addr=f"127.0.0.1:{port}"
        )
        with pytest.raises(ConfigError, match=f"POSTLINE_SMTP_ADDR 127.0.0.1:{port}: cannot"):
            await asyncio.wait_for(serve(pl.services, engine=False), DEADLINE)


def test_the_start_lines_say_where_and_that_the_certificate_is_self_signed(
    tmp_path: Path,
) -> None:
    lines = submission_lines(settings_in(tmp_path, smtp_addr="127.0.0.1:2587"))
    assert lines[0].startswith("SMTP submission: 127.0.0.1:2587 (STARTTLS)")
    assert "self-signed" in lines[1] and str(tmp_path / "smtp-tls.pem") in lines[1]
    own = settings_in(
        tmp_path,
        submission_tls_addr="127.0.0.1:2465",
        submission_tls_cert="/etc/ssl/mail.pem",
        submission_tls_key="/etc/ssl/mail.key",
    )
    (only,) = submission_lines(own)
    assert "implicit TLS on 127.0.0.1:2465" in only
