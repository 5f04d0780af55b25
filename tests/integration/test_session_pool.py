"""SMTP sessions are reused across jobs, retired after N messages, replaced when dropped."""

from __future__ import annotations

from tests.harness import FakeMX
from tests.harness.postline import Factory, PostlineUnderTest


async def _send_one_by_one(pl: PostlineUnderTest, count: int) -> None:
    for i in range(count):
        sent = await pl.send(to=f"user{i}@dest.test")
        await pl.wait_for_status(sent["id"], ["delivered"])


async def test_one_session_carries_consecutive_messages(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    pl = await postline_factory()
    await _send_one_by_one(pl, 5)
    assert len(fake_mx.received) == 5
    assert fake_mx.connections == 1


async def test_a_session_retires_after_its_message_budget(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    pl = await postline_factory(smtp_max_messages_per_session=2)
    await _send_one_by_one(pl, 5)
    assert fake_mx.connections == 3


async def test_a_session_the_server_closed_while_idle_is_replaced(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    pl = await postline_factory()
    await _send_one_by_one(pl, 1)
    await fake_mx.stop()  # drops the idle pooled session
    await fake_mx.start()
    sent = await pl.send(to="after@dest.test")
    detail = await pl.wait_for_status(sent["id"], ["delivered"])
    assert [t["status"] for t in detail["recipients"][0]["timeline"]] == ["delivered"]


async def test_a_destination_connection_limit_serialises_delivery(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    fake_mx.stall("rcpt", 0.1)
    pl = await postline_factory(destination_limits={"dest.test": {"connections": 1}})
    ids = [(await pl.send(to=f"u{i}@dest.test"))["id"] for i in range(4)]
    for email_id in ids:
        await pl.wait_for_status(email_id, ["delivered"])
    assert fake_mx.connections == 1  # without the limit, four jobs open four sessions


async def test_without_a_limit_parallel_jobs_open_parallel_sessions(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    fake_mx.stall("rcpt", 0.1)
    pl = await postline_factory(engine=False)
    ids = [(await pl.send(to=f"u{i}@dest.test"))["id"] for i in range(4)]
    pl.start_engine()
    for email_id in ids:
        await pl.wait_for_status(email_id, ["delivered"])
    assert fake_mx.connections > 1
