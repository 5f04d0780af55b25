"""Postfix as the benchmark's peer: installed from Debian's package, run as a private instance.

The instance has its own configuration, queue and data directories in a temporary
directory, listens on one loopback injection port only (no port 25), relays every
message to the sink, and is started and stopped with ``postfix -c DIR start|stop``,
without systemd. It leaves the system's own Postfix (if any) alone.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

TOOLS = ("postfix", "postconf", "smtp-sink", "smtp-source")
SBIN = ("/usr/sbin", "/usr/bin", "/usr/lib/postfix/sbin")
PRESEED = "postfix postfix/main_mailer_type select No configuration\n"
MASTER_CF = (Path("/etc/postfix/master.cf"), Path("/usr/share/postfix/master.cf.dist"))


class PeerError(Exception):
    """The peer cannot be installed or started; the message says what to do."""


def tool(name: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN]))
    if found is None:
        raise PeerError(f"{name} not found")
    return found


def missing_tools() -> list[str]:
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    return [name for name in TOOLS if shutil.which(name, path=path) is None]


def system_postfix_running() -> bool:
    try:
        result = subprocess.run(
            [tool("postfix"), "status"], capture_output=True, check=False, timeout=30
        )
    except PeerError:
        return False
    return result.returncode == 0


def ensure_installed() -> None:
    """Install Debian's postfix package (smtp-sink, smtp-source, the relay) when missing.

    Preseeded to "No configuration": Debian then writes no main.cf and starts nothing.
    Should the package start the system instance anyway, it is stopped again: the
    benchmark runs its own instance, on its own ports.
    """
    missing = missing_tools()
    if not missing:
        return
    if os.geteuid() != 0:
        raise PeerError(
            f"{', '.join(missing)} missing: install Debian's postfix package as root "
            "(see docs/BENCHMARK.md) or run make bench as root"
        )
    if shutil.which("apt-get") is None:
        raise PeerError(f"{', '.join(missing)} missing and no apt-get: install Postfix 3.x")
    print("bench: installing Debian's postfix package (smtp-sink, smtp-source, the relay)")
    was_running = system_postfix_running()
    subprocess.run(["debconf-set-selections"], input=PRESEED.encode(), check=True)
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "postfix"]
    if subprocess.run(install, env=env, check=False, stdout=subprocess.DEVNULL).returncode:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(install, env=env, check=True, stdout=subprocess.DEVNULL)
    if not was_running and system_postfix_running():
        subprocess.run([tool("postfix"), "stop"], check=False, capture_output=True)
    if missing_tools():
        raise PeerError(f"installing postfix did not provide {', '.join(missing_tools())}")


def version() -> str:
    result = subprocess.run(
        [tool("postconf"), "-d", "-h", "mail_version"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "?"


def main_cf(root: Path, inject_port: int, sink_port: int) -> str:
    """A loopback relay: nothing delivered locally, everything to the sink, fsync as shipped."""
    return "\n".join(
        [
            "compatibility_level = 3.6",
            f"queue_directory = {root}/queue",
            f"data_directory = {root}/data",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "myhostname = postfix.bench.test",
            "mydestination =",
            "mynetworks = 127.0.0.0/8",
            "smtpd_relay_restrictions = permit_mynetworks, reject",
            # The sink is the MX of every destination domain: one next hop for all.
            f"relayhost = [127.0.0.1]:{sink_port}",
            "alias_maps =",
            "alias_database =",
            "local_recipient_maps =",
            f"maillog_file = {root}/postfix.log",
            f"maillog_file_prefixes = {root}",
            # delay= in milliseconds (default: hundredths), for the latency figures.
            "delay_logging_resolution_limit = 3",
            f"# injection port {inject_port} is in master.cf",
            "",
        ]
    )


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class PostfixInstance:
    """One private Postfix under ``root``: injection on 127.0.0.1:inject_port."""

    def __init__(self, root: Path, inject_port: int, sink_port: int) -> None:
        self.root = root
        self.conf = root / "conf"
        self.inject_port = inject_port
        self.sink_port = sink_port
        self.master_pid = 0

    def _postconf(self, *args: str) -> None:
        subprocess.run([tool("postconf"), "-c", str(self.conf), *args], check=True)

    def configure(self) -> None:
        self.root.chmod(0o755)  # the daemons run as the postfix user
        self.conf.mkdir()
        (self.root / "queue").mkdir()
        data = self.root / "data"
        data.mkdir()
        shutil.chown(data, user="postfix")
        master = next((path for path in MASTER_CF if path.exists()), None)
        if master is None:
            raise PeerError("no master.cf to start from (/etc/postfix/master.cf)")
        shutil.copy(master, self.conf / "master.cf")
        (self.conf / "main.cf").write_text(main_cf(self.root, self.inject_port, self.sink_port))
        self._postconf("-M#", "smtp/inet")  # no listener on port 25
        port = self.inject_port
        self._postconf("-M", f"127.0.0.1:{port}/inet=127.0.0.1:{port} inet n - n - - smtpd")
        self._postconf("-F", "*/*/chroot = n")

    async def start(self) -> None:
        result = subprocess.run(
            [tool("postfix"), "-c", str(self.conf), "start"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise PeerError(f"postfix start failed: {result.stderr.strip()} {self.log_tail()}")
        deadline = time.monotonic() + 30
        pid_file = self.root / "queue" / "pid" / "master.pid"
        while not (pid_file.exists() and port_open(self.inject_port)):
            if time.monotonic() > deadline:
                raise PeerError(f"postfix did not listen on {self.inject_port}: {self.log_tail()}")
            await asyncio.sleep(0.1)
        self.master_pid = int(pid_file.read_text().split()[0])

    async def stop(self) -> None:
        subprocess.run(
            [tool("postfix"), "-c", str(self.conf), "stop"], capture_output=True, check=False
        )
        deadline = time.monotonic() + 30
        while self.master_pid and Path(f"/proc/{self.master_pid}").exists():
            if time.monotonic() > deadline:
                subprocess.run(
                    [tool("postfix"), "-c", str(self.conf), "abort"],
                    capture_output=True,
                    check=False,
                )
                break
            await asyncio.sleep(0.1)

    def log_tail(self) -> str:
        log = self.root / "postfix.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def delivery_delays(self) -> list[float]:
        """Seconds from arrival to delivery of each message sent (``delay=`` of status=sent)."""
        log = self.root / "postfix.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return [float(m) for m in re.findall(r" delay=([0-9.]+),.* status=sent ", text)]
