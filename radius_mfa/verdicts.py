"""The closed set of outcomes: what the engine decides and why.

Like FreeRADIUS's return codes, every stage answers with one of a few
verdicts; every reject carries a ``Reason`` that lands in the audit record as
a stable string and never reaches the client.
"""

from __future__ import annotations

import enum


class Verdict(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    CHALLENGE = "challenge"
    FAIL = "fail"            # no answer at all: the NAS retries or fails over


class Reason(str, enum.Enum):
    BAD_PASSWORD = "bad_password"
    BAD_CODE = "bad_code"
    REPLAY = "replay"
    NO_FACTOR = "no_factor"          # not enrolled, or the factor asked for is not available
    NO_ANSWER = "no_answer"          # inline mode: the password came without a second factor
    LOCKED = "locked"
    DISABLED = "disabled"
    UNKNOWN_USER = "unknown_user"
    TIMEOUT = "timeout"
    UPSTREAM_DOWN = "upstream_down"
    DENIED = "denied"
    FRAUD = "fraud"                  # the push was reported as fraud from the device
    WRONG_NUMBER = "wrong_number"    # the push was approved with another number than the prompt's
    RATE_LIMITED = "rate_limited"
    CODE_SENT = "code_sent"          # inline: a code was sent, sign in again with password,CODE
    DELIVERY_FAILED = "delivery_failed"  # no provider delivered the code
    EXPIRED = "expired"
    EXPIRED_STATE = "expired_state"  # the State was ours but its time ran out
    BAD_STATE = "bad_state"          # unknown or already used State, or bound to another user/client
    BAD_REQUEST = "bad_request"      # no User-Name, no password where one is needed, …
    UNSUPPORTED_METHOD = "unsupported_method"   # CHAP, MS-CHAP v1, EAP, or MS-CHAPv2 the backend cannot check
    ENROL = "enrol"                  # policy.unenrolled: enrol — a one-time enrolment link was sent
    REPLY_TOO_LARGE = "reply_too_large"    # the reply did not fit in 4,096 octets, even trimmed
    REPLY_UNENCODABLE = "reply_unencodable"  # an attribute of an Accept could not be encoded
    OVERLOADED = "overloaded"        # queued longer than the client waits: dropped unanswered
    ERROR = "error"                  # our fault: a store or code failure (fails closed)

    def __str__(self) -> str:
        return self.value


# Answers that count towards the lockout: the user (or someone) got a secret wrong.
COUNTS_AS_FAILURE = frozenset({Reason.BAD_PASSWORD, Reason.BAD_CODE, Reason.REPLAY})
