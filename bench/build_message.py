"""Building and DKIM-signing one message, in microseconds, for a few typical shapes.

The accept path builds and signs every message it takes (``postline.compose``); this
times those two steps alone, in this process, for the shapes clients send most:

- text: a ~5 KB plain-text email to one recipient
- text+html: the same with a ~5 KB HTML alternative
- attachments: text, a 20 KB PDF and a 5 KB PNG
- non-ascii: a German subject and display name, ~5 KB of text with umlauts
- recipients: 50 To and 10 Cc addresses, a Reply-To and three custom headers

"email package" is the same message built by ``build_message_stdlib``, the builder
``build_message`` replaced (it still builds what the direct writer does not cover).
Each figure is the min and the median over ``--rounds`` rounds of ``--iterations`` calls
(time.perf_counter per round, divided by the calls). "sign" signs the built message with
a key parsed once, as the compose workers do; "parse key" is what a signature would
cost more if the PEM were parsed for every message.

Usage: .venv/bin/python bench/build_message.py [--iterations 200] [--rounds 15]
Results go to stdout.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

from postline import dkim
from postline.domains import _generate_dkim_key
from postline.message import Attachment, Content, build_message, build_message_stdlib

DATE = datetime(2026, 12, 6, 1, 0, 0, tzinfo=UTC)
MESSAGE_ID = "<01jezq3v6k8d2c4m5n7p9r0s1t@mail.example.test>"
PARAGRAPH = (
    "Thank you for your order. We have received your payment and your items will ship "
    "within two business days.\nYou can follow the parcel with the link in your account.\n"
)
UMLAUTE = (
    "Vielen Dank für Ihre Bestellung. Wir haben Ihre Zahlung erhalten; die Ware geht "
    "innerhalb von zwei Werktagen an Sie.\nGrüße aus München, Ihr Team.\n"
)

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 80
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 20


def _repeat(text: str, size: int) -> str:
    return text * (size // len(text) + 1)


def shapes() -> dict[str, Content]:
    text = _repeat(PARAGRAPH, 5000)
    html = "".join(f"<p>{line}</p>\n" for line in text.splitlines())
    base = {
        "from_name": "Acme Billing",
        "from_address": "billing@acme.example",
        "to": ["alice@example.com"],
        "subject": "Your order 4711 has shipped",
        "text": text,
    }
    return {
        "text": Content(**base),  # type: ignore[arg-type]
        "text+html": Content(**{**base, "html": html}),  # type: ignore[arg-type]
        "attachments": Content(
            **base,  # type: ignore[arg-type]
            attachments=[
                Attachment("invoice-4711.pdf", PDF, "application/pdf"),
                Attachment("logo.png", PNG, "image/png"),
            ],
        ),
        "non-ascii": Content(
            **{
                **base,
                "from_name": "Zoë Ålund",
                "subject": "Ihre Bestellung für März ist unterwegs — Nr. 4711",
                "text": _repeat(UMLAUTE, 5000),
            }  # type: ignore[arg-type]
        ),
        "recipients": Content(
            **{
                **base,
                "to": [f"recipient.{n}@example{n % 10}.com" for n in range(50)],
                "cc": [f"copy.{n}@example.org" for n in range(10)],
                "reply_to": ["support@acme.example"],
                "headers": {
                    "X-Campaign": "december-2026",
                    "List-Unsubscribe": "<https://acme.example/u/4711>, <mailto:u@acme.example>",
                    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                },
            }  # type: ignore[arg-type]
        ),
    }


def measure(call: Callable[[], object], iterations: int, rounds: int) -> tuple[float, float]:
    """(min, median) microseconds per call."""
    per_call: list[float] = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(iterations):
            call()
        per_call.append((time.perf_counter() - started) / iterations * 1e6)
    return min(per_call), statistics.median(per_call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    pem = _generate_dkim_key()
    key = dkim.DkimKey("acme.example", "postline", pem)
    print(f"{'shape':<12} {'bytes':>6} {'email package':>16} {'build':>16} {'sign':>16}")
    print(f"{'':<12} {'':>6}" + f" {'min':>7} {'median':>8}" * 3)
    for name, content in shapes().items():

        def build(content: Content = content) -> bytes:
            return build_message(content, message_id=MESSAGE_ID, date=DATE)

        def reference(content: Content = content) -> bytes:
            return build_message_stdlib(content, message_id=MESSAGE_ID, date=DATE)

        body = build()

        def sign(body: bytes = body) -> bytes:
            return dkim.sign(body, key)

        figures = [
            measure(reference, args.iterations, args.rounds),
            measure(build, args.iterations, args.rounds),
            measure(sign, args.iterations, args.rounds),
        ]
        cells = "".join(f" {low:>7.1f} {median:>8.1f}" for low, median in figures)
        print(f"{name:<12} {len(body):>6}{cells}")
    parsed = measure(lambda: dkim.DkimKey("acme.example", "postline", pem), 20, args.rounds)
    print(f"parse key (per message if not cached): min {parsed[0]:.1f} median {parsed[1]:.1f} µs")


if __name__ == "__main__":
    main()
