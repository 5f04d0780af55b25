"""A programmable authoritative DNS server on loopback (dnslib, UDP + TCP, background threads).

Names are case-insensitive and may be given with or without the trailing dot.

* a name with records, but none of the asked type   -> NOERROR, empty answer (NODATA)
* a name without any record                           -> NXDOMAIN
* ``servfail(name)``                                  -> SERVFAIL for every query of that name
* ``timeout(name)``                                   -> queries of that name are never answered
* ``restore(name)``                                   -> ends either; the records answer again
* ``sign(zone)``                                      -> answers for names in ``zone`` carry the
                                                         AD bit, as a validating resolver's would
* ``add_rrset(rrset)``                                -> any dnspython RRset (DNSKEY, DS, RRSIG,
                                                         NSEC, SOA...); an RRSIG is answered
                                                         beside the RRset it covers
* ``add_denial(name, *rrsets)``                       -> the authority section (SOA, NSEC and
                                                         their RRSIGs) of a negative answer
"""

from __future__ import annotations

import logging
import socket
import socketserver
import struct
import threading
from dataclasses import dataclass
from typing import Any, Literal

import dns.rdatatype
from dnslib import AAAA, CNAME, MX, QTYPE, RCODE, RD, RR, TXT, A, DNSError, DNSRecord
from dnslib.server import DNSServer

__all__ = ["FakeDNS"]

log = logging.getLogger(__name__)

DEFAULT_TTL = 60
_MAX_CNAME_HOPS = 8
_Mode = Literal["servfail", "timeout"]


def _norm(name: str) -> str:
    """Canonical key for a DNS name: lower-case, no trailing dot, IDNA for non-ASCII."""
    name = name.strip().rstrip(".")
    if not name.isascii():
        name = name.encode("idna").decode("ascii")
    return name.lower()


def _txt_strings(text: str | bytes) -> list[bytes]:
    """Split one TXT value into <=255-byte character-strings (e.g. long DKIM keys)."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if not raw:
        return [b""]
    return [raw[i : i + 255] for i in range(0, len(raw), 255)]


@dataclass(frozen=True)
class _Record:
    rtype: str
    ttl: int
    rdata: Any  # a dnslib RD instance
    target: str | None = None  # CNAME target (normalised), for chasing
    covers: str | None = None  # an RRSIG's covered type


class _DNSHandler(socketserver.BaseRequestHandler):
    """Serves UDP datagrams and (length-prefixed, possibly several per connection) TCP queries."""

    def handle(self) -> None:
        server: Any = self.server
        fake: FakeDNS = server.fake_dns
        if isinstance(self.request, tuple):
            data, sock = self.request
            reply = fake._answer(data, "udp")
            if reply is not None:
                sock.sendto(reply, self.client_address)
            return
        conn: socket.socket = self.request
        conn.settimeout(5.0)
        try:
            while True:
                header = _recv_exact(conn, 2)
                if header is None:
                    return
                (length,) = struct.unpack("!H", header)
                data = _recv_exact(conn, length)
                if data is None:
                    return
                reply = fake._answer(data, "tcp")
                if reply is None:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = conn.recv(remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class FakeDNS:
    """Authoritative DNS server for tests; ``nameserver`` is ``"127.0.0.1:PORT"``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, tcp: bool = True) -> None:
        self.host = host
        self.port = port
        self.tcp = tcp
        self.queries: list[tuple[str, str]] = []
        """(qname lower-cased without trailing dot, qtype such as "MX") for every query."""
        self._lock = threading.Lock()
        self._records: dict[str, list[_Record]] = {}
        self._modes: dict[str, _Mode] = {}
        self._signed: set[str] = set()
        self._denials: dict[str, list[tuple[str, _Record]]] = {}
        self._servers: list[DNSServer] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._servers:
            raise RuntimeError("FakeDNS already started")
        self._stopping.clear()
        attempts = 20 if self.port == 0 else 1
        last_error: OSError | None = None
        for _ in range(attempts):
            # dnslib wants a resolver object; ours is unused because _DNSHandler replaces
            # dnslib's DNSHandler (to drop queries, set TC and keep TCP connections open).
            udp = DNSServer(self, address=self.host, port=self.port, handler=_DNSHandler)
            udp.server.fake_dns = self
            port = int(udp.server.server_address[1])
            servers = [udp]
            if self.tcp:
                try:
                    tcp = DNSServer(
                        self, address=self.host, port=port, tcp=True, handler=_DNSHandler
                    )
                except OSError as exc:  # port taken for TCP: try another one
                    udp.server.server_close()
                    last_error = exc
                    continue
                tcp.server.fake_dns = self
                servers.append(tcp)
            self.port = port
            self._servers = servers
            break
        else:
            raise RuntimeError(f"FakeDNS could not bind UDP+TCP on {self.host}: {last_error}")
        for srv in self._servers:
            thread = threading.Thread(
                target=srv.server.serve_forever,
                kwargs={"poll_interval": 0.02},
                name=f"FakeDNS-{self.host}:{self.port}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Shut the servers down and close their sockets. Idempotent."""
        self._stopping.set()
        servers, self._servers = self._servers, []
        threads, self._threads = self._threads, []
        # shutdown() blocks for up to one poll interval: shut UDP and TCP down in parallel.
        stoppers = [threading.Thread(target=srv.server.shutdown, daemon=True) for srv in servers]
        for stopper in stoppers:
            stopper.start()
        for thread in [*stoppers, *threads]:
            thread.join(timeout=5.0)
        for srv in servers:
            srv.server.server_close()

    def __enter__(self) -> FakeDNS:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def nameserver(self) -> str:
        """``"host:port"`` - the format of POSTLINE_DNS_NAMESERVERS."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __repr__(self) -> str:
        return f"FakeDNS({self.nameserver}, names={len(self._records)})"

    # ------------------------------------------------------------------ programming

    def add_mx(self, domain: str, *hosts: tuple[int, str], ttl: int = DEFAULT_TTL) -> None:
        """Add MX records: ``add_mx("x.test", (10, "mx1.x.test"), (20, "mx2.x.test"))``."""
        self._add(domain, [_Record("MX", ttl, MX(exchange, pref)) for pref, exchange in hosts])

    def null_mx(self, domain: str, ttl: int = DEFAULT_TTL) -> None:
        """RFC 7505 null MX (``MX 0 .``): the domain accepts no mail."""
        self._add(domain, [_Record("MX", ttl, MX(".", 0))])

    def add_a(self, name: str, *ips: str, ttl: int = DEFAULT_TTL) -> None:
        self._add(name, [_Record("A", ttl, A(ip)) for ip in ips])

    def add_aaaa(self, name: str, *ips: str, ttl: int = DEFAULT_TTL) -> None:
        self._add(name, [_Record("AAAA", ttl, AAAA(ip)) for ip in ips])

    def add_txt(self, name: str, *texts: str, ttl: int = DEFAULT_TTL) -> None:
        """One TXT record per text; texts over 255 bytes are split into several strings."""
        self._add(name, [_Record("TXT", ttl, TXT(_txt_strings(t))) for t in texts])

    def add_cname(self, name: str, target: str, ttl: int = DEFAULT_TTL) -> None:
        """CNAME; answers chase it through this server's own records."""
        self._add(name, [_Record("CNAME", ttl, CNAME(target), target=_norm(target))])

    def add_tlsa(
        self, name: str, usage: int, selector: int, mtype: int, data: bytes, ttl: int = DEFAULT_TTL
    ) -> None:
        """A TLSA record (RFC 6698), e.g. ``add_tlsa("_25._tcp.mx.x.test", 3, 1, 1, digest)``."""
        rdata = RD(bytes([usage, selector, mtype]) + data)
        self._add(name, [_Record("TLSA", ttl, rdata)])

    def add_rrset(self, rrset: Any) -> None:
        """A dnspython RRset, kept as wire-format rdata (DNSSEC records in tests)."""
        self._add(str(rrset.name), _records(rrset))

    def add_denial(self, name: str, *rrsets: Any) -> None:
        """What the authority section of a NODATA/NXDOMAIN answer for ``name`` holds
        (a signed zone's SOA, NSEC/NSEC3 and RRSIG RRsets)."""
        found = [(str(r.name), rec) for r in rrsets for rec in _records(r)]
        with self._lock:
            self._denials.setdefault(_norm(name), []).extend(found)

    def sign(self, zone: str) -> None:
        """Answers (NOERROR ones) for ``zone`` and the names under it carry the AD bit:
        this server plays a validating resolver on loopback that found them secure."""
        with self._lock:
            self._signed.add(_norm(zone))

    def servfail(self, name: str) -> None:
        """Every query for ``name`` answers SERVFAIL (until ``remove``/``clear``)."""
        with self._lock:
            self._modes[_norm(name)] = "servfail"

    def timeout(self, name: str) -> None:
        """Queries for ``name`` get no answer at all (until ``remove``/``clear``)."""
        with self._lock:
            self._modes[_norm(name)] = "timeout"

    def restore(self, name: str) -> None:
        """End a ``servfail``/``timeout`` of ``name``: its records are answered again
        (unlike ``remove``, which forgets them too) - the outage is over."""
        with self._lock:
            self._modes.pop(_norm(name), None)

    def remove(self, name: str) -> None:
        """Forget all records (and servfail/timeout behaviour) of ``name``."""
        key = _norm(name)
        with self._lock:
            self._records.pop(key, None)
            self._modes.pop(key, None)

    def clear(self) -> None:
        """Forget every record and behaviour (the query log is kept)."""
        with self._lock:
            self._records.clear()
            self._modes.clear()
            self._signed.clear()
            self._denials.clear()

    def queries_for(self, name: str, qtype: str | None = None) -> list[tuple[str, str]]:
        key = _norm(name)
        return [q for q in list(self.queries) if q[0] == key and (qtype is None or q[1] == qtype)]

    # ------------------------------------------------------------------ serving

    def _add(self, name: str, records: list[_Record]) -> None:
        if not records:
            raise ValueError("at least one record is required")
        with self._lock:
            self._records.setdefault(_norm(name), []).extend(records)

    def _answer(self, data: bytes, protocol: str) -> bytes | None:
        """Wire-format reply for one query, or None to stay silent."""
        try:
            request = DNSRecord.parse(data)
        except DNSError as exc:
            log.debug("FakeDNS: unparsable %s query: %s", protocol, exc)
            return None
        reply = self._resolve(request)
        if reply is None:
            if protocol == "tcp":
                # Keep the connection open without answering, like a dead server would.
                self._stopping.wait(30.0)
            return None
        wire: bytes = reply.pack()
        if protocol == "udp":
            limit = 512
            for extra in request.ar:
                if extra.rtype == QTYPE.OPT:
                    limit = max(512, int(extra.rclass))
            if len(wire) > limit:
                reply.rr = []
                reply.auth = []
                reply.ar = []
                reply.header.tc = 1
                wire = reply.pack()
        return wire

    def _resolve(self, request: Any) -> Any:
        """Build the dnslib reply for ``request`` (None means: drop it)."""
        question = request.q
        name = _norm(str(question.qname))
        try:
            qtype = str(QTYPE[question.qtype])
        except Exception:
            qtype = f"TYPE{question.qtype}"
        self.queries.append((name, qtype))
        with self._lock:
            modes = dict(self._modes)
            records = {key: list(value) for key, value in self._records.items()}
            signed = set(self._signed)
            denials = list(self._denials.get(name, ()))
        reply = request.reply()
        reply.header.ad = 0  # dnslib copies the query's flags; AD is only for signed names
        owner, current = question.qname, name
        for _ in range(_MAX_CNAME_HOPS):
            mode = modes.get(current)
            if mode == "timeout":
                log.debug("FakeDNS: dropping %s %s (timeout)", current, qtype)
                return None
            if mode == "servfail":
                reply.rr = []
                reply.header.rcode = RCODE.SERVFAIL
                break
            rrs = records.get(current)
            if not rrs:
                reply.header.rcode = RCODE.NXDOMAIN
                _add_authority(reply, denials)
                break
            matching = [r for r in rrs if qtype in (r.rtype, "ANY")]
            cnames = [r for r in rrs if r.rtype == "CNAME"]
            if matching or not cnames:
                matching += [r for r in rrs if r.covers is not None and r.covers == qtype]
                if not matching:
                    _add_authority(reply, denials)
                for rec in matching:
                    reply.add_answer(
                        RR(owner, getattr(QTYPE, rec.rtype), rdata=rec.rdata, ttl=rec.ttl)
                    )
                if matching and any(current == z or current.endswith("." + z) for z in signed):
                    reply.header.ad = 1
                break
            cname = cnames[0]
            reply.add_answer(RR(owner, QTYPE.CNAME, rdata=cname.rdata, ttl=cname.ttl))
            assert cname.target is not None
            owner, current = cname.rdata.label, cname.target
        return reply


def _records(rrset: Any) -> list[_Record]:
    """dnslib records (generic rdata in wire form) for a dnspython RRset."""
    rtype = dns.rdatatype.to_text(rrset.rdtype)
    covers = dns.rdatatype.to_text(rrset.covers) if rrset.covers else None
    return [_Record(rtype, rrset.ttl, RD(r.to_digestable()), covers=covers) for r in rrset]


def _add_authority(reply: Any, denials: list[tuple[str, _Record]]) -> None:
    for owner, rec in denials:
        reply.add_auth(RR(owner, getattr(QTYPE, rec.rtype), rdata=rec.rdata, ttl=rec.ttl))
