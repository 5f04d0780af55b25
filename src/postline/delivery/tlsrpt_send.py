"""Daily TLS reports (RFC 8460): one per policy domain and finished UTC day.

A worker claims a day's counts of a domain (``store.tls_reports.claim_day``:
one claim wins across workers), looks up ``_smtp._tls.<domain>`` TXT for its
``rua`` and sends the JSON report, gzipped, to each: ``https:`` as a POST
(``application/tlsrpt+gzip``, through :mod:`pinned_https`), ``mailto:`` as an
email through Postline's own queue and engine (from ``POSTLINE_TLSRPT_FROM``,
DKIM-signed by its sending domain). Reports are best effort, as the RFC has
them: a claimed report that cannot be sent is logged, not retried.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import dns.asyncresolver

from postline.delivery.pinned_https import HttpsError, PinnedHttps
from postline.delivery.routing import lookup_texts
from postline.delivery.tlsrpt import SUCCESS, day_of
from postline.metrics import Metrics
from postline.store import mta_sts as sts_store
from postline.store import tls_reports as report_store
from postline.store.db import Database
from postline.store.types import Clock, utcnow

log = logging.getLogger("postline.tlsrpt")

#: Days of counts kept after their report (GET /v1/destinations/{domain} shows 7).
KEEP_DAYS = 30

#: Sends one report by email: (policy domain, rua address, report id, gzipped JSON).
MailReport = Callable[[str, str, str, bytes], Awaitable[None]]


def parse_rua(texts: list[str]) -> list[str]:
    """The ``rua`` URIs of the one ``v=TLSRPTv1`` record (RFC 8460 3); [] otherwise."""
    found: list[list[str]] = []
    for text in texts:
        fields = [f.strip() for f in text.split(";")]
        if not fields or fields[0].replace(" ", "") != "v=TLSRPTv1":
            continue
        uris: list[str] = []
        for item in fields[1:]:
            key, _, value = item.partition("=")
            if key.strip() == "rua":
                uris = [u.strip() for u in value.split(",") if u.strip()]
        found.append(uris)
    return found[0] if len(found) == 1 else []


def build_report(
    *,
    organization: str,
    contact: str,
    report_id: str,
    day: str,
    domain: str,
    counts: list[report_store.TlsCount],
    sts_policy: list[str],
) -> dict[str, Any]:
    """The report's JSON (RFC 8460 4.3): one policy entry per policy type."""
    start = datetime.strptime(day, "%Y-%m-%d")
    end = start + timedelta(days=1) - timedelta(seconds=1)
    by_type: dict[str, list[report_store.TlsCount]] = defaultdict(list)
    for count in counts:
        by_type[count.policy_type].append(count)
    policies = []
    for policy_type, rows in sorted(by_type.items()):
        failures = [r for r in rows if r.result != SUCCESS]
        details: dict[tuple[str, str], int] = defaultdict(int)
        for row in failures:
            details[(row.result, row.mx_host)] += row.count
        mx_hosts = sorted({r.mx_host for r in rows if r.mx_host})
        policies.append(
            {
                "policy": {
                    "policy-type": policy_type,
                    "policy-string": sts_policy if policy_type == "sts" else [],
                    "policy-domain": domain,
                    "mx-host": mx_hosts,
                },
                "summary": {
                    "total-successful-session-count": sum(
                        r.count for r in rows if r.result == SUCCESS
                    ),
                    "total-failure-session-count": sum(r.count for r in failures),
                },
                "failure-details": [
                    {
                        "result-type": result,
                        **({"receiving-mx-hostname": mx} if mx else {}),
                        "failed-session-count": n,
                    }
                    for (result, mx), n in sorted(details.items())
                ],
            }
        )
    return {
        "organization-name": organization,
        "date-range": {
            "start-datetime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end-datetime": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "contact-info": contact,
        "report-id": report_id,
        "policies": policies,
    }


class TlsReporter:
    def __init__(
        self,
        db: Database,
        resolver: dns.asyncresolver.Resolver,
        https: PinnedHttps,
        metrics: Metrics,
        *,
        organization: str,
        contact: str,
        mail: MailReport | None,
        clock: Clock = utcnow,
    ) -> None:
        """``mail``: how a ``mailto:`` report is sent; None: it is not (no sender set)."""
        self.db = db
        self.resolver = resolver
        self.https = https
        self.metrics = metrics
        self.organization = organization
        self.contact = contact
        self.mail = mail
        self.clock = clock

    async def send_due(self) -> int:
        """Send the reports of finished days not sent yet; how many were claimed here."""
        now = self.clock()
        async with self.db.read() as conn:
            due = await report_store.unreported_days(conn, day_of(now))
        sent = 0
        if due:
            async with self.db.write() as conn:
                await report_store.forget_before(conn, day_of(now - timedelta(days=KEEP_DAYS)))
        for day, domain in due:
            async with self.db.write() as conn:
                counts = await report_store.claim_day(conn, day, domain, now)
            if counts:
                sent += 1
                await self._send(day, domain, counts)
        return sent

    async def _send(self, day: str, domain: str, counts: list[report_store.TlsCount]) -> None:
        ruas = parse_rua(await lookup_texts(self.resolver, f"_smtp._tls.{domain}", "TXT"))
        if not ruas:
            self.metrics.tls_reports.labels(result="no_rua").inc()
            return
        async with self.db.read() as conn:
            stored = await sts_store.get_policy(conn, domain)
        sts_policy = []
        if stored is not None:
            sts_policy = [
                "version: STSv1",
                f"mode: {stored.mode}",
                *(f"mx: {p}" for p in stored.patterns),
                f"max_age: {stored.max_age}",
            ]
        report_id = f"{day}.{domain}@{self.organization}"
        report = build_report(
            organization=self.organization,
            contact=self.contact,
            report_id=report_id,
            day=day,
            domain=domain,
            counts=counts,
            sts_policy=sts_policy,
        )
        body = gzip.compress(json.dumps(report).encode())
        for rua in ruas:
            try:
                await self._deliver(rua, domain, report_id, body)
            except (HttpsError, ReportError) as exc:
                log.warning("TLS report %s to %s: %s", report_id, rua, exc)
                self.metrics.tls_reports.labels(result="failed").inc()
            else:
                log.info("TLS report %s sent to %s", report_id, rua)
                self.metrics.tls_reports.labels(result="sent").inc()

    async def _deliver(self, rua: str, domain: str, report_id: str, body: bytes) -> None:
        parts = urlsplit(rua)
        if parts.scheme == "https" and parts.hostname:
            path = parts.path or "/"
            if parts.query:
                path += f"?{parts.query}"
            answer = await self.https.request(
                "POST",
                parts.hostname,
                parts.port or 443,
                path,
                content=body,
                headers={"Content-Type": "application/tlsrpt+gzip"},
            )
            if not 200 <= answer.status < 300:
                raise ReportError(f"answered {answer.status}")
            return
        if parts.scheme == "mailto" and parts.path:
            if self.mail is None:
                raise ReportError("POSTLINE_TLSRPT_FROM is not set: mailto reports are not sent")
            await self.mail(domain, unquote(parts.path), report_id, body)
            return
        raise ReportError("not an https: or mailto: URI")


class ReportError(Exception):
    """A report that could not be handed over."""
