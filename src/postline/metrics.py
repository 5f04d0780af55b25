"""Prometheus metrics, in a registry owned by the application (no globals).

``postline serve`` counts in three processes (postline.delivery_process): then
prometheus_client keeps the values in files of a shared directory, and ``render``
sums what every process of the installation counted. A gauge is then the value most
recently set by any of them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector


class Metrics:
    def __init__(self, shared_dir: str | None = None) -> None:
        """``shared_dir``: the multiprocess directory this process counts into (set
        in the environment before prometheus_client was imported), None for none."""
        self.shared_dir = shared_dir
        self.registry = CollectorRegistry()
        self.emails_accepted = Counter(
            "postline_emails_accepted",
            "Emails accepted (durable and queued)",
            ["source"],
            registry=self.registry,
        )
        self.recipient_outcomes = Counter(
            "postline_recipient_outcomes",
            "Recipient outcomes recorded, by status",
            ["status"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "postline_queue_depth",
            "Delivery jobs waiting or leased",
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self.queue_in_flight = Gauge(
            "postline_queue_in_flight",
            "Delivery jobs leased right now",
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self.accept_seconds = Histogram(
            "postline_accept_seconds",
            "Time to make a submission durable (HTTP request handling included)",
            registry=self.registry,
        )
        self.accept_group_calls = Histogram(
            "postline_accept_group_calls",
            "Accept calls (API requests, SMTP submissions) sharing one group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 500),
            registry=self.registry,
        )
        self.delivery_seconds = Histogram(
            "postline_delivery_seconds",
            "Time of one delivery attempt (DNS + SMTP + recording)",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )

        self.webhook_attempts = Counter(
            "postline_webhook_attempts",
            "Webhook delivery attempts, by outcome",
            ["outcome"],
            registry=self.registry,
        )

        self.rate_limited = Counter(
            "postline_rate_limited",
            "Requests refused by the per-key rate limit (HTTP 429, SMTP 450), by source",
            ["source"],
            registry=self.registry,
        )
        self.rate_limit_unchecked = Counter(
            "postline_rate_limit_unchecked",
            "Requests let through unchecked because the queue backend did not answer",
            registry=self.registry,
        )

        self.inbound_reports = Counter(
            "postline_inbound_reports",
            "Messages taken by the inbound listener, by kind (bounce, complaint, unparsed,"
            " routed) and result (applied, unmatched, stored)",
            ["kind", "result"],
            registry=self.registry,
        )
        self.inbound_refused = Counter(
            "postline_inbound_refused",
            "RCPTs refused by the inbound listener: not a return path, or a forged token",
            ["reason"],
            registry=self.registry,
        )

        self.tls_sessions = Counter(
            "postline_tls_sessions",
            "SMTP connections under a destination's TLS policy (policy_type sts or tlsa),"
            " by result: success, or an RFC 8460 failure type; policy fetches that failed"
            " (policy_type no-policy-found)",
            ["policy_type", "result"],
            registry=self.registry,
        )
        self.tls_reports = Counter(
            "postline_tls_reports",
            "Daily TLS reports (RFC 8460), by result: sent, failed, no_rua",
            ["result"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        if self.shared_dir is None:
            return generate_latest(self.registry)
        summed = CollectorRegistry()
        MultiProcessCollector(summed, self.shared_dir)  # type: ignore[no-untyped-call]
        return generate_latest(summed)
