"""Counting TLS sessions under destinations' policies, for TLS reports (RFC 8460).

Each connection tried under an MTA-STS or DANE policy counts once: a success,
or a failure by its result type. Counts gather in memory (a dict increment on
the delivery path, nothing for destinations without a policy) and go to the
store in one statement per flush, where every worker's add up per UTC day.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from postline.metrics import Metrics
from postline.model import TlsInfo, TlsPolicySource
from postline.store import tls_reports as report_store
from postline.store.db import Database
from postline.store.types import Clock, utcnow

#: The policies TLS reports are about, and their RFC 8460 policy-type.
POLICY_TYPES = {
    TlsPolicySource.MTA_STS: "sts",
    TlsPolicySource.MTA_STS_TESTING: "sts",
    TlsPolicySource.DANE: "tlsa",
}
SUCCESS = "success"


def day_of(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")


class TlsCounts:
    def __init__(self, db: Database, metrics: Metrics, *, clock: Clock = utcnow) -> None:
        self.db = db
        self.metrics = metrics
        self.clock = clock
        self._pending: Counter[report_store.CountKey] = Counter()

    def note(self, domain: str, mx_host: str | None, tls: TlsInfo) -> None:
        """One connection (or a refusal before any) under ``tls.policy``."""
        policy_type = POLICY_TYPES.get(tls.policy)
        if policy_type is None:
            return
        if tls.failure is not None:
            result = tls.failure
        elif tls.version is not None:
            result = SUCCESS
        else:
            return  # no TLS result: the connection itself failed
        self.note_result(domain, policy_type, result, mx_host)

    def note_result(
        self, domain: str, policy_type: str, result: str, mx_host: str | None = None
    ) -> None:
        """One result of an RFC 8460 ``policy_type`` (``sts``, ``tlsa``, ``no-policy-found``)."""
        key = (day_of(self.clock()), domain, policy_type, result, mx_host or "")
        self._pending[key] += 1
        self.metrics.tls_sessions.labels(policy_type=policy_type, result=result).inc()

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    async def flush(self) -> None:
        """Add what was counted since the last flush to the store (kept on failure)."""
        if not self._pending:
            return
        taken, self._pending = self._pending, Counter()
        try:
            async with self.db.write() as conn:
                await report_store.add_counts(conn, dict(taken))
        except BaseException:
            self._pending.update(taken)
            raise
