"""``postline serve`` delivers in a child process and sends webhooks from another
(POSTLINE_DELIVERY_PROCESS, on by default): each child is woken by the commits that
concern it, counts into the parent's ``/metrics``, is started again when it dies alone,
and dies with the parent.

Real processes, a FakeMX found through FakeDNS, every setting but the MX's address at
its default.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

from tests.acceptance.conftest import Launcher
from tests.acceptance.harness import Install, Server, auth
from tests.acceptance.test_serve import add_domain, only_recipient, route_to
from tests.harness.fake_dns import FakeDNS
from tests.harness.fake_mx import FakeMX
from tests.harness.receiver import WebhookReceiver

EXIT_BOUND = 60.0


def delivery_children(parent: int, command: bytes = b"delivery-process") -> list[int]:
    """Pids of ``parent``'s children running ``postline delivery-process`` (or
    ``command``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == parent and command in argv:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


async def poll(what: str, check: object, timeout: float = 30.0) -> None:
    """Wait until ``check()`` is true, with a deadline."""
    assert callable(check)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def the_child(
    server: Server, timeout: float = 30.0, command: bytes = b"delivery-process"
) -> int:
    children: list[int] = []

    def found() -> bool:
        children[:] = delivery_children(server.pid, command)
        return len(children) == 1

    await poll(f"one {command.decode()} under {server.pid}", found, timeout)
    return children[0]


async def started(
    install: Install, launch: Launcher, fake_dns: FakeDNS, fake_mx: FakeMX, **env: str
) -> tuple[Server, str]:
    route_to(fake_dns, fake_mx)
    install.extra.update(
        {
            "POSTLINE_DNS_NAMESERVERS": fake_dns.nameserver,
            "POSTLINE_DELIVERY_PORT": str(fake_mx.port),
            **env,
        }
    )
    server = await launch(install, "serve", "--no-sandbox")
    key = await server.admin_key()
    await server.ready()
    await add_domain(server, key)
    return server, key


async def deliver_one(server: Server, key: str, to: str) -> None:
    sent = await server.send(key, to=to)
    detail = await server.wait_status(key, sent["id"], "delivered", timeout=30)
    assert only_recipient(detail)["status"] == "delivered", detail


async def outcomes(server: Server, status: str) -> float:
    text = (await server.client.get("/metrics")).text
    match = re.search(
        rf'^postline_recipient_outcomes_total\{{status="{status}"\}} (\S+)$', text, re.M
    )
    return float(match.group(1)) if match else 0.0


async def test_a_breaker_opened_by_hand_holds_mail_sent_the_moment_after(
    install: Install, launch: Launcher, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    """The delivery process reads the breaker commands when new mail wakes it while
    idle, not only every ``COMMAND_SYNC_SECONDS`` (0.25 s): mail sent right after an
    operator opened a breaker is held, as the dashboard's "open, then send" expects.

    The API applies a command to its own engine at once; in ``serve`` the engine is in
    the child, which learns of it from the database. Each round the child first
    delivers an email to other.test, so it has just read the commands, then dest.test's
    breaker is opened and an email sent there within the throttle. Read on the throttle
    alone, the commands came after the lease and that email went out (stop 41).
    """
    route_to(fake_dns, fake_mx, "other.test")
    server, key = await started(install, launch, fake_dns, fake_mx)
    for round_ in range(3):
        await deliver_one(server, key, f"warm{round_}@other.test")
        breaker = "/v1/destinations/dest.test/breaker"
        opened = await server.client.post(breaker, json={"state": "open"}, headers=auth(key))
        assert opened.status_code == 200, opened.text
        held = await server.send(key, to=f"held{round_}@dest.test")
        detail = await server.wait_email(
            key,
            held["id"],
            lambda d: only_recipient(d)["status"] != "queued",
            what="the held email's first outcome",
        )
        assert only_recipient(detail)["status"] == "deferred", detail
        assert fake_mx.messages_for(f"held{round_}@dest.test") == []
        closed = await server.client.post(breaker, json={"state": "closed"}, headers=auth(key))
        assert closed.status_code == 200, closed.text
        await server.wait_status(key, held["id"], "delivered", timeout=30)


async def test_serve_delivers_in_a_child_that_dies_with_it(
    install: Install, launch: Launcher, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    server, key = await started(install, launch, fake_dns, fake_mx)
    child = await the_child(server)
    await deliver_one(server, key, "first@dest.test")
    # Delivered by the child, counted at the parent's /metrics.
    assert await outcomes(server, "delivered") == 1.0
    assert [str(r.message["To"]) for r in fake_mx.received] == ["first@dest.test"]

    server.proc.kill()
    assert await server.wait_exit(EXIT_BOUND) == -signal.SIGKILL, server.describe()
    await poll(f"the delivery process {child} to die with its parent", lambda: not alive(child))


async def test_a_delivery_process_that_dies_is_started_again(
    install: Install, launch: Launcher, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    server, key = await started(install, launch, fake_dns, fake_mx)
    first = await the_child(server)
    await deliver_one(server, key, "before@dest.test")
    os.kill(first, signal.SIGKILL)
    await server.wait_for_line(
        rf"delivery process {first} exited with -9", stream="stderr", timeout=30
    )
    second = await the_child(server)
    assert second != first
    await deliver_one(server, key, "after@dest.test")
    # The dead child's counts stay: counters do not go back when a process is replaced.
    assert await outcomes(server, "delivered") == 2.0
    server.signal(signal.SIGTERM)
    assert await server.wait_exit(EXIT_BOUND) == 0, server.describe()
    assert not alive(second)


async def test_sigterm_stops_the_child_before_the_parent_exits(
    install: Install, launch: Launcher, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    server, key = await started(install, launch, fake_dns, fake_mx)
    child = await the_child(server)
    await deliver_one(server, key, "one@dest.test")
    server.signal(signal.SIGTERM)
    assert await server.wait_exit(EXIT_BOUND) == 0, server.describe()
    assert not alive(child)
    # All three processes drained: three "stopped" lines, the parent's last.
    stops = [line for line in server.stderr if line.endswith("INFO postline stopped")]
    assert len(stops) == 3, server.describe()


async def test_delivery_process_off_delivers_in_serve_itself(
    install: Install, launch: Launcher, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    server, key = await started(
        install, launch, fake_dns, fake_mx, POSTLINE_DELIVERY_PROCESS="false"
    )
    await deliver_one(server, key, "solo@dest.test")
    assert delivery_children(server.pid) == []
    assert await outcomes(server, "delivered") == 1.0


async def delivered_hook(receiver: WebhookReceiver, email_id: str) -> None:
    """Wait for the ``email.delivered`` webhook of ``email_id``."""

    def arrived() -> bool:
        return any(
            hook.json["type"] == "email.delivered" and hook.json["data"]["email_id"] == email_id
            for hook in receiver.received
        )

    await poll(f"email.delivered of {email_id}", arrived)


async def test_webhooks_go_out_from_a_child_of_their_own_that_is_started_again(
    install: Install,
    launch: Launcher,
    fake_dns: FakeDNS,
    fake_mx: FakeMX,
    receiver: WebhookReceiver,
) -> None:
    server, key = await started(
        install, launch, fake_dns, fake_mx, POSTLINE_WEBHOOK_ALLOW_PRIVATE="true"
    )
    hooks = await the_child(server, command=b"webhook-process")
    delivery = await the_child(server)
    assert hooks != delivery
    answer = await server.client.post(
        "/v1/webhooks",
        json={"url": receiver.url, "events": ["email.delivered"]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 201, answer.text
    first = await server.send(key, to="first@dest.test")
    await delivered_hook(receiver, first["id"])

    os.kill(hooks, signal.SIGKILL)
    await server.wait_for_line(
        rf"webhook process {hooks} exited with -9", stream="stderr", timeout=30
    )
    replacement = await the_child(server, command=b"webhook-process")
    assert replacement != hooks
    # The delivery process goes on meanwhile; its events wait for the new dispatcher.
    assert delivery_children(server.pid) == [delivery]
    second = await server.send(key, to="second@dest.test")
    await delivered_hook(receiver, second["id"])

    server.proc.kill()
    assert await server.wait_exit(EXIT_BOUND) == -signal.SIGKILL, server.describe()
    await poll("the new webhook process to die with its parent", lambda: not alive(replacement))
    await poll("the delivery process to die with its parent", lambda: not alive(delivery))
