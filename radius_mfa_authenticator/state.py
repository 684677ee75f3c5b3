"""The authenticator's state: the device key and what pairing returned, in
one private directory."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from radius_mfa_authenticator.errors import Refused

KEY_FILE = "device.key"
STATE_FILE = "device.json"
NOT_PAIRED = "not paired: run pair URL first"


@dataclass(frozen=True)
class DeviceState:
    base_url: str             # the device API, e.g. https://mfa.example.org:8443
    fingerprint: str          # sha256 (hex) of the device API's certificate, DER
    device_id: str
    user: str
    server: str = ""          # the server's name (server.name), for messages
    name: str = ""            # what this device called itself


class StateDir:
    """``device.key`` and ``device.json`` in one private directory."""

    def __init__(self, path: str):
        self.path = os.path.abspath(os.path.expanduser(path))

    @property
    def key_path(self) -> str:
        return os.path.join(self.path, KEY_FILE)

    @property
    def state_path(self) -> str:
        return os.path.join(self.path, STATE_FILE)

    def load(self) -> tuple[DeviceState, Ed25519PrivateKey]:
        """The paired device; Refused when there is none or it is damaged."""
        try:
            with open(self.state_path, encoding="utf-8") as f:
                raw = json.load(f)
            with open(self.key_path, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), password=None)
        except FileNotFoundError:
            raise Refused(NOT_PAIRED) from None
        except OSError as exc:
            raise Refused(f"cannot read {exc.filename or self.path}: {exc.strerror or exc}") from None
        except (ValueError, TypeError):
            raise Refused(f"the state in {self.path} is damaged; pair again") from None
        if not isinstance(key, Ed25519PrivateKey) or not isinstance(raw, dict):
            raise Refused(f"the state in {self.path} is damaged; pair again")
        try:
            state = DeviceState(**{k: raw[k] for k in DeviceState.__dataclass_fields__ if k in raw})
        except TypeError:
            raise Refused(f"the state in {self.path} is damaged; pair again") from None
        if not all(isinstance(v, str) and (v or k in ("server", "name")) for k, v in asdict(state).items()):
            raise Refused(f"the state in {self.path} is damaged; pair again")
        return state, key

    def check_writable(self) -> None:
        """Refused when the state could not be saved: checked before a
        pairing link (good once) is spent."""
        where = self.path
        while not os.path.exists(where):
            parent = os.path.dirname(where)
            if parent == where:
                break
            where = parent
        if not os.path.isdir(where) or not os.access(where, os.W_OK | os.X_OK):
            raise Refused(f"cannot write the state to {self.path}: {where} is not a writable directory")

    def save(self, state: DeviceState, key: Ed25519PrivateKey) -> None:
        """Both files, each written aside and renamed into place; the
        directory is made mode 0700 when absent, the files are mode 0600."""
        try:
            if not os.path.isdir(self.path):
                os.makedirs(self.path, mode=0o700)
                os.chmod(self.path, 0o700)
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            self._replace(self.key_path, pem)
            self._replace(self.state_path, (json.dumps(asdict(state), indent=2) + "\n").encode())
        except OSError as exc:
            raise Refused(f"cannot write {exc.filename or self.path}: {exc.strerror or exc}") from None

    @staticmethod
    def _replace(path: str, data: bytes) -> None:
        aside = f"{path}.{os.getpid()}.new"
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(aside, 0o600)
            os.replace(aside, path)
        except BaseException:
            if os.path.exists(aside):
                os.unlink(aside)
            raise
