"""Record a fetch of a tracked link, of the open pixel, or a one-click unsubscribe.

Each is an event in the outbox like every other (``email.opened``, ``email.clicked``,
``email.unsubscribed``), written in one transaction with its per-email sequence, so
webhooks fire, ``GET /v1/events`` lists it and ``GET /v1/stats`` counts it. The
recipient's status does not move: a delivered recipient stays delivered.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Any

from postline.ids import new_id
from postline.model import EventType
from postline.outcomes import email_data, outbox_row
from postline.store import emails as email_store
from postline.store import suppressions as suppression_store
from postline.store.db import Database
from postline.tracking.tokens import Token
from postline.wakeups import Wakeups

#: User agents of image proxies that fetch every image of a message as it arrives,
#: whether or not anybody reads it.
_PROXY_AGENTS = (("GoogleImageProxy", "gmail_image_proxy"), ("YahooMailProxy", "yahoo_proxy"))
#: Apple Mail Privacy Protection fetches from Apple's own network (17.0.0.0/8).
_APPLE = ipaddress.ip_network("17.0.0.0/8")

_EVENT = {"o": EventType.OPENED, "c": EventType.CLICKED, "u": EventType.UNSUBSCRIBED}


def machine_fetch(user_agent: str, ip: str) -> str | None:
    """Which known image proxy made a fetch, or None when none did."""
    for marker, name in _PROXY_AGENTS:
        if marker in user_agent:
            return name
    try:
        if ipaddress.ip_address(ip) in _APPLE:
            return "apple_mail_privacy_protection"
    except ValueError:
        pass
    return None


async def record(
    db: Database,
    wakeups: Wakeups,
    token: Token,
    *,
    user_agent: str,
    ip: str,
    now: datetime,
) -> bool:
    """Write the token's event (and, for an unsubscribe, the suppression); False when
    the email is no longer stored (purged), in which case nothing is written."""
    event_type = _EVENT[token.kind]
    async with db.write() as conn:
        # Locked, as the recorder locks it: two fetches at once must not take one sequence.
        email = await email_store.lock_email(conn, token.email_id)
        if email is None:
            return False
        recipient_id = None
        if token.recipient:
            recipients = await email_store.get_recipients(conn, email.id)
            found = [r.id for r in recipients if r.address == token.recipient]
            recipient_id = found[0] if found else None
        sequence = await email_store.next_event_sequence(conn, email.id)
        proxy = machine_fetch(user_agent, ip)
        data: dict[str, Any] = {
            **email_data(email, token.recipient or None),
            "user_agent": user_agent or None,
            # The reader's address (or the proxy's that fetched): the peer, or the client
            # a trusted reverse proxy named (postline.api.client_address).
            "ip": ip or None,
            "machine": proxy is not None,
            "machine_by": proxy,
            "tags": dict(email.tags or {}),
            "sequence": sequence,
        }
        if token.kind == "c":
            data["url"] = token.url
        row = outbox_row(email, recipient_id, event_type, data, sequence, now)
        await email_store.insert_events(conn, [row])
        if token.kind == "u" and token.recipient:
            await suppression_store.add_suppression(
                conn,
                suppression_id=new_id("sup_"),
                domain_id=email.domain_id,
                address=token.recipient,
                reason="unsubscribe",
                now=now,
                source_email_id=email.id,
                detail="one-click unsubscribe (RFC 8058)",
            )
    wakeups.events_written()
    return True
