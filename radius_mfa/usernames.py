"""User names as radius-mfa compares them (``policy.username``).

RADIUS carries User-Name as octets and directories match names
case-insensitively, so ``ALICE``, `` alice`` and ``alice`` must be one user
everywhere: store, lockout, replay guard and audit. A name is put into its
canonical form once, where it enters (the engine, every command), and the
store holds only canonical names.
"""

from __future__ import annotations

import unicodedata

from radius_mfa.config import UsernameConfig


def canonical(name: str, policy: UsernameConfig = UsernameConfig()) -> str:
    """NFC, trimmed, lower-cased unless ``case: sensitive``; with
    ``strip_realm``, ``CORP\\alice`` and ``alice@corp`` become ``alice``."""
    text = unicodedata.normalize("NFC", name).strip()
    if policy.strip_realm:
        text = strip_realm(text)
    if policy.case == "insensitive":
        text = text.lower()
    return text


def strip_realm(name: str) -> str:
    """``CORP\\alice`` → ``alice``; ``alice@corp.example`` → ``alice``. A
    name that would be empty without its realm keeps it."""
    _, sep, tail = name.rpartition("\\")
    if sep and tail.strip():
        name = tail.strip()
    head, sep, _ = name.partition("@")
    if sep and head.strip():
        name = head.strip()
    return name


def canonicalise_store(store, policy: UsernameConfig) -> list[tuple[str, str]]:
    """Give every user of a store written before names were canonical (or
    under another ``policy.username``) their canonical name; returns the
    renames made. Two users who become one name are left as they are and
    reported (RefusedError) for an administrator to merge: nothing is lost."""
    from radius_mfa.errors import RefusedError

    wanted: dict[str, list[str]] = {}
    for user in store.list_users():
        wanted.setdefault(canonical(user.name, policy), []).append(user.name)
    clashes = {new: olds for new, olds in wanted.items() if len(olds) > 1}
    if clashes:
        listed = "; ".join(f"{', '.join(sorted(olds))} → {new}" for new, olds in sorted(clashes.items()))
        raise RefusedError(f"user names that are one name under policy.username: {listed}; "
                           f"remove or rename all but one (user remove NAME)")
    renamed = []
    for new, (old,) in wanted.items():
        if old != new:
            store.rename_user(old, new)
            renamed.append((old, new))
    return renamed


def prepare_store(store, policy: UsernameConfig, log) -> None:
    """At start: the store's names made canonical, each rename logged
    (``user.renamed``); a clash stops the start as a StoreError."""
    from radius_mfa.errors import RefusedError, StoreError

    try:
        renamed = canonicalise_store(store, policy)
    except RefusedError as exc:
        raise StoreError(str(exc)) from None
    for old, new in renamed:
        log.info("user.renamed", old=old, new=new, why="policy.username")
