"""A private FreeRADIUS 3.2 instance for tests: its own configuration
directory, a loopback port, started as a child process and stopped by pid.

Never touches the system instance (/etc/freeradius): everything lives under
the directory handed in. Several instances may run side by side (failover
tests). The users it knows:

* ``alice`` / ``alice-pw`` (PAP): an Access-Accept with Class, Filter-Id,
  Framed-IP-Address, Session-Timeout, Port-Limit (not in the default pass
  list) and a Cisco-AVPair (a vendor attribute radius-mfa has no dictionary
  entry for);
* ``bob`` / ``bob-pw`` (MS-CHAPv2, or PAP): the mschap module answers with
  MS-CHAP2-Success and the MS-MPPE keys;
* ``carol`` / ``carol-pw``: the first Access-Request gets an Access-Challenge
  with State ``CAROL_STATE`` and Reply-Message "Enter your new PIN"; an
  Access-Request with that State and ``CAROL_PIN`` as the password is
  accepted, anything else rejected.

``FrontProxy`` is the other role: FreeRADIUS in front of a home server (a
radius-mfa under test), proxying every Access-Request to it, as a site
that already runs FreeRADIUS would put it in front.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

from peers.process import free_udp_port, stop_process  # noqa: F401 (free_udp_port: for the tests)

FREERADIUS = shutil.which("freeradius") or shutil.which("radiusd") or (
    "/usr/sbin/freeradius" if os.path.exists("/usr/sbin/freeradius") else None)
DICTIONARY_DIR = "/usr/share/freeradius"
MODULE_DIR = "/usr/lib/freeradius"

CAROL_STATE = b"carol-pin-state"
CAROL_PIN = "4321"
ALICE_REPLY = {
    "Class": b"alice-class",
    "Filter-Id": "staff-acl",
    "Framed-IP-Address": "10.1.2.3",
    "Session-Timeout": 3600,
    "Port-Limit": 2,
    "Cisco-AVPair": "shell:priv-lvl=15",
}
CISCO_VENDOR_ID = 9
CISCO_AVPAIR = 1


def available() -> bool:
    """FreeRADIUS is installed (Debian package ``freeradius``)."""
    return FREERADIUS is not None and os.path.isdir(DICTIONARY_DIR)


USERS = f"""\
alice\tCleartext-Password := "alice-pw"
\tClass = 0x{ALICE_REPLY["Class"].hex()},
\tFilter-Id = "{ALICE_REPLY["Filter-Id"]}",
\tFramed-IP-Address = {ALICE_REPLY["Framed-IP-Address"]},
\tSession-Timeout = {ALICE_REPLY["Session-Timeout"]},
\tPort-Limit = {ALICE_REPLY["Port-Limit"]},
\tCisco-AVPair = "{ALICE_REPLY["Cisco-AVPair"]}"

bob\tCleartext-Password := "bob-pw"

carol\tCleartext-Password := "carol-pw"
"""

# The virtual server. carol's PIN dialogue is plain unlang: no State yet →
# an Access-Challenge (Response-Packet-Type + handled); the State back with
# the PIN → Auth-Type Accept; anything else → reject.
SITE = f"""\
server default {{
\tlisten {{
\t\ttype = auth
\t\tipaddr = 127.0.0.1
\t\tport = %(port)d
\t}}
\tauthorize {{
%(sign)s\t\tif (&User-Name == "carol") {{
\t\t\tif (!&State) {{
\t\t\t\tif (&User-Password == "carol-pw") {{
\t\t\t\t\tupdate reply {{
\t\t\t\t\t\t&State := 0x{CAROL_STATE.hex()}
\t\t\t\t\t\t&Reply-Message := "Enter your new PIN"
\t\t\t\t\t}}
\t\t\t\t\tupdate control {{
\t\t\t\t\t\t&Response-Packet-Type := Access-Challenge
\t\t\t\t\t}}
\t\t\t\t\thandled
\t\t\t\t}}
\t\t\t\treject
\t\t\t}}
\t\t\tif ((&State == 0x{CAROL_STATE.hex()}) && (&User-Password == "{CAROL_PIN}")) {{
\t\t\t\tupdate control {{
\t\t\t\t\t&Auth-Type := Accept
\t\t\t\t}}
\t\t\t\treturn
\t\t\t}}
\t\t\treject
\t\t}}
\t\tfiles
\t\tmschap
\t\tpap
\t\tAutz-Type Status-Server {{
%(sign)s\t\t\tok
\t\t}}
\t}}
\tauthenticate {{
\t\tAuth-Type PAP {{
\t\t\tpap
\t\t}}
\t\tAuth-Type MS-CHAP {{
\t\t\tmschap
\t\t}}
\t}}
\tpost-auth {{
\t\tok
\t\tPost-Auth-Type REJECT {{
\t\t\tok
\t\t}}
\t}}
}}
"""

# FreeRADIUS 3.2.1 signs no reply to an Access-Request or Status-Server on
# its own (not even when the request carried a Message-Authenticator; the
# BlastRADIUS changes came with 3.2.5). A Message-Authenticator put into the
# reply list is computed when the packet is encoded, so this makes it sign
# every Accept, Reject, Challenge and Status-Server answer.
SIGN_REPLIES = """\
\t\tupdate reply {
\t\t\t&Message-Authenticator := 0x00000000000000000000000000000000
\t\t}
"""

RADIUSD_CONF = """\
prefix = /usr
confdir = %(confdir)s
raddbdir = ${confdir}
modconfdir = ${confdir}/mods-config
logdir = ${confdir}
run_dir = ${confdir}
db_dir = ${confdir}
libdir = %(libdir)s
pidfile = ${run_dir}/radiusd.pid
name = radiusd
max_request_time = 30
cleanup_delay = 5
max_requests = 16384
hostname_lookups = no
log {
\tdestination = files
\tfile = ${logdir}/radius.log
\tcolourise = no
\tauth = no
}
security {
\tuser = root
\tgroup = root
\tallow_core_dumps = no
\tmax_attributes = 200
\treject_delay = 0
\tstatus_server = yes
}
proxy_requests = no
thread pool {
\tstart_servers = 4
\tmax_servers = 16
\tmin_spare_servers = 2
\tmax_spare_servers = 8
\tmax_requests_per_server = 0
\tauto_limit_acct = no
}
client localhost {
\tipaddr = 127.0.0.1
\tsecret = "%(secret)s"
\trequire_message_authenticator = %(require_ma)s
}
modules {
\tpap {
\t}
\tchap {
\t}
\tmschap {
\t\tuse_mppe = yes
\t\trequire_encryption = yes
\t\trequire_strong = yes
\t}
\talways ok {
\t\trcode = ok
\t}
\talways handled {
\t\trcode = handled
\t}
\talways reject {
\t\trcode = reject
\t}
\tfiles {
\t\tmoddir = ${modconfdir}/files
\t\tfilename = ${moddir}/authorize
\t}
}
instantiate {
}
$INCLUDE site-default
"""


class FreeRadius:
    """One FreeRADIUS process serving ``default`` on 127.0.0.1:``port``.

    ``start()`` waits until it answers a Status-Server; ``stop()`` sends
    SIGTERM, then SIGKILL. ``pause()``/``resume()`` (SIGSTOP/SIGCONT) make
    it a server that is up but does not answer: the failover case.
    """

    def __init__(self, directory: Path, *, secret: str = "testing123", port: int | None = None,
                 require_message_authenticator: bool = False, sign_replies: bool = True):
        self.directory = Path(directory)
        self.secret = secret
        self.host = "127.0.0.1"
        self.port = port or free_udp_port(self.host)
        self.require_message_authenticator = require_message_authenticator
        self.sign_replies = sign_replies
        self.proc: subprocess.Popen | None = None
        self._stdout = None
        self._write_config()

    # --- configuration ------------------------------------------------------
    def _write_config(self) -> None:
        conf = self.directory
        (conf / "mods-config" / "files").mkdir(parents=True, exist_ok=True)
        (conf / "mods-config" / "files" / "authorize").write_text(USERS)
        sign = SIGN_REPLIES if self.sign_replies else ""
        (conf / "site-default").write_text(SITE % {"port": self.port, "sign": sign})
        (conf / "radiusd.conf").write_text(RADIUSD_CONF % {
            "confdir": conf, "libdir": MODULE_DIR, "secret": self.secret,
            "require_ma": "yes" if self.require_message_authenticator else "no"})
        # the packaged dictionaries come from -D /usr/share/freeradius (its
        # main file $INCLUDEs the rest); this one, read after them, adds nothing
        (conf / "dictionary").write_text("# local additions: none\n")

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    # --- process lifecycle ----------------------------------------------------
    def command(self) -> list[str]:
        if FREERADIUS is None:
            raise RuntimeError("FreeRADIUS is not installed (Debian package freeradius)")
        return [FREERADIUS, "-f", "-d", str(self.directory), "-D", DICTIONARY_DIR,
                "-l", str(self.directory / "radius.log")]

    def check(self) -> str:
        """``freeradius -C``: the configuration parses (output for the assertion)."""
        proc = subprocess.run(self.command() + ["-C"], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise AssertionError(f"FreeRADIUS rejects its configuration:\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    def start(self, timeout: float = 20.0) -> "FreeRadius":
        if self.proc is not None and self.proc.poll() is None:
            return self
        self._stdout = open(self.directory / "stdout.log", "ab")
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=self._stdout, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"FreeRADIUS exited {self.proc.returncode}:\n{self.log()}")
            if self.status(timeout=0.2):
                return self
        self.stop()
        raise AssertionError(f"FreeRADIUS did not answer within {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        stop_process(proc, timeout)
        if self._stdout is not None:
            self._stdout.close()
            self._stdout = None
        return proc.returncode

    def pause(self) -> None:
        """The process stays, the port stays bound, nothing is answered."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("FreeRADIUS is not running")
        os.kill(self.proc.pid, signum)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        parts = []
        for name in ("stdout.log", "radius.log"):
            path = self.directory / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def __enter__(self) -> "FreeRadius":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- a raw probe ------------------------------------------------------------
    def status(self, timeout: float = 1.0) -> bool:
        """Send a Status-Server (RFC 5997) and say whether a valid answer came.

        Written out here so the fixture depends on nothing in radius_mfa.
        """
        secret = self.secret.encode()
        authenticator = os.urandom(16)
        ident = authenticator[0]
        body = bytes((80, 18)) + b"\x00" * 16
        header = struct.pack("!BBH", 12, ident, 20 + len(body)) + authenticator
        mac = hmac.new(secret, header + body, hashlib.md5).digest()
        packet = header + bytes((80, 18)) + mac
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.sendto(packet, self.address)
                reply = sock.recv(4096)
            except OSError:          # timeout, or ICMP port unreachable before it listens
                return False
        if len(reply) < 20 or reply[1] != ident:
            return False
        expected = hashlib.md5(reply[:4] + authenticator + reply[20:] + secret).digest()
        return hmac.compare_digest(expected, reply[4:20])


# --- FreeRADIUS as a front proxy ---------------------------------------------------

# Every Access-Request goes to the realm of the home server, whatever the
# name holds (no realm-stripping module: the name reaches the home server
# as the client sent it, octet for octet). A Status-Server is answered here.
PROXY_SITE = """\
server default {
\tlisten {
\t\ttype = auth
\t\tipaddr = 127.0.0.1
\t\tport = %(port)d
\t}
\tauthorize {
\t\tupdate control {
\t\t\t&Proxy-To-Realm := "home"
\t\t}
\t\tAutz-Type Status-Server {
\t\t\tok
\t\t}
\t}
\tauthenticate {
\t}
\tpre-proxy {
\t}
\tpost-proxy {
\t}
\tpost-auth {
\t\tok
\t\tPost-Auth-Type REJECT {
\t\t\tok
\t\t}
\t}
}
"""

# One home server in a fail-over pool, as an admin configures it: a server
# that leaves a request unanswered for ``response_window`` seconds turns
# zombie, and one that stays silent through ``zombie_period`` is dead (no
# request goes to it until it answers ``num_answers_to_alive`` Status-Server
# probes, ``check_interval`` seconds apart, or, with ``status_check = none``,
# until ``revive_interval`` has passed). The windows are short here so that a
# test sees within a few seconds what a site would see within a minute.
PROXY_CONF = """\
proxy server {
\tdefault_fallback = no
}
home_server home {
\ttype = auth
\tipaddr = %(home_host)s
\tport = %(home_port)d
\tsecret = "%(home_secret)s"
\tresponse_window = %(response_window)s
\tresponse_timeouts = 1
\tzombie_period = %(zombie_period)d
\trevive_interval = %(revive_interval)d
\tstatus_check = %(status_check)s
\tcheck_interval = %(check_interval)d
\tcheck_timeout = %(check_timeout)d
\tnum_answers_to_alive = 3
\tmax_outstanding = 65536
}
home_server_pool home {
\ttype = fail-over
\thome_server = home
}
realm home {
\tauth_pool = home
\tnostrip
}
"""


class FrontProxy(FreeRadius):
    """FreeRADIUS 3.2 proxying every Access-Request it gets on 127.0.0.1:``port``
    (from 127.0.0.1, with ``secret``) to the home server ``home`` = (host, port)
    with ``home_secret``.

    ``home_events()`` lists what FreeRADIUS logged about the home server's
    state (zombie, dead, alive), the signs of a proxy giving up on it.
    """

    def __init__(self, directory: Path, home: tuple[str, int], home_secret: str, *,
                 secret: str = "testing123", port: int | None = None,
                 response_window: float = 2.0, zombie_period: int = 2,
                 status_check: str = "none", revive_interval: int = 60,
                 check_interval: int = 6, check_timeout: int = 2):
        self.home = home
        self.home_secret = home_secret
        self.proxy_settings = {
            "response_window": response_window, "zombie_period": zombie_period,
            "status_check": status_check, "revive_interval": revive_interval,
            "check_interval": check_interval, "check_timeout": check_timeout}
        super().__init__(directory, secret=secret, port=port, sign_replies=False)

    def _write_config(self) -> None:
        conf = self.directory
        (conf / "mods-config" / "files").mkdir(parents=True, exist_ok=True)
        (conf / "mods-config" / "files" / "authorize").write_text("# none: all is proxied\n")
        (conf / "site-default").write_text(PROXY_SITE % {"port": self.port})
        (conf / "proxy.conf").write_text(PROXY_CONF % {
            "home_host": self.home[0], "home_port": self.home[1],
            "home_secret": self.home_secret, **self.proxy_settings})
        radiusd = RADIUSD_CONF % {
            "confdir": conf, "libdir": MODULE_DIR, "secret": self.secret,
            "require_ma": "yes" if self.require_message_authenticator else "no"}
        radiusd = radiusd.replace("proxy_requests = no\n",
                                  "proxy_requests = yes\n$INCLUDE proxy.conf\n")
        (conf / "radiusd.conf").write_text(radiusd)
        (conf / "dictionary").write_text("# local additions: none\n")

    def home_events(self) -> list[str]:
        """FreeRADIUS's log lines about the home server changing state."""
        return [line for line in self.log().splitlines()
                if "home server" in line.lower()
                and any(word in line.lower() for word in ("zombie", "dead", "alive"))]
