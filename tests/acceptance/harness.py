"""The real ``postline`` command as a subprocess: environments, CLI runs and long-running
``serve``, ``api`` and ``worker`` processes.

Each :class:`Install` is one operator's machine: its own data dir, its own loopback
ports and an environment without any ``POSTLINE_*`` variable inherited from the caller.
:class:`Server` wraps a running ``postline serve`` (or ``api``, or ``worker``): its stdout
and stderr are drained in background tasks (so the pipes never fill) and shown in every
assertion message. :class:`RedisServer` is a private, diskless ``redis-server`` a test can
stop and start again empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

POSTLINE = Path(sys.executable).parent / "postline"
CLI_TIMEOUT = 60.0
#: POSTLINE_SECRET_KEY of the processes of one shared database (shared_env).
SHARED_SECRET_KEY = "c2NhbGUtb3V0LXRlc3RzLXNoYXJlZC1zZWNyZXRrZXk="
FINAL = {"delivered", "bounced", "failed", "suppressed", "cancelled", "complained"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**values: str) -> dict[str, str]:
    """The caller's environment without POSTLINE_* variables, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTLINE_")}
    env.update(values)
    return env


def shared_env(database_url: str, queue_url: str, queue_prefix: str) -> dict[str, str]:
    """The settings every process of a scale-out deployment shares: one PostgreSQL
    database, one Redis queue (under its own key prefix) and the database spool, so that
    any worker can deliver what any API process accepted, and one secret key: a key
    file per host would seal with keys the other hosts do not have."""
    return {
        "POSTLINE_SECRET_KEY": SHARED_SECRET_KEY,
        "POSTLINE_DATABASE_URL": database_url,
        "POSTLINE_QUEUE_URL": queue_url,
        "POSTLINE_QUEUE_PREFIX": queue_prefix,
        "POSTLINE_SPOOL_URL": "database",
    }


@dataclass(frozen=True)
class CliResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (
            f"$ postline {' '.join(self.args)}\nexit code {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"
        )

    @property
    def stdout_lines(self) -> list[str]:
        return self.stdout.splitlines()

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def assert_ok(self) -> CliResult:
        assert self.returncode == 0, self.describe()
        assert "Traceback" not in self.stderr, self.describe()
        return self

    def assert_one_line_failure(self, code: int, *fragments: str) -> str:
        """Exit ``code``, exactly one ``postline: ...`` line on stderr, no traceback."""
        assert self.returncode == code, self.describe()
        assert "Traceback" not in self.stderr + self.stdout, self.describe()
        lines = self.stderr_lines
        assert len(lines) == 1, self.describe()
        assert lines[0].startswith("postline: "), self.describe()
        for fragment in fragments:
            assert fragment in lines[0], f"{fragment!r} not in the message\n{self.describe()}"
        return lines[0]


def run_cli(
    *args: str, env: Mapping[str, str], cwd: Path | None = None, timeout: float = CLI_TIMEOUT
) -> CliResult:
    """Run ``postline ARGS`` with exactly ``env``, in ``cwd`` (blocking)."""
    done = subprocess.run(
        [str(POSTLINE), *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return CliResult(tuple(args), done.returncode, done.stdout, done.stderr)


@dataclass
class Install:
    """One data dir and its ports; runs the real ``postline`` command against them."""

    data_dir: Path
    http_port: int = field(default_factory=free_port)
    smtp_port: int = field(default_factory=free_port)
    inbound_port: int = field(default_factory=free_port)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def admin_key_file(self) -> Path:
        return self.data_dir / "admin-key.txt"

    def env(self, **overrides: str) -> dict[str, str]:
        values = {
            "POSTLINE_DATA_DIR": str(self.data_dir),
            "POSTLINE_HTTP_ADDR": f"127.0.0.1:{self.http_port}",
            "POSTLINE_SMTP_ADDR": f"127.0.0.1:{self.smtp_port}",
            "POSTLINE_INBOUND_ADDR": f"127.0.0.1:{self.inbound_port}",
            "POSTLINE_HOSTNAME": "postline.acceptance.test",
            "POSTLINE_POLL_INTERVAL": "0.1",
            # The fake MXs listen on loopback, which production refuses to deliver to.
            "POSTLINE_DELIVERY_ALLOW_PRIVATE": "true",
        }
        values.update(self.extra)
        values.update(overrides)
        return clean_env(**values)

    def cli(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = CLI_TIMEOUT
    ) -> CliResult:
        """Run ``postline ARGS`` to completion (blocking: not while a FakeMX is serving)."""
        return run_cli(*args, env=self.env(**(env or {})), timeout=timeout)

    async def acli(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = CLI_TIMEOUT
    ) -> CliResult:
        """Run ``postline ARGS`` to completion without blocking the event loop."""
        proc = await asyncio.create_subprocess_exec(
            str(POSTLINE),
            *args,
            env=self.env(**(env or {})),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode is not None
        return CliResult(tuple(args), proc.returncode, out.decode(), err.decode())


class Server:
    """A running ``postline serve`` (or any long-running postline command)."""

    def __init__(self, install: Install, proc: asyncio.subprocess.Process, args: tuple[str, ...]):
        self.install = install
        self.proc = proc
        self.args = args
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = asyncio.Event()
        self._eof = 0
        assert proc.stdout is not None and proc.stderr is not None
        self._drains = [
            asyncio.create_task(self._drain(proc.stdout, self.stdout)),
            asyncio.create_task(self._drain(proc.stderr, self.stderr)),
        ]
        self.client = httpx.AsyncClient(
            base_url=install.base_url,
            timeout=10.0,
            headers={"Accept": "application/problem+json"},  # as tests/harness/postline.py
        )

    @classmethod
    async def start(cls, install: Install, *args: str, **env: str) -> Server:
        argv = args or ("serve",)
        proc = await asyncio.create_subprocess_exec(
            str(POSTLINE),
            *argv,
            env=install.env(**env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(install, proc, argv)

    async def _drain(self, stream: asyncio.StreamReader, sink: list[str]) -> None:
        try:
            while line := await stream.readline():
                sink.append(line.decode(errors="replace").rstrip("\r\n"))
                self._changed.set()
        finally:
            self._eof += 1
            self._changed.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def describe(self) -> str:
        return (
            f"$ postline {' '.join(self.args)} (pid {self.pid}, "
            f"exit code {self.proc.returncode})\n"
            "--- stdout ---\n"
            + "\n".join(self.stdout)
            + "\n--- stderr ---\n"
            + "\n".join(self.stderr[-200:])
        )

    async def wait_for_line(
        self, pattern: str, *, stream: str = "stdout", timeout: float = 20.0
    ) -> re.Match[str]:
        """The first line of ``stream`` matching ``pattern``; fail if the process ends first."""
        regex = re.compile(pattern)
        lines = self.stdout if stream == "stdout" else self.stderr
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for line in lines:
                if match := regex.search(line):
                    return match
            if self._eof == 2:
                raise AssertionError(f"{stream} ended without {pattern!r}\n{self.describe()}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"no {stream} line matching {pattern!r} within {timeout:g}s\n{self.describe()}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.5))

    async def wait_healthy(self, timeout: float = 20.0) -> None:
        """Poll GET /healthz until it answers 200 (fail at once if the process exits)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: object = None
        while True:
            if not self.running:
                await self.wait_closed()
                raise AssertionError(f"the server exited before it was healthy\n{self.describe()}")
            try:
                response = await self.client.get("/healthz", timeout=2.0)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text}"
            except httpx.TransportError as exc:
                last = repr(exc)
            if loop.time() > deadline:
                raise AssertionError(
                    f"/healthz not OK within {timeout:g}s (last: {last})\n{self.describe()}"
                )
            await asyncio.sleep(0.05)

    async def ready(self, timeout: float = 20.0) -> None:
        """Healthy, and the startup banner is out (the admin key is written before it)."""
        await self.wait_healthy(timeout)
        await self.wait_for_line(r"^Postline is running\.", timeout=timeout)

    async def worker_ready(self, timeout: float = 20.0) -> str:
        """A ``postline worker`` is up (banner out, engine leasing); return its lease owner.

        The owner is the name its engine writes on every job it leases, which is how a
        test tells which jobs a worker held when it died.
        """
        await self.wait_for_line(r"^Postline worker is running: ", timeout=timeout)
        match = await self.wait_for_line(
            r"engine started owner=(\S+)", stream="stderr", timeout=timeout
        )
        return match.group(1)

    async def admin_key(self, timeout: float = 20.0) -> str:
        """The admin key ``serve`` prints on its first run."""
        await self.wait_for_line(r"^Admin API key \(shown once", timeout=timeout)
        match = await self.wait_for_line(r"^(pl_[A-Za-z0-9_-]+)$", timeout=timeout)
        return match.group(1)

    def signal(self, signum: signal.Signals) -> None:
        if self.running:
            self.proc.send_signal(signum)

    async def wait_exit(self, timeout: float) -> int:
        """The exit code; fail (and kill the process) if it does not end within ``timeout``."""
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()
            raise AssertionError(
                f"still running {timeout:g}s later (killed)\n{self.describe()}"
            ) from None
        await self.wait_closed()
        return code

    async def wait_closed(self) -> None:
        """Wait (bounded) for the output pipes to be read to the end."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._drains), timeout=5.0)

    async def kill(self) -> None:
        """SIGKILL (if still running) and reap; never raises."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), timeout=10.0)
        await self.wait_closed()

    async def aclose(self) -> None:
        await self.kill()
        for task in self._drains:
            task.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)
        await self.client.aclose()

    # ------------------------------------------------------------------ API helpers

    async def send(self, key: str, **body: Any) -> dict[str, Any]:
        """POST /v1/emails and insist on a 202."""
        body.setdefault("from", "Sender <sender@example.test>")
        body.setdefault("subject", "Hello")
        body.setdefault("text", "Hello from the acceptance tests")
        response = await self.client.post("/v1/emails", json=body, headers=auth(key))
        assert response.status_code == 202, f"{response.status_code} {response.text}"
        result: dict[str, Any] = response.json()
        return result

    async def send_batch(self, key: str, emails: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """POST /v1/emails/batch and insist on a 202; the accepted emails, in order."""
        bodies = []
        for email in emails:
            body = dict(email)
            body.setdefault("from", "Sender <sender@example.test>")
            body.setdefault("subject", "Hello")
            body.setdefault("text", "Hello from the acceptance tests")
            bodies.append(body)
        response = await self.client.post("/v1/emails/batch", json=bodies, headers=auth(key))
        assert response.status_code == 202, f"{response.status_code} {response.text}"
        data: list[dict[str, Any]] = response.json()["data"]
        assert len(data) == len(bodies), data
        return data

    async def list_emails(self, key: str) -> list[dict[str, Any]]:
        """Every email of the send log (GET /v1/emails, page by page)."""
        items: list[dict[str, Any]] = []
        params: dict[str, str | int] = {"limit": 500}
        while True:
            response = await self.client.get("/v1/emails", params=params, headers=auth(key))
            assert response.status_code == 200, f"{response.status_code} {response.text}"
            page = response.json()
            items.extend(page["data"])
            if not page["next_cursor"]:
                return items
            params["cursor"] = page["next_cursor"]

    async def email(self, key: str, email_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/emails/{email_id}", headers=auth(key))
        assert response.status_code == 200, f"{response.status_code} {response.text}"
        result: dict[str, Any] = response.json()
        return result

    async def wait_email(
        self,
        key: str,
        email_id: str,
        predicate: Callable[[dict[str, Any]], bool],
        *,
        what: str,
        timeout: float = 20.0,
    ) -> dict[str, Any]:
        """Poll GET /v1/emails/{id} until ``predicate`` holds, with a deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if not self.running:
                await self.wait_closed()
                raise AssertionError(
                    f"the server exited while waiting for {what}\n{self.describe()}"
                )
            detail = await self.email(key, email_id)
            if predicate(detail):
                return detail
            if loop.time() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:g}s waiting for {what}: {detail}\n{self.describe()}"
                )
            await asyncio.sleep(0.1)

    async def wait_status(
        self, key: str, email_id: str, status: str, *, timeout: float = 20.0
    ) -> dict[str, Any]:
        return await self.wait_email(
            key,
            email_id,
            lambda d: d["status"] == status,
            what=f"status {status!r}",
            timeout=timeout,
        )


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class RedisServer:
    """A private ``redis-server`` on a loopback port that keeps nothing on disk.

    Stopped and started again on the same port it comes back empty, like a Redis
    that lost its memory: every queued job is gone and must be rebuilt from the database.
    """

    def __init__(self, workdir: Path, port: int | None = None, binary: str = "redis-server"):
        self.workdir = workdir
        self.port = port or free_port()
        self.binary = binary
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def start(self, timeout: float = 10.0) -> None:
        """Start it and wait (polling PING, with a deadline) until it answers."""
        assert not self.running, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with (self.workdir / "redis.log").open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
        try:
            while True:
                if not self.running:
                    raise AssertionError(f"redis-server exited at start\n{self.log()}")
                try:
                    if await client.ping():
                        return
                except (OSError, aioredis.RedisError):
                    pass
                if loop.time() > deadline:
                    raise AssertionError(f"no PONG within {timeout:g}s\n{self.log()}")
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait for the exit (a clean shutdown that saves nothing)."""
        assert self.proc is not None and self.running, "not running"
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.aclose()
            raise AssertionError(f"redis-server ignored SIGTERM for {timeout:g}s") from None

    async def aclose(self) -> None:
        """SIGKILL (if still running) and reap; never raises."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), timeout=10.0)
