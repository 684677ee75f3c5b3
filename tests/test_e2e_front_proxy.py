"""End to end: FreeRADIUS 3.2 as a front proxy, radclient → FreeRADIUS → `radius-mfa serve`.

A site that already runs FreeRADIUS puts radius-mfa behind it as a home
server. FreeRADIUS marks a home server that leaves a request unanswered for
``response_window`` a zombie, and one that stays silent through
``zombie_period`` dead: with ``status_check = none`` (the strictest proxy,
and NPS behaves alike) no request reaches it until ``revive_interval`` has
passed, so one request radius-mfa drops locks every user out. A User-Name
is octets (RFC 2865) and need not be UTF-8; radius-mfa answers such a name
with an Access-Reject (reason ``unknown_user``, the name escaped in the
audit), so the proxy keeps it alive (docs/reference.md, "Protocol hygiene").

The windows are short here (2 s) so that a test sees within seconds what a
site would see within a minute.
"""

from __future__ import annotations

import itertools
import subprocess
import time

import pytest

from e2e import RADCLIENT, Server, needs_radclient, radclient
from peers import freeradius
from peers.freeradius import FrontProxy

pytestmark = [needs_radclient,
              pytest.mark.skipif(not freeradius.available(),
                                 reason="FreeRADIUS (Debian freeradius) is not installed")]

HOME_SECRET = "proxy-to-mfa-secret-0123"     # FreeRADIUS → radius-mfa
NAS_SECRET = "nas-to-proxy-secret-01234"     # radclient (the NAS) → FreeRADIUS
RESPONSE_WINDOW = 2.0
ZOMBIE_PERIOD = 2
PASSWORD = "correct horse"
CODE_PROMPT = "Enter the 6-digit code from your authenticator app"
# User-Names that are not UTF-8: (the octets, the octets that are not UTF-8)
ODD_NAMES = [
    (b"ali\xce\xff", b"\xce\xff"),            # a lead byte, then a byte that cannot continue it
    (b"\xc0\xafetc", b"\xc0\xaf"),            # an overlong encoding of "/"
    (b"bob\xed\xa0\x80", b"\xed\xa0\x80"),    # a UTF-16 surrogate, encoded
    (b"carol\xff\xfe", b"\xff\xfe"),          # octets that never occur in UTF-8
]
_names = itertools.count()

CLIENTS = f"""
  - name: front-proxy
    address: 127.0.0.1
    secret: "{HOME_SECRET}"
    require_message_authenticator: true
    mode: challenge
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("front-proxy-mfa"), clients=CLIENTS)
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture
def proxy(server, tmp_path):
    """A FreeRADIUS of its own per test: what one test does to its view of
    the home server never reaches another."""
    peer = FrontProxy(tmp_path / "freeradius", ("127.0.0.1", server.port), HOME_SECRET,
                      secret=NAS_SECRET, response_window=RESPONSE_WINDOW,
                      zombie_period=ZOMBIE_PERIOD, status_check="none", revive_interval=60)
    peer.start()
    yield peer
    peer.stop()


def login(proxy, name, password, *extra):
    return radclient(proxy.port, [("User-Name", name), ("User-Password", password), *extra,
                                  ("Message-Authenticator", "0x00")],
                     secret=NAS_SECRET, timeout=2 * RESPONSE_WINDOW, retries=1)


def radclient_string(octets: bytes) -> str:
    """A double-quoted radclient string holding exactly these octets (octal
    escapes for anything but printable ASCII)."""
    return '"' + "".join(chr(b) if 0x20 <= b < 0x7f and b not in b'\\"' else f"\\{b:03o}"
                         for b in octets) + '"'


def odd_login(proxy, octets: bytes) -> tuple[str | None, float]:
    """An Access-Request whose User-Name is these octets: (the reply code, seconds it took)."""
    started = time.monotonic()
    proc = subprocess.run(
        [RADCLIENT or "radclient", "-x", "-r", "1", "-t", str(2 * RESPONSE_WINDOW),
         f"127.0.0.1:{proxy.port}", "auth", NAS_SECRET],
        input=f'User-Name = {radclient_string(octets)}, User-Password = "{PASSWORD},123456", '
              f"Message-Authenticator = 0x00\n",
        capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - started
    for code in ("Access-Accept", "Access-Reject", "Access-Challenge"):
        if f"Received {code}" in proc.stdout + proc.stderr:
            return code, elapsed
    return None, elapsed


def shows_byte(text: str, byte: int) -> bool:
    """The escaped name shows this octet, in hex (\\xce, %CE) or octal (\\316)."""
    return f"{byte:02x}" in text.lower() or f"{byte:03o}" in text


def troubles(proxy) -> list[str]:
    """What FreeRADIUS logged about giving up on radius-mfa."""
    return [line for line in proxy.home_events()
            if "zombie" in line.lower() or "dead" in line.lower()]


def odd_records(server) -> list[dict]:
    return [r for r in server.audit() if r.get("reason") == "unknown_user"
            and r.get("client") == "front-proxy"]


def test_normal_logins_pass_through_the_front_proxy(server, proxy):
    """The baseline the other tests rest on: inline, and a challenge round
    whose State goes through FreeRADIUS and back."""
    user = server.enrol(f"proxied{next(_names)}", PASSWORD)
    reply = login(proxy, user.name, f"{PASSWORD},{user.code()}")
    assert reply.code == "Access-Accept", reply.output
    other = server.enrol(f"proxied{next(_names)}", PASSWORD)
    challenge = login(proxy, other.name, PASSWORD)
    assert challenge.code == "Access-Challenge", challenge.output
    assert challenge.first("Reply-Message") == CODE_PROMPT
    reply = login(proxy, other.name, other.code(), ("State", challenge.first("State")))
    assert reply.code == "Access-Accept", reply.output
    assert troubles(proxy) == []


def test_the_front_proxy_signs_what_it_forwards(server, proxy):
    """FreeRADIUS 3.2 puts a Message-Authenticator into every Access-Request
    it proxies, even when the NAS sent none: the proxy's client entry can
    require it (`require_message_authenticator: true`)."""
    user = server.enrol(f"proxied{next(_names)}", PASSWORD)
    reply = radclient(proxy.port, [("User-Name", user.name),
                                   ("User-Password", f"{PASSWORD},{user.code()}")],
                      secret=NAS_SECRET, timeout=2 * RESPONSE_WINDOW, retries=1)
    assert reply.code == "Access-Accept", reply.output


def test_a_non_utf8_user_name_is_rejected_as_unknown_user_with_the_name_escaped(server, proxy):
    before = len(odd_records(server))
    for octets, _ in ODD_NAMES:
        code, elapsed = odd_login(proxy, octets)
        # radius-mfa's own reject, not the one FreeRADIUS makes up when its
        # home server stays silent through the response window
        assert code == "Access-Reject", octets
        assert elapsed < RESPONSE_WINDOW - 0.5, (octets, elapsed)
    deadline = time.monotonic() + 5
    while len(odd_records(server)) < before + len(ODD_NAMES) and time.monotonic() < deadline:
        time.sleep(0.02)
    records = odd_records(server)[before:]
    assert len(records) == len(ODD_NAMES), server.log()[-2000:]
    for (octets, bad), record in zip(ODD_NAMES, records):
        name = record["user"]
        assert (record["result"], record["reason"], record["method"]) == (
            "reject", "unknown_user", "pap"), record
        assert isinstance(name, str) and name.isprintable(), name
        prefix = octets[:octets.index(bad)].decode()
        assert name.startswith(prefix), (octets, name)
        assert all(shows_byte(name[len(prefix):], b) for b in bad), (octets, name)
    assert "Traceback" not in server.log()
    drops = [e for e in server.log_events() if e.get("event") == "radius.drop"
             and e.get("client") == "front-proxy"]
    assert drops == []


def test_a_non_utf8_user_name_cannot_get_radius_mfa_marked_dead_by_a_front_proxy(server, proxy):
    """Normal users' logins before and after odd names, through the proxy.
    After the odd ones, the test waits out the response window and the
    zombie period: had radius-mfa dropped one, the proxy would have marked
    it dead by then and rejected everyone itself."""
    alice = server.enrol(f"alice{next(_names)}", PASSWORD)
    bob = server.enrol(f"bob{next(_names)}", PASSWORD)
    carol = server.enrol(f"carol{next(_names)}", PASSWORD)
    before = login(proxy, alice.name, f"{PASSWORD},{alice.code()}")
    assert before.code == "Access-Accept", before.output

    last_sent = time.monotonic()
    for octets, _ in ODD_NAMES:
        last_sent = time.monotonic()
        code, _ = odd_login(proxy, octets)
        assert code == "Access-Reject", octets
    quiet_until = last_sent + RESPONSE_WINDOW + ZOMBIE_PERIOD + 0.5
    time.sleep(max(0.0, quiet_until - time.monotonic()))

    after = login(proxy, bob.name, f"{PASSWORD},{bob.code()}")
    assert after.code == "Access-Accept", (after.output, proxy.home_events())
    challenge = login(proxy, carol.name, PASSWORD)
    assert challenge.code == "Access-Challenge", challenge.output
    done = login(proxy, carol.name, carol.code(), ("State", challenge.first("State")))
    assert done.code == "Access-Accept", done.output
    assert troubles(proxy) == []
