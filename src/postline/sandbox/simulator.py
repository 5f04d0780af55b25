"""A real SMTP server on loopback that plays every outcome a newcomer wants to see.

Mail to the simulator domain goes through the normal engine and a real SMTP
conversation; only the far end is simulated:

- ``delivered@``  accepted
- ``bounced@``    ``550 5.1.1`` (hard bounce: the address does not exist)
- ``deferred@``   ``451 4.3.0`` on the first attempt of each email, accepted later
- ``blocked@``    ``554 5.7.1`` (a policy block)
- ``complained@`` accepted, then an ARF complaint is mailed to the return path at the
  inbound listener (``postline.sandbox.complaints``), as a feedback loop would
- anything else   accepted
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict

from aiosmtpd.smtp import SMTP, Envelope, Session

from postline.domains import SIMULATOR_DOMAIN
from postline.sandbox.complaints import file_complaint
from postline.smtpd import LoopSmtpServer

_REPLIES = {
    "bounced": "550 5.1.1 The email account that you tried to reach does not exist (simulated)",
    "blocked": "554 5.7.1 Message rejected due to local policy (simulated)",
}
_DEFER = "451 4.3.0 Temporary failure, please try again later (simulated)"
_REMEMBERED = 100_000


class SimulatorHandler:
    def __init__(self, inbound: tuple[str, int] | None = None) -> None:
        # (envelope sender, recipient) pairs already deferred once; bounded.
        self._deferred: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.accepted = 0
        #: Where complaints go (the inbound listener); None: complained@ is only accepted.
        self.inbound = inbound
        #: Complaints being mailed, kept so that they are not collected mid-flight and
        #: can be awaited at stop.
        self.complaints: set[asyncio.Task[None]] = set()

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        local, _, domain = address.lower().rpartition("@")
        if domain != SIMULATOR_DOMAIN:
            return "550 5.1.2 This simulator only accepts mail for " + SIMULATOR_DOMAIN
        base = local.split("+", 1)[0]
        if base in _REPLIES:
            return _REPLIES[base]
        if base == "deferred":
            key = (str(envelope.mail_from), address.lower())
            if key not in self._deferred:
                self._deferred[key] = None
                if len(self._deferred) > _REMEMBERED:
                    self._deferred.popitem(last=False)
                return _DEFER
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK (simulated)"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.accepted += 1
        return_path = str(envelope.mail_from or "")
        if self.inbound is not None and return_path:
            content = envelope.original_content or b""
            for address in envelope.rcpt_tos:
                if address.lower().split("@", 1)[0].split("+", 1)[0] == "complained":
                    complaint = file_complaint(self.inbound, return_path, address, content)
                    task = asyncio.create_task(complaint, name="simulated complaint")
                    self.complaints.add(task)
                    task.add_done_callback(self.complaints.discard)
        return "250 2.0.0 OK: queued (simulated)"


class Simulator(LoopSmtpServer):
    """Runs in the caller's event loop on 127.0.0.1 and an ephemeral port."""

    label = "sandbox simulator MX"

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, inbound: tuple[str, int] | None = None
    ) -> None:
        super().__init__(host, port)
        self.handler = SimulatorHandler(inbound)

    def protocol(self, loop: asyncio.AbstractEventLoop) -> SMTP:
        return SMTP(
            self.handler,
            hostname="mx.simulator.postline.test",
            ident="Postline sandbox simulator",
            enable_SMTPUTF8=True,
            data_size_limit=60 * 1024 * 1024,
            loop=loop,
        )

    async def stop(self) -> None:
        await super().stop()
        pending = list(self.handler.complaints)
        if pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5)
