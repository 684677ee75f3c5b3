"""What a pending challenge keeps between the two round trips: the reply
attributes for the final Access-Accept and the directory facts for the
audit, packed as JSON for the store."""

from __future__ import annotations

import enum

class Stage(str, enum.Enum):
    """What a pending challenge waits for; the engine answers each with one
    method (its table in ``Engine._answer_challenge``)."""
    CODE = "code"              # the code prompt or the menu: a code, or a word picking a factor
    SENT_CODE = "sent_code"    # a code that was sent: that code only
    PUSH = "push"              # a push was started: any answer waits for the device
    UPSTREAM = "upstream"      # the upstream RADIUS server's own challenge: relayed back

    @classmethod
    def of(cls, data: dict) -> "Stage":
        """The stage of a challenge's data (the menu's has none)."""
        return cls(data.get("stage", cls.CODE.value))


# What a directory (LDAP) tells about a user that the store keeps too.
DIRECTORY_FIELDS = ("display_name", "email", "phone")


def challenge_data(attributes, info: dict | None) -> dict:
    """What a pending challenge keeps for the final Access-Accept."""
    data: dict = {}
    if attributes:
        data["attributes"] = pack_attributes(attributes)
    if info:
        data["info"] = {k: v for k, v in info.items() if k in DIRECTORY_FIELDS}
    return data


def pack_attributes(attributes) -> list:
    """Reply attributes → JSON for a pending challenge (kept until the Accept)."""
    packed = []
    for key, value in attributes:
        if isinstance(key, tuple):
            k = {"vendor": list(key)}
        elif isinstance(key, int):
            k = {"code": key}
        else:
            k = {"name": key}
        if isinstance(value, bytes):
            v = {"bytes": value.hex()}
        elif isinstance(value, bool) or not isinstance(value, int):
            v = {"text": str(value)}
        else:
            v = {"int": value}
        packed.append([k, v])
    return packed


def unpack_attributes(packed: list) -> tuple:
    out = []
    for k, v in packed:
        key = tuple(k["vendor"]) if "vendor" in k else k.get("code", k.get("name"))
        if "bytes" in v:
            value = bytes.fromhex(v["bytes"])
        elif "int" in v:
            value = v["int"]
        else:
            value = v["text"]
        out.append((key, value))
    return tuple(out)
