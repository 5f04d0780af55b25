"""``postline serve`` at the default housekeeping interval: the spool is empty within a
minute of the last email becoming final, and the content of a freed body is 410 Gone."""

from __future__ import annotations

from pathlib import Path

from tests.acceptance.conftest import Launcher
from tests.acceptance.harness import Install, auth
from tests.acceptance.test_serve import route_to
from tests.harness.fake_dns import FakeDNS
from tests.harness.fake_mx import FakeMX
from tests.harness.polling import poll


def bodies(spool: Path) -> list[Path]:
    return [*spool.glob("*/*.eml"), *spool.glob("*/*.tmp")]


async def test_spool_empty_within_a_minute_of_the_last_final_email(
    install: Install, launch: Launcher, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    route_to(fake_dns, fake_mx)
    # Only what reaching the fake network needs: housekeeping and retention at defaults.
    install.extra.update(
        {
            "POSTLINE_DNS_NAMESERVERS": fake_dns.nameserver,
            "POSTLINE_DELIVERY_PORT": str(fake_mx.port),
        }
    )
    (await install.acli("domains", "add", "example.test")).assert_ok()
    key = (await install.acli("keys", "create", "--name", "t")).assert_ok().stdout_lines[-1]
    server = await launch(install, "serve", "--no-sandbox")
    await server.ready()
    sent = [await server.send(key, to=f"user{i}@dest.test") for i in range(5)]
    spool = install.data_dir / "spool"
    assert bodies(spool), "accepted bodies are in the spool"
    for email in sent:
        await server.wait_status(key, email["id"], "delivered", timeout=30)

    async def spool_empty() -> bool:
        return not bodies(spool)

    await poll(spool_empty, timeout=60, what="the spool to empty", interval=0.5)
    response = await server.client.get(f"/v1/emails/{sent[0]['id']}/content", headers=auth(key))
    assert response.status_code == 410, response.text
