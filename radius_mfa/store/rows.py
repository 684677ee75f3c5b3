"""What both stores share: checking a token before it is written, and turning
a database row into a model object.

The SQL differs between SQLite and PostgreSQL (placeholders, quoting,
upserts, locks), so each store writes its own; the rows that come back have
the same columns under the same names (``sqlite3.Row`` and psycopg's dict
rows both index by column name), so reading them is done once, here.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from radius_mfa.errors import RefusedError, StoreError
from radius_mfa.model import AuthRecord, Challenge, ClientSeen, SentCode, Token, User
from radius_mfa.secretbox import SecretBox

Row = Mapping[str, Any]

TOKEN_TYPES = frozenset({"totp", "hotp"})
ALGORITHMS = frozenset({"sha1", "sha256", "sha512"})
USER_FIELDS = frozenset({"display_name", "email", "phone", "password_hash", "disabled"})


def check_token(token: Token) -> None:
    """Refuse a token whose fields the verifiers could not use."""
    problem = None
    if not token.serial:
        problem = "the serial must not be empty"
    elif token.type not in TOKEN_TYPES:
        problem = "type must be totp or hotp"
    elif token.algorithm not in ALGORITHMS:
        problem = "algorithm must be sha1, sha256 or sha512"
    elif not 6 <= token.digits <= 10:
        problem = "digits must be between 6 and 10"
    elif token.period < 1:
        problem = "period must be at least 1 second"
    elif token.counter < 0:
        problem = "counter must not be negative"
    elif not token.secret:
        problem = "the secret must not be empty"
    if problem:
        raise RefusedError(f"token {token.serial or '(no serial)'}: {problem}")


def to_json(value: Any, what: str) -> str:
    """Compact JSON for a TEXT column; StoreError when ``value`` cannot be."""
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"the {what} cannot be stored: {exc}") from None


def auth_log_row(record: AuthRecord) -> tuple[float, str | None, str]:
    """(time, user, fields as JSON) for the auth_log table; ``user`` is a
    column of its own for `report auth --user`."""
    name = record.fields.get("user")
    return record.time, name if isinstance(name, str) else None, to_json(record.fields, "auth record")


def user(row: Row) -> User:
    return User(
        name=row["name"],
        display_name=row["display_name"],
        email=row["email"],
        phone=row["phone"],
        password_hash=row["password_hash"],
        disabled=bool(row["disabled"]),
        failures=row["failures"],
        locked_until=row["locked_until"],
        created=row["created"],
    )


def token(row: Row, box: SecretBox) -> Token:
    """A token with its secret opened (the column holds it sealed)."""
    return Token(
        serial=row["serial"],
        type=row["type"],
        secret=box.open(row["secret"], row["serial"]),
        user=row["user"],
        digits=row["digits"],
        period=row["period"],
        algorithm=row["algorithm"],
        counter=row["counter"],
        last_step=row["last_step"],
        drift=row["drift"],
        hardware=bool(row["hardware"]),
        created=row["created"],
    )


def sent_code(row: Row) -> SentCode:
    return SentCode(id=row["id"], user=row["user"], channel=row["channel"], code_mac=row["code_mac"],
                    client=row["client"], calling_station_id=row["calling_station_id"],
                    provider=row["provider"], created=row["created"], expires=row["expires"])


def challenge(row: Row) -> Challenge:
    return Challenge(
        state_digest=row["state_digest"],
        user=row["user"],
        client=row["client"],
        created=row["created"],
        expires=row["expires"],
        factors=tuple(json.loads(row["factors"])),
        data=json.loads(row["data"]),
    )


def client_seen(row: Row) -> ClientSeen:
    return ClientSeen(
        name=row["name"],
        requests=row["requests"],
        last_seen=row["last_seen"],
        last_with_message_authenticator=row["last_with_ma"],
        last_without_message_authenticator=row["last_without_ma"],
    )
