"""Wi-Fi 802.1X end to end: eapol_test (the phone and the access point) →
FreeRADIUS 3.2 terminating EAP-TTLS with inner PAP → `radius-mfa serve`.

radius-mfa speaks no EAP. FreeRADIUS holds the TLS tunnel and proxies the
inner PAP request to radius-mfa (tests/peers/eap.py says why proxying), in
one of two ways, each a client entry of its own (told apart by the source
address FreeRADIUS sends from):

* ``inline``: the user types ``password,code`` as the Wi-Fi password;
  radius-mfa checks both (its primary backend, then the code).
* ``second-factor-only``: FreeRADIUS checks the password (its own users
  file here: the site's directory) and sends radius-mfa the name alone;
  radius-mfa pushes to the user's phone and the request waits.

Both end in EAP-Success with the MS-MPPE keys for the access point
(eapol_test compares them with the keys it derived itself) or in
EAP-Failure. The recipe's files are those of docs/wifi-8021x.md.

The waits, each longer than the one inside it: radius-mfa answers within
the client's ``timeout`` (PUSH_TIMEOUT), FreeRADIUS waits for radius-mfa
``response_window`` (RESPONSE_WINDOW), eapol_test waits EAPOL_TIMEOUT.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import re
import time
from pathlib import Path

import pytest

from e2e import Server, needs_radclient, radclient
from peers import eap, freeradius
from peers.eap import EapFrontEnd, eapol_test, make_chain
from peers.process import free_tcp_port, wait_for
from test_e2e_push import Phone, push_factor

pytestmark = [
    needs_radclient,
    pytest.mark.skipif(not freeradius.available(),
                       reason="FreeRADIUS (Debian freeradius) is not installed"),
    pytest.mark.skipif(not eap.available(), reason="eapol_test (Debian eapoltest) is not installed"),
]

INLINE_SOURCE = "127.0.0.1"          # the front end whose client entry is inline
PUSH_SOURCE = "127.0.0.2"            # … and the one in second-factor-only mode
MFA_SECRET = "front-end-to-mfa-secret-0123"
PUSH_TIMEOUT = 6                     # radius-mfa's client timeout: a push waits up to 5 s
RESPONSE_WINDOW = PUSH_TIMEOUT + 4   # FreeRADIUS waits for radius-mfa
EAPOL_TIMEOUT = 30                   # eapol_test's whole budget
PASSWORD = "correct horse"
DIRECTORY_PASSWORD = "directory-pw"  # what FreeRADIUS checks in second-factor-only mode
_names = itertools.count()
background = concurrent.futures.ThreadPoolExecutor(max_workers=8)

DOC = Path(__file__).resolve().parent.parent / "docs" / "wifi-8021x.md"


@pytest.fixture(scope="module")
def mfa(tmp_path_factory):
    directory = tmp_path_factory.mktemp("eap-mfa")
    push_port = free_tcp_port()
    server = Server(directory, factors=push_factor(directory, push_port), clients=f"""
  - name: wifi-inline
    address: {INLINE_SOURCE}
    secret: "{MFA_SECRET}"
    require_message_authenticator: true
    mode: inline
    timeout: {PUSH_TIMEOUT}
  - name: wifi-push
    address: {PUSH_SOURCE}
    secret: "{MFA_SECRET}"
    require_message_authenticator: true
    mode: second-factor-only
    timeout: {PUSH_TIMEOUT}
""")
    server.push_port = push_port
    server.start()
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return make_chain(tmp_path_factory.mktemp("eap-certs"))


# the users FreeRADIUS knows in second-factor-only mode (its "directory")
DIRECTORY = {f"wifi{i}": DIRECTORY_PASSWORD for i in range(10)}
_directory_names = iter(DIRECTORY)


@pytest.fixture(scope="module")
def inline_front(mfa, chain, tmp_path_factory):
    front = EapFrontEnd(tmp_path_factory.mktemp("eap-inline") / "freeradius", chain,
                        ("127.0.0.1", mfa.port), MFA_SECRET, mode="inline",
                        source_address=INLINE_SOURCE, response_window=RESPONSE_WINDOW)
    front.start()
    yield front
    front.stop()


@pytest.fixture(scope="module")
def push_front(mfa, chain, tmp_path_factory):
    front = EapFrontEnd(tmp_path_factory.mktemp("eap-push") / "freeradius", chain,
                        ("127.0.0.1", mfa.port), MFA_SECRET, mode="second-factor-only",
                        source_address=PUSH_SOURCE, response_window=RESPONSE_WINDOW,
                        users=DIRECTORY)
    front.start()
    yield front
    front.stop()


def paired(server: Server, name: str, tmp_path: Path) -> Phone:
    link = json.loads(server.cli("device", "pair", name, "--json").stdout)
    phone = Phone(tmp_path / f"phone-{name}")
    result = phone.run("pair", link["url"])
    assert result.returncode == 0, result.stderr
    return phone


def records(server: Server, name: str) -> list[dict]:
    return [r for r in server.audit() if r["user"] == name]


def connect(front, name, password, tmp_path):
    return eapol_test(front, name, password, tmp_path / "supplicant", timeout=EAPOL_TIMEOUT)


# --- inline: password,code through the tunnel -------------------------------------------
def test_ttls_pap_with_password_comma_code_succeeds_and_the_access_point_gets_the_keys(
        mfa, inline_front, tmp_path):
    user = mfa.enrol(f"alice{next(_names)}", PASSWORD)
    mfa.mark(user.name)
    result = connect(inline_front, user.name, f"{PASSWORD},{user.code()}", tmp_path)
    assert result.succeeded, result.output[-3000:]
    assert "CTRL-EVENT-EAP-SUCCESS" in result.output
    assert result.mppe_keys_ok, result.output[-1500:]
    record = mfa.record_since_mark(user.name)
    # the inner name, not the outer "anonymous"; the access point's
    # Calling-Station-Id copied into the tunnel
    assert (record["client"], record["result"], record["method"], record["factor"],
            record["mode"]) == ("wifi-inline", "accept", "pap", "totp", "inline")
    assert record["device"] == user.serial
    assert record["calling_station_id"] == "02-00-00-00-00-01"
    assert not [r for r in mfa.audit() if r["user"] == "anonymous"]


def test_ttls_pap_with_a_wrong_code_is_an_eap_failure(mfa, inline_front, tmp_path):
    user = mfa.enrol(f"alice{next(_names)}", PASSWORD)
    good = user.code()
    mfa.mark(user.name)
    result = connect(inline_front, user.name, f"{PASSWORD},{(int(good) + 1) % 10**6:06d}", tmp_path)
    assert result.returncode != 0 and result.eap_failure, result.output[-2000:]
    assert "CTRL-EVENT-EAP-SUCCESS" not in result.output
    record = mfa.record_since_mark(user.name)
    assert (record["client"], record["result"], record["reason"]) == ("wifi-inline", "reject", "bad_code")


def test_ttls_pap_with_a_wrong_password_is_an_eap_failure(mfa, inline_front, tmp_path):
    user = mfa.enrol(f"alice{next(_names)}", PASSWORD)
    mfa.mark(user.name)
    result = connect(inline_front, user.name, f"not the password,{user.code()}", tmp_path)
    assert result.returncode != 0 and result.eap_failure, result.output[-2000:]
    record = mfa.record_since_mark(user.name)
    assert (record["result"], record["reason"]) == ("reject", "bad_password")


def test_a_saved_password_comma_code_sent_again_on_reconnect_is_rejected_as_replay(
        mfa, inline_front, tmp_path):
    """A supplicant that saved ``password,code`` sends it again when it
    re-authenticates (eapol_test -r 1: roaming, waking up): the code is used,
    so the second EAP run fails and the audit says ``replay``."""
    user = mfa.enrol(f"alice{next(_names)}", PASSWORD)
    result = eapol_test(inline_front, user.name, f"{PASSWORD},{user.code()}", tmp_path,
                        timeout=20, reauthentications=1)
    assert result.returncode != 0
    assert result.output.count("CTRL-EVENT-EAP-SUCCESS") == 1, result.output[-2000:]
    assert result.eap_failure
    wait_for(lambda: len(records(mfa, user.name)) >= 2)
    assert [(r["result"], r["reason"]) for r in records(mfa, user.name)] == [
        ("accept", None), ("reject", "replay")]


def test_ttls_pap_with_password_comma_push_waits_for_the_approval(mfa, inline_front, tmp_path):
    name = f"alice{next(_names)}"
    mfa.cli("user", "add", name, "--password-stdin", input=PASSWORD + "\n")
    phone = paired(mfa, name, tmp_path)
    attempt = background.submit(connect, inline_front, name, f"{PASSWORD},push", tmp_path)
    pending = phone.wait(timeout=PUSH_TIMEOUT)
    assert (pending["user"], pending["client"]) == (name, "wifi-inline")
    time.sleep(1.0)                          # the user takes a moment: the tunnel waits
    assert not attempt.done()
    assert phone.run("approve", pending["id"]).returncode == 0
    result = attempt.result()
    assert result.succeeded and result.mppe_keys_ok, result.output[-2000:]
    assert records(mfa, name)[-1]["factor"] == "push"


def test_a_supplicant_refuses_a_server_certificate_from_another_ca(mfa, inline_front, tmp_path):
    """The recipe's supplicant settings (ca_cert, domain_suffix_match) are
    what keeps a rogue access point from collecting passwords and codes."""
    user = mfa.enrol(f"alice{next(_names)}", PASSWORD)
    rogue_ca = make_chain(tmp_path / "other-ca").ca_file
    result = eapol_test(inline_front, user.name, f"{PASSWORD},{user.code()}", tmp_path,
                        timeout=10, ca_file=rogue_ca)
    assert result.returncode != 0
    assert "CTRL-EVENT-EAP-TLS-CERT-ERROR" in result.output, result.output[-2000:]
    assert records(mfa, user.name) == []           # the inner password never left the phone


# --- second-factor-only: FreeRADIUS checks the password, radius-mfa pushes ----------------
def directory_user(mfa: Server, tmp_path: Path) -> tuple[str, Phone]:
    """A user FreeRADIUS knows (DIRECTORY) and radius-mfa knows by name
    alone (no local password), with a paired phone."""
    name = next(_directory_names)
    mfa.cli("user", "add", name)
    return name, paired(mfa, name, tmp_path)


def test_second_factor_only_push_approved_succeeds_with_keys(mfa, push_front, tmp_path):
    name, phone = directory_user(mfa, tmp_path)
    started = time.monotonic()
    attempt = background.submit(connect, push_front, name, DIRECTORY_PASSWORD, tmp_path)
    pending = phone.wait(timeout=PUSH_TIMEOUT)
    assert (pending["user"], pending["client"]) == (name, "wifi-push")
    assert pending["needs_number"] is False          # no prompt inside the tunnel to show one
    time.sleep(1.0)
    assert not attempt.done()
    assert phone.run("approve", pending["id"]).returncode == 0
    result = attempt.result()
    assert result.succeeded, result.output[-3000:]
    assert result.mppe_keys_ok, result.output[-1500:]
    assert time.monotonic() - started < PUSH_TIMEOUT + 5
    (record,) = records(mfa, name)
    # the password stayed with FreeRADIUS: radius-mfa got the name alone
    assert (record["client"], record["mode"], record["result"], record["factor"],
            record["method"]) == ("wifi-push", "second-factor-only", "accept", "push", "none")


def test_second_factor_only_push_denied_is_an_eap_failure(mfa, push_front, tmp_path):
    name, phone = directory_user(mfa, tmp_path)
    attempt = background.submit(connect, push_front, name, DIRECTORY_PASSWORD, tmp_path)
    pending = phone.wait(timeout=PUSH_TIMEOUT)
    assert phone.run("deny", pending["id"]).returncode == 0
    result = attempt.result()
    assert result.returncode != 0 and result.eap_failure, result.output[-2000:]
    (record,) = records(mfa, name)
    assert (record["result"], record["reason"]) == ("reject", "denied")


def test_second_factor_only_wrong_password_never_reaches_radius_mfa(mfa, push_front, tmp_path):
    """No push to approve for a password the front end refused: a guessed
    password cannot make the phone buzz (MFA fatigue)."""
    name, phone = directory_user(mfa, tmp_path)
    result = connect(push_front, name, "not the password", tmp_path)
    assert result.returncode != 0 and result.eap_failure, result.output[-2000:]
    assert phone.pending() == []
    time.sleep(0.2)
    assert records(mfa, name) == []


def test_second_factor_only_push_unanswered_is_an_eap_failure_not_a_dead_home_server(
        mfa, push_front, tmp_path):
    """radius-mfa answers a push nobody approves with a reject inside the
    client's timeout, before FreeRADIUS's response_window: the home server
    stays alive for everyone else."""
    name, phone = directory_user(mfa, tmp_path)
    started = time.monotonic()
    result = connect(push_front, name, DIRECTORY_PASSWORD, tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode != 0 and result.eap_failure, result.output[-2000:]
    assert PUSH_TIMEOUT - 2 < elapsed < RESPONSE_WINDOW, elapsed
    (record,) = records(mfa, name)
    assert record["reason"] == "timeout"
    assert not [line for line in push_front.log().splitlines()
                if "zombie" in line.lower() or "is dead" in line.lower()]


# --- EAP straight at radius-mfa, no front end ----------------------------------------------
def test_eap_sent_directly_is_rejected_with_an_eap_failure_as_unsupported(mfa):
    """A NAS configured for 802.1X and pointed at radius-mfa itself: a clean
    Access-Reject carrying EAP-Failure (RFC 3579 2.6.3), the audit saying
    why, so the admin sees the front end is missing."""
    name = f"direct{next(_names)}"
    identity = name.encode()
    eap_identity = bytes([2, 0x37]) + (5 + len(identity)).to_bytes(2, "big") + b"\x01" + identity
    mfa.mark(name)
    reply = radclient(mfa.port, [("User-Name", name), ("EAP-Message", "0x" + eap_identity.hex()),
                                 ("Message-Authenticator", "0x00")], secret=MFA_SECRET)
    assert reply.code == "Access-Reject", reply.output
    assert reply.first("EAP-Message") == "0x04370004", reply.output   # EAP-Failure, the same id
    record = mfa.record_since_mark(name)
    assert (record["client"], record["result"], record["reason"], record["method"]) == (
        "wifi-inline", "reject", "unsupported_method", "eap")


# --- the document's recipe is the one tested ------------------------------------------------
DOC_VALUES = {
    "LISTEN_ADDRESS": "*", "LISTEN_PORT": 1812,
    "AP_NETWORK": "192.0.2.0/24", "AP_SECRET": "CHANGE-ME-access-points-secret",
    "CERT_FILE": "${certdir}/wifi/server.pem", "KEY_FILE": "${certdir}/wifi/server.key",
    "CA_FILE": "${certdir}/wifi/ca.pem",
    "MFA_ADDRESS": "198.51.100.10", "MFA_PORT": 1812, "MFA_SECRET": "CHANGE-ME-front-end-secret",
    "SOURCE_ADDRESS": "198.51.100.5", "RESPONSE_WINDOW": 30,
}


def doc_blocks() -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.mark.parametrize("name", ["eap", "default", "inner-tunnel-inline",
                                  "inner-tunnel-second-factor-only", "proxy.conf", "clients.conf"])
def test_the_documented_freeradius_files_are_the_tested_ones(name):
    assert eap.render(name, DOC_VALUES) in doc_blocks(), f"docs/wifi-8021x.md lacks {name} as tested"
