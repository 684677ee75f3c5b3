"""A private radsecproxy (Debian package ``radsecproxy``) for tests: RADIUS/UDP
in from radclient on a loopback port, RADIUS over TLS out to a radius-mfa
under test, with its own configuration directory; started as a child
process and stopped by pid. Never touches /etc/radsecproxy.conf.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from peers.process import free_udp_port, stop_process

RADSECPROXY = shutil.which("radsecproxy") or (
    "/usr/sbin/radsecproxy" if os.path.exists("/usr/sbin/radsecproxy") else None)

# What the README shows, minus the paths and ports the test fills in.
CONFIG = """\
ListenUDP 127.0.0.1:%(udp_port)d
LogLevel 4
LogDestination file://%(log)s

tls radius-mfa {
    CACertificateFile %(ca_file)s
    CertificateFile %(cert_file)s
    CertificateKeyFile %(key_file)s
}

client nas {
    host 127.0.0.1
    type udp
    secret %(secret)s
}

server radius-mfa {
    host %(server_host)s
    port %(server_port)d
    type tls
    tls radius-mfa
    secret radsec
    CertificateNameCheck on
    StatusServer off
}

realm * {
    server radius-mfa
}
"""


def available() -> bool:
    return RADSECPROXY is not None


class RadsecProxy:
    """radsecproxy on 127.0.0.1:``port`` (UDP, ``secret``) forwarding every
    request over TLS to ``server`` with the client certificate ``cert``/``key``."""

    def __init__(self, directory: Path, *, server: tuple[str, int], ca_file: Path,
                 cert_file: Path, key_file: Path, secret: str = "testing123"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_udp_port()
        self.config_path = self.directory / "radsecproxy.conf"
        self.log_path = self.directory / "radsecproxy.log"
        self.config_path.write_text(CONFIG % {
            "udp_port": self.port, "log": self.log_path, "ca_file": ca_file,
            "cert_file": cert_file, "key_file": key_file, "secret": secret,
            "server_host": server[0], "server_port": server[1]})
        self.proc: subprocess.Popen | None = None
        self._out = None

    def start(self, timeout: float = 10.0) -> "RadsecProxy":
        if RADSECPROXY is None:
            raise RuntimeError("radsecproxy is not installed (Debian package radsecproxy)")
        self._out = open(self.directory / "stdout.log", "ab")
        self.proc = subprocess.Popen(
            [RADSECPROXY, "-f", "-c", str(self.config_path), "-i", str(self.directory / "pid")],
            stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"radsecproxy exited {self.proc.returncode}:\n{self.log()}")
            if "radsecproxy revision" in self.log() or "listening" in self.log().lower():
                return self
            time.sleep(0.05)
        return self

    def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        code = stop_process(proc)
        if self._out is not None:
            self._out.close()
            self._out = None
        return code

    def log(self) -> str:
        parts = []
        for path in (self.log_path, self.directory / "stdout.log"):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def __enter__(self) -> "RadsecProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
