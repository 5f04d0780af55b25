"""Reading a recipient's delivery timeline in tests."""

from __future__ import annotations

from typing import Any

from tests.harness.postline import PostlineUnderTest


def last_row(detail: dict[str, Any]) -> dict[str, Any]:
    """The newest timeline row of the email's first recipient."""
    row: dict[str, Any] = detail["recipients"][0]["timeline"][-1]
    return row


async def deferred(pl: PostlineUnderTest, email_id: str) -> dict[str, Any]:
    """The email's detail once its first recipient is deferred (polled, with a deadline)."""
    return await pl.wait_for(
        email_id, lambda d: d["recipients"][0]["status"] == "deferred", what="a deferral"
    )
