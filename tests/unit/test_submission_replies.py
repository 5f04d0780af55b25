"""Every reply of the submission port has an enhanced status code, and none carries
control characters or more than one line's worth of the client's text."""

from __future__ import annotations

import pytest

from postline.submission.replies import MAX_REPLY, enhance


@pytest.mark.parametrize(
    ("plain", "coded"),
    [
        ("552 Error: Too much mail data", "552 5.3.4 Message too big for system"),
        ("503 Error: need RCPT command", "503 5.5.1 Error: need RCPT command"),
        ("500 Line too long (see RFC5321 4.5.3.1.6)", "500 5.5.6 Line too long (see RFC5321"),
        ("501 Syntax: MAIL FROM: <address>", "501 5.5.4 Syntax: MAIL FROM: <address>"),
        ("250 OK", "250 2.0.0 OK"),
        ("221 Bye", "221 Bye"),
        ("354 End data with <CR><LF>.<CR><LF>", "354 End data with"),
        ("550 5.7.1 not yours", "550 5.7.1 not yours"),
        ("250-SIZE 1000", "250-SIZE 1000"),
    ],
)
def test_each_reply_gets_its_code_once(plain: str, coded: str) -> None:
    assert enhance(plain).startswith(coded)
    assert enhance(enhance(plain)) == enhance(plain)


def test_the_clients_text_is_cut_and_defused() -> None:
    echoed = enhance('500 Error: command "X\rY' + "Z" * 2000 + '" not recognized')
    assert echoed.startswith("500 5.5.1 Error: command")
    assert "\r" not in echoed and len(echoed) == MAX_REPLY
