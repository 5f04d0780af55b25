"""A minimal SMTP sink for benchmarks: accepts everything, counts messages.

Run as its own process so it does not share the event loop (or the GIL) with
Postline: ``python bench/sink.py PORT [--pipelining]``. It prints ``ready`` once
listening. With ``--pipelining`` its EHLO offers PIPELINING (RFC 2920), as
Postfix, Exim and the big mailbox providers do; aiosmtpd alone does not.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class Sink:
    def __init__(self) -> None:
        self.messages = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages += 1
        return "250 2.0.0 OK"


class PipeliningSink(Sink):
    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # with this hook, aiosmtpd leaves it to the hook
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


async def main(port: int, pipelining: bool) -> None:
    loop = asyncio.get_running_loop()
    sink = PipeliningSink() if pipelining else Sink()

    def factory() -> Any:
        return SMTP(sink, hostname="sink.bench", loop=loop, data_size_limit=50_000_000)

    server = await loop.create_server(factory, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), "--pipelining" in sys.argv[2:]))
