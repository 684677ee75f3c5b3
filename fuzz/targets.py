"""The fuzz targets: bytes in, and only the documented errors out.

Each target takes one input (``bytes``) and feeds it to one parser of
untrusted data the way the product does. The errors a parser documents are
its answer to bad input and are swallowed here; anything else escapes, and
the fuzzer reports it as a crash with its input and traceback.

=============  ==============================================  =========================
target         what it drives                                  documented errors
=============  ==============================================  =========================
codec          ``codec.peek`` and ``codec.decode_request``      RemoteProtocolError
               (secret, dictionary), every attribute read by
               name, ``is_mschapv2``, ``forwardable``, and a
               reply encoded for what decoded                  LocalProtocolError for a
                                                               reply over 4,096 octets
config         ``config.load_config`` of the bytes as a file   ConfigError
tokens         ``tokenimport.import_tokens`` (PSKC or CSV by   ImportFailed
               content; a PSKC file tried with no key, a
               pre-shared key or a password, by the first
               byte) into a SQLite store
users          ``userimport.import_users`` into a SQLite       ImportFailed
               store
=============  ==============================================  =========================

Pure functions of the input apart from a scratch directory (the file the
loaders read, the store the importers write): the same input always takes
the same path, as a coverage-guided fuzzer needs.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:            # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from radius_mfa.errors import ConfigError, LocalProtocolError, RemoteProtocolError  # noqa: E402
from radius_mfa.importing import ImportFailed  # noqa: E402

SECRET = b"testing123"
#: The pre-shared key and password the ``tokens`` target offers a PSKC file
#: (those of RFC 6030 figures 6 and 7, which the seed corpus uses).
PSKC_KEY = bytes.fromhex("12345678901234567890123456789012")
PSKC_PASSWORD = "qwerty"

NAMES = ("codec", "config", "tokens", "users")


class Scratch:
    """A private directory for one fuzzing process: the input file the
    loaders read and the SQLite store the importers write."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="radius-mfa-fuzz-")
        self.path = Path(self._dir.name)
        self._store = None

    def write(self, name: str, data: bytes) -> str:
        path = self.path / name
        path.write_bytes(data)
        return str(path)

    def store(self):
        """One SQLite store for the process's lifetime (imports that succeed
        stay in it: a later input repeating a serial meets the store's
        refusal, which is one more path to cover)."""
        if self._store is None:
            from radius_mfa.secretbox import SecretBox
            from radius_mfa.store.sqlite import SqliteStore

            box = SecretBox.from_file(str(self.path / "store.key"))
            self._store = SqliteStore(str(self.path / "store.db"), box)
        return self._store


_scratch: Scratch | None = None


def scratch() -> Scratch:
    global _scratch
    if _scratch is None:
        _scratch = Scratch()
    return _scratch


# --- codec ---------------------------------------------------------------------------

_dictionary = None


def _codec_dictionary():
    global _dictionary
    if _dictionary is None:
        from radius_mfa.radius.dictionary import load_dictionary

        _dictionary = load_dictionary()
    return _dictionary


def codec(data: bytes) -> None:
    from radius_mfa.radius import codec as c

    dictionary = _codec_dictionary()
    try:
        header = c.peek(data)
    except RemoteProtocolError:
        return
    assert HEADER_OK(header, data), f"peek accepted a header it should not: {header}"
    try:
        request = c.decode_request(data, SECRET, dictionary)
    except RemoteProtocolError:
        return
    assert request.code in c.REQUEST_CODES
    assert len(request.raw) == header.length
    # What the engine reads: every attribute present, by its dictionary name.
    for kind, value in request.attributes:
        attr = dictionary.attributes.get(_name_of(dictionary, kind))
        if attr is None:
            continue
        try:
            request.get_all(attr.name)
        except RemoteProtocolError:
            pass
    for name in ("User-Name", "NAS-Port", "Service-Type", "Framed-IP-Address", "Calling-Station-Id",
                 "Vendor-Specific", "EAP-Message", "MS-CHAP2-Response", "MS-CHAP-Challenge"):
        if name in dictionary.attributes:
            try:
                request.get_all(name)
            except RemoteProtocolError:
                pass
    c.is_mschapv2(request)
    c.forwardable(request)
    for vendor_value in (value for kind, value in request.attributes if kind == c.VENDOR_SPECIFIC):
        c.split_vendor_specific(vendor_value)
    # A reply for it: the Proxy-State it carries is copied back, so only a
    # reply that would exceed 4,096 octets may be refused (and then so).
    proxied = sum(len(state) + 2 for state in request.proxy_states)
    try:
        reply = c.encode_response(request, c.ACCESS_REJECT, [("Reply-Message", "no")])
    except LocalProtocolError:
        assert c.HEADER_LENGTH + 18 + proxied + 4 > c.MAX_PACKET_LENGTH, "a reply that fits was refused"
        return
    answer = c.decode_response(reply, SECRET, request.authenticator, dictionary=dictionary)
    assert answer.proxy_states == request.proxy_states


def HEADER_OK(header, data: bytes) -> bool:  # noqa: N802 - reads as the assertion it is
    return 20 <= header.length <= min(4096, len(data))


_names: dict[int, str] = {}


def _name_of(dictionary, kind: int) -> str:
    """The dictionary name of a standard (non-vendor) attribute type."""
    if not _names:
        _names.update({attr.code: name for name, attr in dictionary.attributes.items()
                       if not attr.vendor and not attr.is_sub_attribute})
    return _names.get(kind, "")


# --- config --------------------------------------------------------------------------


def config(data: bytes) -> None:
    from radius_mfa.config import load_config

    path = scratch().write("radius-mfa.yaml", data)
    try:
        load_config(path)
    except ConfigError:
        pass


# --- importers -----------------------------------------------------------------------


def tokens(data: bytes) -> None:
    from radius_mfa import tokenimport

    # The first byte says how a PSKC file is opened; the rest is the file.
    how, body = (data[0] % 3, data[1:]) if data else (0, b"")
    path = scratch().write("tokens", body)
    options: dict = {}
    if tokenimport.detect_format(path) == "pskc":
        options = ({}, {"key": PSKC_KEY}, {"password": PSKC_PASSWORD})[how]
    try:
        tokenimport.import_tokens(scratch().store(), path, **options)
    except ImportFailed:
        pass


def _cheap_hash(password: str, *config) -> str:
    """A stand-in for scrypt while fuzzing the reader, not the hash: the
    carried-over forms are still parsed by the real code."""
    return "$pbkdf2-sha256$i=1000$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43


def users(data: bytes) -> None:
    from radius_mfa import userimport

    real, userimport._hash = userimport._hash, _cheap_hash
    path = scratch().write("users.csv", data)
    try:
        userimport.import_users(scratch().store(), path, hash_workers=1)
    except ImportFailed:
        pass
    finally:
        userimport._hash = real           # replayed inside the test process too


TARGETS: dict[str, Callable[[bytes], None]] = {
    "codec": codec, "config": config, "tokens": tokens, "users": users,
}


def corpus_dir(name: str) -> Path:
    return HERE / "corpus" / name


def regressions_dir(name: str) -> Path:
    return HERE / "regressions" / name


def replay(name: str, paths: list[Path]) -> list[tuple[Path, BaseException]]:
    """Each input through the target in this process; the crashes."""
    target = TARGETS[name]
    crashes = []
    for path in paths:
        try:
            target(path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - a crash is what is being looked for
            crashes.append((path, exc))
    return crashes


if __name__ == "__main__":        # python3 fuzz/targets.py TARGET FILE...: replay inputs
    import traceback

    target_name, *files = sys.argv[1:]
    failed = 0
    for file, error in replay(target_name, [Path(f) for f in files]):
        failed += 1
        print(f"CRASH {file}:", file=sys.stderr)
        traceback.print_exception(error)
    print(f"{len(files) - failed} passed, {failed} failed")
    os._exit(1 if failed else 0)
