"""Server render time of the dashboard with a large send log (issue 17).

Seeds ``--emails`` N emails (one recipient, one delivery attempt and two events each,
spread over the last 7 days) straight into a fresh store, SQLite or PostgreSQL, sends
one more through the API (so that its body is in the spool), signs in to the dashboard
and times, in process (httpx's ASGI transport: the app's own time, no socket), the
pages an operator opens: the send log, a filtered send log, the email detail, the
recipient lookup and the overview, with ``GET /v1/emails`` beside them. Printed:
median and 95th percentile of ``--runs`` renders each, in milliseconds.

Everything goes to a temporary directory (and, for PostgreSQL, a database of its own
on 127.0.0.1:5432, dropped at the end).

Usage: .venv/bin/python bench/dashboard_render.py [--emails 100000] [--store sqlite]
       [--runs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import subprocess
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from postline.api.app import create_api
from postline.app import Services
from postline.config import load_settings
from postline.domains import create_domain
from postline.ids import new_id
from postline.keys import create_key
from postline.secrets import prepare_secrets
from postline.store import emails as email_store
from postline.store.migrate import upgrade_async
from postline.store.types import utcnow

CHUNK = 5000
SECRET_KEY = "YmVuY2gtZGFzaGJvYXJkLXJlbmRlci1zZWNyZXRrZXk="


def rows(count: int, domain_id: str) -> tuple[list[dict[str, Any]], ...]:
    now = utcnow()
    emails, recipients, attempts, events = [], [], [], []
    for n in range(count):
        at = now - timedelta(seconds=random.uniform(0, 7 * 86400))
        email_id, recipient_id = new_id("em_", at.timestamp()), new_id("rcp_", at.timestamp())
        address = f"user{n}@dest{n % 50}.test"
        bounced = n % 20 == 0
        status = "bounced" if bounced else "delivered"
        emails.append(
            {
                "id": email_id,
                "domain_id": domain_id,
                "source": "api",
                "message_id": f"<{email_id}@bench.test>",
                "from_header": "Bench <hello@bench.test>",
                "from_address": "hello@bench.test",
                "envelope_from": "bounces@bench.test",
                "subject": f"Order #{n} has shipped",
                "size": 2048,
                "body_ref": email_id,
                "tags": {},
                "status": status,
                "created_at": at,
                "updated_at": at,
            }
        )
        code, enhanced = (550, "5.1.1") if bounced else (250, "2.0.0")
        reply = f"{code} {enhanced} {'no such user' if bounced else 'OK'}"
        recipients.append(
            {
                "id": recipient_id,
                "email_id": email_id,
                "position": 0,
                "address": address,
                "destination": f"dest{n % 50}.test",
                "kind": "to",
                "status": status,
                "smtp_code": code,
                "enhanced_code": enhanced,
                "response": reply,
                "attempts": 1,
                "created_at": at,
                "updated_at": at,
            }
        )
        attempts.append(
            {
                "email_id": email_id,
                "recipient_id": recipient_id,
                "attempt_id": new_id("att_"),
                "destination": f"dest{n % 50}.test",
                "attempt": 1,
                "status": status,
                "scope": "recipient",
                "mx_host": f"mx.dest{n % 50}.test",
                "tls_version": "TLSv1.3",
                "smtp_code": code,
                "enhanced_code": enhanced,
                "response": reply,
                "duration_ms": 120,
                "created_at": at,
            }
        )
        for sequence, kind in enumerate(("email.queued", f"email.{status}")):
            events.append(
                {
                    "id": new_id("evt_"),
                    "type": kind,
                    "email_id": email_id,
                    "recipient_id": recipient_id,
                    "domain_id": domain_id,
                    "sequence": sequence,
                    "payload": {"type": kind},
                    "created_at": at,
                    "dispatched_at": at,
                }
            )
    return emails, recipients, attempts, events


async def timed(client: httpx.AsyncClient, path: str, runs: int, **kw: Any) -> list[float]:
    took = []
    for _ in range(runs):
        started = time.perf_counter()
        answer = await client.get(path, **kw)
        took.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    return took


def psql(statement: str) -> None:
    subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-c", statement], check=True)


async def run(emails: int, store: str, runs: int, directory: Path) -> None:
    database = f"bench_dashboard_{random.randrange(10**9)}"
    overrides: dict[str, Any] = {}
    if store == "postgresql":
        psql(f"CREATE DATABASE {database}")
        overrides["database_url"] = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}"
    settings = load_settings(
        data_dir=directory, secret_key=SECRET_KEY, rate_limit_per_second=0, **overrides
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.spool_path.mkdir(parents=True, exist_ok=True)
    await upgrade_async(settings.database_url)
    services = Services.build(settings)
    try:
        await prepare_secrets(services.db)
        domain = await create_domain(services.db, "bench.test")
        key = (await create_key(services.db, "bench")).key
        started = time.perf_counter()
        for first in range(0, emails, CHUNK):
            e, r, a, v = rows(min(CHUNK, emails - first), domain.id)
            async with services.db.write() as conn:
                await email_store.insert_emails(conn, e)
                await email_store.insert_recipients(conn, r)
                await email_store.insert_attempts(conn, a)
                await email_store.insert_events(conn, v)
        print(f"seeded {emails} emails on {store} in {time.perf_counter() - started:.1f} s")
        transport = httpx.ASGITransport(app=create_api(services))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            sent = await client.post(
                "/v1/emails",
                json={
                    "from": "hello@bench.test",
                    "to": "someone@dest1.test",
                    "subject": "Hi",
                    "text": "Hello",
                },
                headers={"Authorization": f"Bearer {key}"},
            )
            assert sent.status_code == 202, sent.text
            email_id = sent.json()["id"]
            form = await client.get("/")
            token = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert token
            signed = await client.post("/signin", data={"key": key, "csrf": token.group(1)})
            assert signed.status_code == 303, signed.text
            pages = {
                "send log (GET /emails)": ("/emails", {}),
                "send log rows (htmx poll)": ("/emails/rows", {}),
                "send log, status=bounced": ("/emails", {"params": {"status": "bounced"}}),
                "send log, recipient filter": (
                    "/emails",
                    {"params": {"recipient": "user77@dest27.test"}},
                ),
                "email detail (GET /emails/{id})": (f"/emails/{email_id}", {}),
                "recipient lookup": ("/recipients", {"params": {"address": "user77@dest27.test"}}),
                "overview page (GET /)": ("/", {}),
                "overview, 24 h (/overview/day)": ("/overview/day", {}),
                "overview, 7 d (/overview/week)": ("/overview/week", {}),
                "API GET /v1/emails": (
                    "/v1/emails",
                    {"headers": {"Authorization": f"Bearer {key}"}},
                ),
            }
            for name, (path, kw) in pages.items():
                await timed(client, path, 2, **kw)  # warm
                took = sorted(await timed(client, path, runs, **kw))
                p95 = took[min(len(took) - 1, int(len(took) * 0.95))]
                print(
                    f"{store:10} {name:34} median {statistics.median(took):7.1f} ms"
                    f"  p95 {p95:7.1f} ms"
                )
    finally:
        await services.close()
        if store == "postgresql":
            psql(f"DROP DATABASE IF EXISTS {database}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emails", type=int, default=100_000)
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(run(args.emails, args.store, args.runs, Path(directory) / "data"))


if __name__ == "__main__":
    main()
