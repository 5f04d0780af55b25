"""An authoritative DNS server on loopback for benchmarks: every given domain's MX is the sink.

Run as its own process: ``python bench/mxdns.py DOMAIN...``. It answers, on UDP and
TCP of one loopback port, ``MX 10 sink.bench.test`` for each domain and ``A 127.0.0.1``
for ``sink.bench.test`` (TTLs of an hour, so a run resolves each name once), NXDOMAIN
for anything else, and prints ``ready PORT`` once listening. Postline reaches it with
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
TTL = 3600


class MxResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, domains: list[str]) -> None:
        self.domains = {domain.lower().rstrip(".") for domain in domains}

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).lower().rstrip(".")
        qtype = request.q.qtype
        if name in self.domains:
            if qtype in (QTYPE.MX, QTYPE.ANY):
                reply.add_answer(RR(request.q.qname, QTYPE.MX, rdata=MX(SINK_HOST, 10), ttl=TTL))
        elif name == SINK_HOST:
            if qtype in (QTYPE.A, QTYPE.ANY):
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("127.0.0.1"), ttl=TTL))
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
