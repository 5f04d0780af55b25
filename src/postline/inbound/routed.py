"""Mail to an inbound route: matched at RCPT, stored at DATA with its ``email.received``
event in one transaction, so the 250 means both are durable and the event (fanned out
to the domain's webhooks by the dispatcher, listed in the event feed) always names a
message whose raw bytes can be fetched."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from postline.delivery.replies import sanitize
from postline.ids import new_id
from postline.inbound.received import describe
from postline.model import EventType
from postline.store import inbound_routes as route_store
from postline.store import webhooks as webhook_store
from postline.store.db import Database
from postline.store.inbound_routes import InboundRoute
from postline.store.types import Clock, utcnow
from postline.wakeups import Wakeups

log = logging.getLogger("postline.inbound")


def route_candidates(address: str) -> list[str]:
    """The matches that would take ``address``, most specific first."""
    local, at, domain = address.strip().lower().rpartition("@")
    if not at or not local or not domain:
        return []
    return [f"{local}@{domain}", f"*@{domain}"]


def raw_path(message_id: str) -> str:
    """Where the raw message is fetched, relative to the API's base URL."""
    return f"/v1/inbound/{message_id}/raw"


class RoutedMail:
    def __init__(self, db: Database, wakeups: Wakeups, *, clock: Clock = utcnow) -> None:
        self.db = db
        self.wakeups = wakeups
        self.clock = clock

    async def route_for(self, address: str) -> InboundRoute | None:
        """The route that takes mail for ``address``, or None."""
        async with self.db.read() as conn:
            for match in route_candidates(address):
                found = await route_store.route_by_match(conn, match)
                if found is not None:
                    return found
        return None

    async def take(self, route: InboundRoute, mail_from: str, rcpt_to: str, raw: bytes) -> str:
        """Store the message (and its event, when the route asks for events); its id."""
        parsed = await asyncio.to_thread(parse_received, raw)
        now = self.clock()
        message_id = new_id("inm_")
        async with self.db.write() as conn:
            domain = await route_store.domain_name(conn, route.domain_id) or ""
            await route_store.add_message(
                conn,
                {
                    "id": message_id,
                    "route_id": route.id,
                    "domain_id": route.domain_id,
                    "received_at": now,
                    "mail_from": sanitize(mail_from)[:320],
                    "rcpt_to": sanitize(rcpt_to)[:320],
                    "size": len(raw),
                    "raw": raw,
                },
            )
            if route.events:
                await webhook_store.insert_event(
                    conn,
                    _event_row(message_id, route, domain, mail_from, rcpt_to, raw, parsed, now),
                )
        if route.events:
            self.wakeups.events_written()
        log.info("inbound message %s stored for route %s", message_id, route.id)
        return message_id


def parse_received(raw: bytes) -> dict[str, Any] | None:
    """The parsed members of an ``email.received`` event, or None when the message does
    not parse (it is kept and announced all the same)."""
    try:
        return describe(raw)
    except Exception:  # stored and announced all the same: the raw bytes are the truth
        log.warning("inbound message did not parse", exc_info=True)
        return None


def _event_row(
    message_id: str,
    route: InboundRoute,
    domain: str,
    mail_from: str,
    rcpt_to: str,
    raw: bytes,
    parsed: dict[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """The outbox row: no email of Postline's (``email_id`` NULL), the route's domain."""
    stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    data = received_data(message_id, route.id, domain, mail_from, rcpt_to, stamp, len(raw), parsed)
    return {
        "id": new_id("evt_"),
        "type": str(EventType.RECEIVED),
        "email_id": None,
        "recipient_id": None,
        "domain_id": route.domain_id,
        "sequence": 1,
        "created_at": now,
        "payload": {"type": str(EventType.RECEIVED), "created_at": stamp, "data": data},
    }


def received_data(
    message_id: str,
    route_id: str | None,
    domain: str,
    mail_from: str,
    rcpt_to: str,
    received_at: str | None,
    size: int,
    parsed: dict[str, Any] | None,
) -> dict[str, Any]:
    """What ``email.received`` says of a message, and ``GET /v1/inbound/{id}`` too."""
    return {
        "inbound_id": message_id,
        "route_id": route_id,
        "domain": domain,
        "mail_from": mail_from,
        "rcpt_to": rcpt_to,
        "received_at": received_at,
        "size": size,
        "raw_url": raw_path(message_id),
        "parsed": parsed is not None,
        **(parsed or {}),
    }
