"""Fetch an MTA-STS policy file over HTTPS (RFC 8461 3.3).

``https://mta-sts.<domain>/.well-known/mta-sts.txt``: the certificate verified
for that name (system trust anchors plus ``POSTLINE_TLS_CA_FILE``), no
redirects (a 3xx is a failure), at most :data:`MAX_POLICY_BYTES` read and the
whole fetch bounded in time, through :mod:`pinned_https` (our resolver, the
address policy), so a domain's DNS cannot point the fetch at the operator's
internal network.
"""

from __future__ import annotations

from postline.delivery.mtasts import StsError, StsPolicy, parse_policy
from postline.delivery.pinned_https import HttpsError, PinnedHttps

#: RFC 8461 3.3 suggests a limit of 64 KiB; policies are a few lines.
MAX_POLICY_BYTES = 64 * 1024
POLICY_PATH = "/.well-known/mta-sts.txt"


class FetchError(Exception):
    """The policy could not be fetched or was not a policy: one line saying why, and
    the RFC 8460 result type (``sts-policy-fetch-error`` or ``sts-policy-invalid``)."""

    def __init__(self, message: str, result_type: str = "sts-policy-fetch-error") -> None:
        super().__init__(message)
        self.result_type = result_type


class PolicyFetcher:
    def __init__(self, https: PinnedHttps, *, port: int = 443) -> None:
        self.https = https
        self.port = port

    async def fetch(self, domain: str, policy_id: str) -> StsPolicy:
        """The policy published for ``domain``, recorded as fetched for ``policy_id``."""
        host = f"mta-sts.{domain}"
        where = f"https://{host}{POLICY_PATH}"
        try:
            answer = await self.https.request("GET", host, self.port, POLICY_PATH)
        except HttpsError as exc:
            raise FetchError(str(exc)) from None
        if answer.status != 200:
            raise FetchError(f"{where} answered {answer.status}")
        if answer.content_type != "text/plain":
            raise FetchError(f"{where} is {answer.content_type or 'untyped'}, not text/plain")
        try:
            return parse_policy(answer.body.decode("utf-8", errors="replace"), policy_id)
        except StsError as exc:
            raise FetchError(f"{where}: not a policy: {exc}", "sts-policy-invalid") from None
