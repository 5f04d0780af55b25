"""One SMTP transaction with RFC 2920 PIPELINING: MAIL, every RCPT and DATA in one write.

Without pipelining a transaction to n recipients costs n + 3 round trips; with
it, two (the batch, then the body). The replies are still read one by one, in
order, and each is mapped to its command exactly as the sequential path in
``smtp.py`` maps it.

aiosmtplib cannot do this itself. It writes one command and waits for its
reply, and its protocol drops bytes that arrive while no command is waiting
(so that unsolicited data cannot answer the next command). Two replies that
arrive back to back would lose the second. For the length of one transaction,
the transport's protocol is swapped for ``_ReplyReader``, which keeps every
byte, hands out complete replies in order and enforces the same bounds as
aiosmtplib (8 KiB a line, 32 KiB a reply, one command timeout per reply).
The client's protocol is put back afterwards.

Replies are untrusted. A reply that cannot answer its command (354 to RCPT,
250 to DATA), more replies than commands, or bytes left over at the end mean
the stream is out of step. Such a session is closed and never pooled, and the
message body is sent only after a DATA answered 354 with nothing unread
behind it.

The final dot goes out only if the job's lease is still this worker's
(``still_mine``, asked with the body written): a lost lease closes the
connection without it, so the server drops the message (``lease.LeaseLost``).
The sequential path in ``smtp.py`` sends its DATA through ``data`` here for
the same reason.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import SMTPProtocol, normalize_message_line_endings

from postline.delivery.lease import LeaseLost, StillMine
from postline.delivery.replies import Reply

_T = TypeVar("_T")

#: The same bounds as aiosmtplib's reader: one line, one whole (multi-line) reply.
MAX_LINE_BYTES = 8192
MAX_REPLY_BYTES = MAX_LINE_BYTES * 4
CLOSING = 421  # RFC 5321 3.8: any command may get it, and then the server hangs up
START_INPUT = 354
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")  # never inside a command line (injection)
_LEADING_DOT = re.compile(rb"(?m)^\.")
#: An address aiosmtplib's ``quote_address`` gives back as it is, in angle brackets: an
#: RFC 5322 dot-atom local part and a domain of LDH labels, ASCII only. Nearly every
#: address is one, and ``email.utils.parseaddr`` (which ``quote_address`` runs) cost 5%
#: of the delivery process's time; anything else still goes through aiosmtplib.
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)


class OutOfStep(aiosmtplib.SMTPResponseException):
    """The replies no longer pair with the commands: the session cannot be trusted."""

    def __init__(self, message: str) -> None:
        super().__init__(-1, message)  # -1: no reply (Reply.of maps it to code None)


@dataclass
class Ending:
    """How the transaction ended (the RCPT replies go into the caller's dict as they come)."""

    error: Reply | None = None  # MAIL or DATA refused, or the server closing (421)
    data: Reply | None = None  # the final reply after the body, when it was a 2xx
    clean: bool = False  # in step with nothing unread: the session may carry another message


async def transact(
    client: aiosmtplib.SMTP,
    sender: str,
    options: list[str],
    recipients: list[str],
    body: bytes,
    rcpt: dict[str, Reply],
    still_mine: StillMine,
) -> Ending:
    """Send one message to ``recipients`` with pipelining.

    ``rcpt`` is filled as the replies come, so a failure half-way still shows
    which recipients were answered (the caller decides from it whether a retry
    on a fresh connection is safe). Raises like aiosmtplib does: a timeout or a
    lost connection closes the client and raises; an unusable reply raises an
    ``SMTPResponseException`` (``OutOfStep``) and closes the client too.
    """
    batch = _batch(sender, options, recipients)

    async def converse(protocol: SMTPProtocol, reader: _ReplyReader) -> Ending:
        return await _converse(
            protocol, reader, batch, recipients, body, rcpt, client.timeout, still_mine
        )

    ending, unread = await _with_reader(client, converse)
    if not ending.clean or unread:
        # Anything left over would answer the next command on this session.
        ending.clean = False
        client.close()
    return ending


async def data(client: aiosmtplib.SMTP, body: bytes, still_mine: StillMine) -> Reply:
    """DATA and the body on a session without pipelining; the final reply, a 2xx.

    Raises like ``aiosmtplib.SMTP.data``: ``SMTPDataError`` when the DATA or the
    body is refused; and ``LeaseLost`` (the connection closed, no final dot) when
    ``still_mine`` says the job went to another worker.
    """

    async def converse(protocol: SMTPProtocol, reader: _ReplyReader) -> Reply:
        reader.owe(1)
        protocol.write(b"DATA\r\n")
        start = await reader.next(client.timeout)
        if start.code != START_INPUT:
            _expect(start, "DATA", (4, 5))
            raise aiosmtplib.SMTPDataError(start.code or -1, start.text)
        return await _send_body(protocol, reader, body, client.timeout, still_mine)

    final, unread = await _with_reader(client, converse)
    if unread:
        client.close()
    if not final.is_success:
        raise aiosmtplib.SMTPDataError(final.code or -1, final.text)
    return final


async def _with_reader(
    client: aiosmtplib.SMTP,
    converse: Callable[[SMTPProtocol, _ReplyReader], Awaitable[_T]],
) -> tuple[_T, bool]:
    """Run ``converse`` with ``_ReplyReader`` in place of the client's protocol.

    Returns what it returned and whether the server sent anything unread. On
    any exception the client is closed: the stream can no longer be trusted.
    """
    protocol = client.protocol
    transport = protocol.transport if protocol is not None else None
    if protocol is None or transport is None or transport.is_closing():
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")
    reader = _ReplyReader(protocol)
    transport.set_protocol(reader)
    try:
        result = await converse(protocol, reader)
    except BaseException:
        client.close()
        raise
    finally:
        if not transport.is_closing():
            transport.set_protocol(protocol)
    return result, reader.unread


async def _converse(
    protocol: SMTPProtocol,
    reader: _ReplyReader,
    batch: bytes,
    recipients: list[str],
    body: bytes,
    rcpt: dict[str, Reply],
    timeout: float | None,
    still_mine: StillMine,
) -> Ending:
    reader.owe(len(recipients) + 2)
    protocol.write(batch)
    mail = _expect(await reader.next(timeout), "MAIL", (2, 4, 5))
    if mail.code == CLOSING:
        return Ending(error=mail)
    if not mail.is_success:
        # Every RCPT and the DATA get 503 "need MAIL"; the sender's refusal is the outcome.
        return Ending(
            error=mail, clean=await _wind_down(protocol, reader, len(recipients), timeout)
        )
    for recipient in recipients:
        reply = _expect(await reader.next(timeout), "RCPT", (2, 4, 5))
        rcpt[recipient] = reply
        if reply.code == CLOSING:
            return Ending(error=reply)
    if not any(reply.is_success for reply in rcpt.values()):
        # Every recipient was refused and their replies are the outcome; what the DATA
        # and the RSET get only decides whether this session may be reused.
        return Ending(clean=await _wind_down(protocol, reader, 0, timeout))
    data = await reader.next(timeout)
    if data.code != START_INPUT:
        _expect(data, "DATA", (4, 5))
        if data.code == CLOSING:
            return Ending(error=data)
        return Ending(error=data, clean=await _reset(protocol, reader, timeout))
    final = await _send_body(protocol, reader, body, timeout, still_mine)
    if final.is_success:
        return Ending(data=final, clean=True)
    return Ending(error=final, clean=final.code != CLOSING)


async def _send_body(
    protocol: SMTPProtocol,
    reader: _ReplyReader,
    body: bytes,
    timeout: float | None,
    still_mine: StillMine,
) -> Reply:
    """After a 354: the body, then (if the lease is still ours) the final dot; its reply.

    The lease is asked with the body written, as late as can be: if it was lost,
    raising closes the connection and the server drops the unfinished message.
    """
    if reader.unread:
        raise OutOfStep("the server sent more than the 354 before the message body")
    protocol.write(wire_content(body))
    if not await still_mine():
        raise LeaseLost("the job's lease was lost before the end of DATA")
    reader.owe(1)
    protocol.write(_END_OF_DATA)
    return _expect(await reader.next(timeout, final=True), "end of data", (2, 3, 4, 5))


async def _wind_down(
    protocol: SMTPProtocol, reader: _ReplyReader, skipped: int, timeout: float | None
) -> bool:
    """Read what is owed after a transaction that sends no body; True if the session is usable.

    The outcome is already decided, so a failure here only retires the session.
    RFC 2920 3.1: a DATA that was accepted anyway is ended with a lone dot, never
    with the message.
    """
    try:
        for _ in range(skipped):
            if (await reader.next(timeout)).code == CLOSING:
                return False
        answers: tuple[int, ...] = (4, 5)
        reply = await reader.next(timeout)
        if reply.code == START_INPUT:
            reader.owe(1)
            protocol.write(b".\r\n")
            reply, answers = await reader.next(timeout), (2, 4, 5)
        if reply.code is None or reply.code // 100 not in answers or reply.code == CLOSING:
            return False  # the server is closing, or the reply cannot answer: out of step
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        return False
    return await _reset(protocol, reader, timeout)


async def _reset(protocol: SMTPProtocol, reader: _ReplyReader, timeout: float | None) -> bool:
    """RSET after an aborted transaction; a failing one only retires the session."""
    try:
        reader.owe(1)
        protocol.write(b"RSET\r\n")
        return (await reader.next(timeout)).is_success
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        return False


def _expect(reply: Reply, command: str, classes: tuple[int, ...]) -> Reply:
    """The reply, if its class can answer this command; else the stream is out of step."""
    if reply.code is None or reply.code // 100 not in classes:
        raise OutOfStep(f"{command} answered {reply.line}")
    return reply


def _batch(sender: str, options: list[str], recipients: list[str]) -> bytes:
    """MAIL FROM, one RCPT TO per recipient and DATA, as aiosmtplib would write each."""
    mail = [b"MAIL", b"FROM:" + quoted(sender)]
    lines = [mail + [option.encode("ascii") for option in options]]
    lines += [[b"RCPT", b"TO:" + quoted(r)] for r in recipients]
    lines.append([b"DATA"])
    for line in lines:
        if any(_CONTROL.search(arg) for arg in line):
            raise ValueError("Command arg contains a prohibited control character")
    return b"".join(b" ".join(line) + b"\r\n" for line in lines)


def quoted(address: str) -> bytes:
    """The address as aiosmtplib's ``quote_address`` writes it on a command line."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return b"<" + address.encode("ascii") + b">"
    return quote_address(address).encode("utf-8")


_END_OF_DATA = b".\r\n"


def wire_content(body: bytes) -> bytes:
    """The body as aiosmtplib sends it, without the end dot: CRLF line endings (one
    at the end too), dot-stuffed.

    Bodies Postline composed have CRLF endings already and seldom a line that starts
    with a dot: counting (C speed) tells, and the regular expressions, which rebuild
    the whole body line by line (some 70 µs for 5 KB), run only when there is work.
    """
    crlf = body.count(b"\r\n")
    if not (crlf == body.count(b"\n") == body.count(b"\r") and body.endswith(b"\r\n")):
        body = normalize_message_line_endings(body)
    if body.startswith(b".") or b"\n." in body:
        body = _LEADING_DOT.sub(b"..", body)
    return body


class _ReplyReader(asyncio.Protocol):
    """Stands in for the client's protocol while a batch is outstanding.

    It parses replies as bytes arrive and keeps at most as many as are owed
    (commands written, replies not yet handed out), each already made safe
    by ``Reply.of``. A reply beyond that marks the stream out of step.
    Connection events still reach the client's protocol, so the client
    notices a hang-up as it would otherwise.
    """

    def __init__(self, client: SMTPProtocol) -> None:
        self._client = client
        self._pending = bytearray()  # bytes of the reply being received
        self._lines: list[bytes] = []  # its complete lines so far
        self._size = 0  # their length
        self._replies: deque[Reply] = deque()
        self._owed = 0
        self._extra = False
        self._failure: Exception | None = None
        self._changed = asyncio.Event()

    @property
    def unread(self) -> bool:
        """Whether the server sent anything not yet handed out (or more than was owed)."""
        return bool(self._replies or self._pending or self._lines or self._extra)

    def owe(self, count: int) -> None:
        self._owed += count

    async def next(self, timeout: float | None, *, final: bool = False) -> Reply:
        """The next reply, within ``timeout`` seconds (like one command's wait).

        Once the server has sent more replies than commands, none of them can be
        paired with confidence, and this raises. Except for the ``final`` reply to
        the message body: the body is out, the first reply after it is its answer,
        and treating it as a failure would send the message again. The surplus
        still retires the session (``unread``).
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self._extra and not (final and self._replies):
                        raise OutOfStep("the server sent more replies than there were commands")
                    if self._replies:
                        self._owed -= 1
                        return self._replies.popleft()
                    if self._failure is not None:
                        raise self._failure
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError as exc:
            raise aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response") from exc

    # -- asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        if self._failure is not None or self._extra:
            return
        self._pending.extend(data)
        try:
            self._parse()
        except aiosmtplib.SMTPResponseException as exc:
            self._fail(exc)
        self._changed.set()

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(aiosmtplib.SMTPServerDisconnected("Connection lost"))
        self._client.connection_lost(exc)

    def pause_writing(self) -> None:
        self._client.pause_writing()

    def resume_writing(self) -> None:
        self._client.resume_writing()

    # -- internals

    def _fail(self, exc: Exception) -> None:
        if self._failure is None:
            self._failure = exc
        self._changed.set()

    def _parse(self) -> None:
        """Move complete replies from ``_pending`` to ``_replies`` (linear in the bytes)."""
        start = 0
        while (end := self._pending.find(b"\n", start)) != -1:
            line = bytes(self._pending[start : end + 1])
            start = end + 1
            if len(line) > MAX_LINE_BYTES:
                raise OutOfStep("Response too long")
            if not line[:3].isdigit():
                raise OutOfStep(f"Malformed SMTP response line: {line[:64]!r}")
            self._lines.append(line[4:].strip(b" \t\r\n"))
            self._size += len(line)
            if self._size > MAX_REPLY_BYTES:
                raise OutOfStep("Response too long")
            if line[3:4] != b"-":
                text = b"\n".join(self._lines).decode("utf-8", "surrogateescape")
                self._lines, self._size = [], 0
                if len(self._replies) >= self._owed:
                    self._extra = True
                    return
                self._replies.append(Reply.of(int(line[:3]), text))
        del self._pending[:start]
        if len(self._pending) > MAX_LINE_BYTES:
            raise OutOfStep("Response too long")
