"""Statements written once for both stores.

Each is in PostgreSQL's form (``%s`` placeholders, ``"user"`` quoted, which
SQLite reads too); the SQLite store swaps the placeholders for ``?`` and,
where named, one function for its own spelling. Everything here is one
statement, atomic on its own, so that every check-and-count is one step in
the store whichever database holds it.
"""

# The lockout's attempt: taken and counted before the answer is checked.
# Params: now, now, limit, now + lock_seconds, now, name, now. Every SET
# expression reads the row as it was: a lock that ran out starts a new count
# at 1; the attempt that reaches the limit sets the lock; a locked user's
# row is not matched, so nothing is counted and nothing is returned.
_TAKE_ATTEMPT = (
    "UPDATE users SET"
    " failures = CASE WHEN locked_until IS NOT NULL AND locked_until <= %s THEN 1 ELSE failures + 1 END,"
    " locked_until = CASE"
    "   WHEN (CASE WHEN locked_until IS NOT NULL AND locked_until <= %s THEN 1 ELSE failures + 1 END) >= %s"
    "     THEN %s"
    "   WHEN locked_until IS NOT NULL AND locked_until <= %s THEN NULL"
    "   ELSE locked_until END"
    " WHERE name = %s AND (locked_until IS NULL OR locked_until <= %s)"
    " RETURNING failures, locked_until"
)

# An attempt whose answer was not wrong. Params: success (1: the run of
# failures ends; 0: the attempt is given back), the lock the attempt set
# (NULL: none, and NULL = NULL matches nothing), name.
_FINISH_ATTEMPT = (
    "UPDATE users SET"
    " failures = CASE WHEN %s = 1 THEN 0 WHEN failures > 0 THEN failures - 1 ELSE 0 END,"
    " locked_until = CASE WHEN locked_until = %s THEN NULL ELSE locked_until END"
    " WHERE name = %s"
)

# The TOTP replay guard: a step is taken only when later than every step used
# before on the token. Params: step, serial, step.
_ADVANCE_TOTP = (
    "UPDATE tokens SET last_step = %s WHERE serial = %s AND type = 'totp'"
    " AND (last_step IS NULL OR last_step < %s)"
)

# A cap on a user's open challenges: the oldest beyond the newest N go
# (challenges opened in the same instant are ordered by digest).
# Params: user, N.
_EVICT_CHALLENGES = (
    'DELETE FROM challenges WHERE "user" = %s AND used IS NULL AND'
    ' (SELECT COUNT(*) FROM challenges AS newer WHERE newer."user" = challenges."user"'
    "  AND newer.used IS NULL AND (newer.created > challenges.created"
    "   OR (newer.created = challenges.created AND newer.state_digest > challenges.state_digest))) >= %s"
)

# Requests dropped unanswered, per client and reason. Params: client,
# reason, count, time. SQLite spells greatest() max().
_NOTE_DROP = (
    "INSERT INTO client_drops (client, reason, count, last) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (client, reason) DO UPDATE SET"
    " count = client_drops.count + excluded.count,"
    " last = greatest(coalesce(client_drops.last, excluded.last), excluded.last)"
)

# Renaming a user (names made canonical): a copy under the new name, every
# reference moved, the old row deleted, in one transaction. Params of each:
# (new, old). The authentication log keeps the names as they were audited.
_RENAME_USER = (
    "INSERT INTO users (name, display_name, email, phone, password_hash, disabled, failures,"
    " locked_until, created) SELECT %s, display_name, email, phone, password_hash, disabled,"
    " failures, locked_until, created FROM users WHERE name = %s",
    *(f'UPDATE {table} SET "user" = %s WHERE "user" = %s'
      for table in ("tokens", "challenges", "sent_codes", "code_sends", "pairings", "devices", "pushes",
                    "app_passwords")),
)
_DELETE_RENAMED_USER = "DELETE FROM users WHERE name = %s"
