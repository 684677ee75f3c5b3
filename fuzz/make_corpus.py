"""Write the seed corpus of every target into fuzz/corpus/TARGET/.

The seeds are valid inputs of each kind, so the fuzzer starts deep inside
each parser rather than at its first length check. Run again after changing
a seed's recipe; the files are committed so a run needs nothing else.

    python3 fuzz/make_corpus.py
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from targets import PSKC_KEY, PSKC_PASSWORD, SECRET, corpus_dir  # noqa: E402

from radius_mfa.radius import codec  # noqa: E402

SECRET_B32 = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"


def codec_seeds() -> list[bytes]:
    auth = bytes(range(16))
    seeds = [
        codec.build_access_request(SECRET, "alice", "s3cret,123456", id=1, authenticator=auth),
        codec.build_access_request(SECRET, "alice", None, id=2, authenticator=auth, state=b"S" * 16,
                                   attributes=[("NAS-IP-Address", "192.0.2.1"),
                                               ("Calling-Station-Id", "00-11-22-33-44-55"),
                                               ("NAS-Identifier", "vpn"), ("NAS-Port", 7),
                                               ("Service-Type", "Framed-User")]),
        codec.build_access_request(SECRET, "bob", "pw", id=3, authenticator=auth,
                                   message_authenticator=False,
                                   attributes=[("Proxy-State", b"ps-one"), ("Proxy-State", b"ps-two"),
                                               ("NAS-IPv6-Address", "2001:db8::1")]),
        codec.build_access_request(SECRET, None, None, id=4, authenticator=auth, code=codec.STATUS_SERVER),
        codec.build_access_request(SECRET, "carol", None, id=5, authenticator=auth,
                                   attributes=[("MS-CHAP-Challenge", bytes(16)),
                                               ("MS-CHAP2-Response", bytes(50)),
                                               ("EAP-Message", b"\x02\x01\x00\x06\x01x")]),
        codec.build_access_request(SECRET, "dave", None, id=6, authenticator=auth,
                                   attributes=[(3, bytes(17))]),           # CHAP-Password
    ]
    return seeds


def config_seeds() -> list[bytes]:
    root = HERE.parent
    seeds = [(root / "etc" / "radius-mfa.yaml").read_bytes()]
    seeds.append(b"""
server:
  name: mfa
  listen:
    - udp: "127.0.0.1:1812"
    - udp: "[::1]:1812"
  workers: 2
store: "sqlite:///radius-mfa.db"
clients:
  - name: vpn
    address: 192.0.2.0/24
    secret: "a-long-shared-secret-here"
    require_message_authenticator: auto
    mode: inline
    limit_proxy_state: true
primary:
  backend: ldap
  ldap:
    url: ldap://127.0.0.1:389
    bind_dn: cn=admin,dc=example,dc=org
    bind_password: "pw"
    base_dn: dc=example,dc=org
factors:
  totp: {window: 1}
  hotp: {window: 10}
policy:
  unenrolled: allow
  username: {case: insensitive, strip_realm: true}
  lockout: {failures: 3, minutes: 15}
  delimiter: ","
passwords:
  scheme: pbkdf2-sha256
  pbkdf2_iterations: 600000
audit:
  file: audit.jsonl
log: {format: json, level: debug}
metrics:
  listen: "127.0.0.1:9812"
""")
    seeds.append(b"clients:\n  - &c {name: a, address: 127.0.0.1, secret: x}\n  - <<: *c\n    name: b\n")
    return seeds


def tokens_seeds() -> list[bytes]:
    import pskc_docs as docs

    totp = docs.KeySpec(serial="T-1", algorithm="totp", secret=b"12345678901234567890", digits=8,
                        suite="HMAC-SHA256", time_interval=30, time=0, time_drift=1)
    hotp = docs.KeySpec(serial="987654321", secret=b"12345678901234567890", digits=6, counter=7)
    plain = docs.document([hotp, totp]).encode()
    psk = docs.document([hotp], docs.PresharedKey(PSKC_KEY)).encode()
    password = docs.document([totp], docs.Password(PSKC_PASSWORD, iterations=1000)).encode()
    csv = (f"serial,secret,period,digits,algorithm\n"
           f"HW000001, {SECRET_B32}   # a comment\n"
           f"HW000002,{SECRET_B32},60,8,sha256\n"
           f"HW000003,{SECRET_B32},hotp,6\n\n").encode()
    # The first byte of a tokens input picks how a PSKC file is opened
    # (0: no key, 1: the pre-shared key, 2: the password).
    return [b"\x00" + plain, b"\x01" + psk, b"\x02" + password, b"\x00" + csv, b"\x00\xef\xbb\xbf" + csv]


def users_seeds() -> list[bytes]:
    hashed = "$pbkdf2-sha256$i=600000$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43
    return [
        ("name,display_name,email,phone,password,totp_secret\n"
         f"alice,Alice Liddell,alice@example.org,+4915112345678,wonder,{SECRET_B32}\n"
         f'bob,"Bob, the Builder",bob@example.org,,"{hashed}",\n'
         "carol,,,,,\n").encode(),
        "\ufeffName,Email\r\nzoë,zoe@example.org\r\n".encode(),
    ]


SEEDS = {"codec": codec_seeds, "config": config_seeds, "tokens": tokens_seeds, "users": users_seeds}


def main() -> None:
    for name, make in SEEDS.items():
        directory = corpus_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        for seed in make():
            (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        print(f"{name}: {len(list(directory.iterdir()))} seeds in {directory}")


if __name__ == "__main__":
    main()
