"""What both stores share: checking a token before it is written, and turning
a database row into a model object.

The SQL is written once (:mod:`radius_mfa.store.sqlstore`); the rows that
come back have the same columns under the same names (``sqlite3.Row`` and psycopg's dict
rows both index by column name), so reading them is done once, here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Mapping, Sequence, TypeVar

from radius_mfa.errors import RefusedError, StoreError
from radius_mfa.model import (PUSH_STATUSES, PushStatus, AppPassword, AuthRecord, Challenge, ClientSeen, Device, Pairing,
                              Push, SentCode,
                              Token, User, EnrolLink, PortalSession, portal_seal_context)
from radius_mfa.secretbox import SecretBox

Row = Mapping[str, Any]
T = TypeVar("T")

TOKEN_TYPES = frozenset({"totp", "hotp"})
ALGORITHMS = frozenset({"sha1", "sha256", "sha512"})
USER_FIELDS = frozenset({"display_name", "email", "phone", "password_hash", "disabled"})

#: What a device may answer a push with (``answer_push``).
PUSH_ANSWERS = frozenset({"approved", "denied", "fraud", "wrong_number"})

#: The kinds of sends ``allow_send`` counts, each apart from the other.
SEND_KINDS = frozenset({"code", "push"})


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


def check_push(push: Push) -> None:
    """Refuse a push the store could not keep as it is."""
    if not push.id:
        raise RefusedError("a push needs an id")
    if push.status not in PUSH_STATUSES:
        raise RefusedError(f"push {push.id}: status must be one of {', '.join(PUSH_STATUSES)}")


def check_answer(status: str) -> None:
    """Refuse an answer to a push that a device cannot give."""
    if status not in PUSH_ANSWERS:
        raise RefusedError(f"a push is answered with {', '.join(sorted(PUSH_ANSWERS))}, not {status!r}")


def check_send_kind(kind: str) -> None:
    """Refuse a rate-limit kind nobody counts (a typo would count apart silently)."""
    if kind not in SEND_KINDS:
        raise RefusedError(f"sends are counted as {' or '.join(sorted(SEND_KINDS))}, not {kind!r}")


def to_json(value: Any, what: str) -> str:
    """Compact JSON for a TEXT column; StoreError when ``value`` cannot be."""
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"the {what} cannot be stored: {exc}") from None


def auth_log_row(record: AuthRecord) -> tuple[float, str | None, str, str | None, str | None]:
    """(time, user, fields as JSON, result, factor) for the auth_log table;
    ``user`` is a column of its own for `report auth --user`, ``result`` and
    ``factor`` for `report usage`."""
    fields = record.fields
    name, result, factor = fields.get("user"), fields.get("result"), fields.get("factor")
    return (record.time, name if isinstance(name, str) else None, to_json(fields, "auth record"),
            result if isinstance(result, str) else None, factor if isinstance(factor, str) else None)


def record(cls: type[T], row: Row, **values: Any) -> T:
    """A model object from the row's columns of its fields' names, with
    ``values`` in place of the columns that need converting."""
    wanted = _fields(cls)
    return cls(**{name: row[name] for name in row.keys() if name in wanted and name not in values}, **values)


@functools.lru_cache(maxsize=None)
def _fields(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def user(row: Row) -> User:
    return record(User, row, disabled=bool(row["disabled"]))


def token(row: Row, box: SecretBox) -> Token:
    """A token with its secret opened (the column holds it sealed)."""
    return record(Token, row, secret=box.open(row["secret"], row["serial"]), hardware=bool(row["hardware"]))


def sent_code(row: Row) -> SentCode:
    return record(SentCode, row)


def challenge(row: Row) -> Challenge:
    return record(Challenge, row, factors=tuple(json.loads(row["factors"])), data=json.loads(row["data"]))


def client_seen(row: Row) -> ClientSeen:
    return ClientSeen(
        name=row["name"],
        requests=row["requests"],
        last_seen=row["last_seen"],
        last_with_message_authenticator=row["last_with_ma"],
        last_without_message_authenticator=row["last_without_ma"],
        first_with_message_authenticator=row["first_with_ma"],
    )


def clients_seen(seen: Sequence[Row], drops: Sequence[Row]) -> list[ClientSeen]:
    """The clients_seen rows joined with their client_drops rows; a client
    that only ever had requests dropped is listed too. Sorted by name."""
    by_name = {row["name"]: client_seen(row) for row in seen}
    counts: dict[str, list[tuple[str, int]]] = {}
    last: dict[str, float] = {}
    for row in drops:
        counts.setdefault(row["client"], []).append((row["reason"], row["count"]))
        if row["last"] is not None:
            last[row["client"]] = max(last.get(row["client"], row["last"]), row["last"])
    for name, reasons in counts.items():
        base = by_name.get(name) or ClientSeen(name=name)
        by_name[name] = dataclasses.replace(base, drops=tuple(reasons), last_drop=last.get(name))
    return [by_name[name] for name in sorted(by_name)]


def pairing(row: Row) -> Pairing:
    return record(Pairing, row)


def device(row: Row) -> Device:
    return record(Device, row)


def push(row: Row) -> Push:
    return record(Push, row, status=PushStatus(row["status"]))


def app_password(row: Row) -> AppPassword:
    return record(AppPassword, row)


def enrol_link(row: Row) -> EnrolLink:
    return record(EnrolLink, row)


def portal_session(row: Row, box: SecretBox) -> PortalSession:
    """A session with its pending secret opened (the column holds it sealed)."""
    pending = row["pending_totp"]
    return record(PortalSession, row,
                  pending_totp=box.open(pending, portal_seal_context(row["id_digest"])) if pending is not None else None)
