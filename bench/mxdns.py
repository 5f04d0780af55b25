"""An authoritative DNS server on loopback for benchmarks: every given domain's MX is the sink.

Run as its own process: ``python bench/mxdns.py DOMAIN... [closed:DOMAIN...]``. It
answers, on UDP and TCP of one loopback port, ``MX 10 sink.bench.test`` for each domain
and ``A 127.0.0.1`` for ``sink.bench.test`` (TTLs of an hour, so a run resolves each name
once), NXDOMAIN for anything else, and prints ``ready PORT`` once listening. A domain
given as ``closed:DOMAIN`` gets ``MX 10 closed.bench.test``, ``A 127.0.0.2``, where
nothing listens (the sink binds 127.0.0.1 only): every connection is refused, so the
destination's circuit breaker opens. Postline reaches it with
``POSTLINE_DNS_NAMESERVERS=127.0.0.1:PORT`` and connects to the MX on
``POSTLINE_DELIVERY_PORT``, where the sink listens. (The file is not called ``dns.py``:
it would shadow dnspython for the scripts next to it.)
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from dnslib import MX, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

SINK_HOST = "sink.bench.test"
CLOSED_HOST = "closed.bench.test"
CLOSED_PREFIX = "closed:"
TTL = 3600


class MxResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, domains: list[str]) -> None:
        self.mx: dict[str, str] = {}
        for domain in domains:
            closed = domain.startswith(CLOSED_PREFIX)
            name = domain.removeprefix(CLOSED_PREFIX).lower().rstrip(".")
            self.mx[name] = CLOSED_HOST if closed else SINK_HOST
        self.hosts = {SINK_HOST: "127.0.0.1", CLOSED_HOST: "127.0.0.2"}

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).lower().rstrip(".")
        qtype = request.q.qtype
        if name in self.mx:
            if qtype in (QTYPE.MX, QTYPE.ANY):
                mx = MX(self.mx[name], 10)
                reply.add_answer(RR(request.q.qname, QTYPE.MX, rdata=mx, ttl=TTL))
        elif name in self.hosts:
            if qtype in (QTYPE.A, QTYPE.ANY):
                address = A(self.hosts[name])
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=address, ttl=TTL))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


def main(domains: list[str]) -> None:
    resolver = MxResolver(domains)
    quiet = DNSLogger(log="-request,-reply,-truncated,-error", prefix=False)
    udp = DNSServer(resolver, address="127.0.0.1", port=0, logger=quiet)
    port = int(udp.server.server_address[1])
    tcp = DNSServer(resolver, address="127.0.0.1", port=port, tcp=True, logger=quiet)
    threads = [threading.Thread(target=s.server.serve_forever, daemon=True) for s in (udp, tcp)]
    for thread in threads:
        thread.start()
    print(f"ready {port}", flush=True)
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main(sys.argv[1:])
