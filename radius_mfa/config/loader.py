"""The loader: YAML node tree → Config, every problem collected with its line.

We compose the YAML node tree (yaml.SafeLoader) instead of loading plain
Python objects, because only the nodes remember their line. Each section is
read by one small function; a problem is recorded and reading goes on with
the default, so that one run reports every problem in the file. No problem
message ever quotes the value of a secret: type errors name the kind of
value found, never the value itself. What the sections become is
radius_mfa.config.schema.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import stat
import urllib.parse
from typing import Any, Callable

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from radius_mfa.config.schema import (
    DEFAULT_REPLY_ATTRIBUTES,
    NOTIFY_PLACEHOLDERS,
    AuditConfig,
    ClientConfig,
    Config,
    DeliveryFactorConfig,
    FactorsConfig,
    HotpConfig,
    HttpProviderConfig,
    LdapAttributes,
    LdapPrimaryConfig,
    ListenAddress,
    LockoutConfig,
    LogConfig,
    MetricsConfig,
    Mode,
    NotifierConfig,
    PasswordsConfig,
    PolicyConfig,
    PortalConfig,
    PrimaryConfig,
    ProviderConfig,
    PushConfig,
    RadiusPrimaryConfig,
    RadiusServerConfig,
    RateLimit,
    RequireMA,
    ServerConfig,
    ServerTlsConfig,
    SmtpProviderConfig,
    TotpConfig,
    TwilioProviderConfig,
    UsernameConfig,
)
from radius_mfa.errors import ConfigError

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_MERGE = _TAG + "merge"
_KIND = {_STR: "a string", _INT: "an integer", _FLOAT: "a number", _BOOL: "a boolean",
         _NULL: "null", _TAG + "timestamp": "a date", _TAG + "binary": "binary data"}
_SECRET_FILE_MAX = 64 * 1024      # a shared secret is short; anything bigger is the wrong file
_DEFAULT_RADIUS_PORT = 1812
_MAX_DEPTH = 64                   # YAML nesting; the deepest real section is 5 levels down
_MIN_SHARED_SECRET = 16           # characters; draft-ietf-radext-deprecating-radius
_MIN_PBKDF2_ITERATIONS = 10_000
_MAX_PBKDF2_ITERATIONS = 10_000_000


class _Invalid:
    """The result of a conversion that failed (and recorded its problem)."""


_INVALID = _Invalid()
Converter = Callable[["_Reader", Node, str], Any]


def load_config(path: str | os.PathLike) -> Config:
    """Read and check the configuration file at *path*.

    Raises ConfigError with every problem, ordered by line, each formatted as
    ``FILE:LINE: key.path: message`` (or ``FILE: cannot read: reason``).
    """
    label = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as stream:
            mode = os.fstat(stream.fileno()).st_mode
            text = stream.read()
    except OSError as exc:
        raise ConfigError([f"{label}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{label}: cannot read: not UTF-8 text"]) from None
    absolute = os.path.abspath(label)
    reader = _Reader(label, os.path.dirname(absolute))
    reader.check_private(1, "(file)", "this file", mode)
    try:
        config = reader.read_document(text, absolute)
    except RecursionError:      # a shape the depth limit does not see (merge keys, aliases)
        reader.problem(1, "(document)", "nested too deeply to read")
        config = None
    if reader.problems:
        raise ConfigError(reader.sorted_problems())
    assert config is not None
    return dataclasses.replace(config, warnings=tuple(reader.sorted_warnings()))


def mask_url_password(url: str) -> str:
    """``postgresql://u:secret@h/db`` → ``postgresql://u:***@h/db``: safe to log."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


# --------------------------------------------------------------------------
# The reader: problems, YAML scalars, paths
# --------------------------------------------------------------------------


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _kind(node: Node) -> str:
    """What the administrator wrote, by kind, without quoting it (it may be a secret)."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _KIND.get(node.tag, f"a value tagged {node.tag}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Loader(yaml.SafeLoader):
    """PyYAML's composer recurses once per level of nesting: a document
    nested a few hundred levels deep would end in a RecursionError. Past
    _MAX_DEPTH levels this stops with a problem at the line it got to."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > _MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {_MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Reader:
    """Holds what every section reader needs: the file's label and directory,
    the YAML loader (to construct scalars), and the problems and warnings
    found so far."""

    loader: yaml.SafeLoader

    def __init__(self, label: str, base_dir: str):
        self.label = label
        self.base_dir = base_dir
        self.problems: list[tuple[int, int, str]] = []
        self.warnings: list[tuple[int, int, str]] = []
        self.tls_clients: list[tuple[Node, str]] = []     # (node, path) of each transport: tls client

    def problem(self, where: Node | int, path: str, message: str) -> None:
        line = where if isinstance(where, int) else _line(where)
        self.problems.append((line, len(self.problems), f"{self.label}:{line}: {path}: {message}"))

    def warn(self, where: Node | int, path: str, message: str) -> None:
        """Something that works but should not stay so; never quotes a secret."""
        line = where if isinstance(where, int) else _line(where)
        self.warnings.append((line, len(self.warnings), f"{self.label}:{line}: {path}: warning: {message}"))

    def check_private(self, where: Node | int, path: str, name: str, mode: int, *,
                      group_too: bool = False) -> None:
        """A warning when the file *name* (a secret, or the config that may
        hold some) can be read by other users (with *group_too*, by its
        group as well); *mode* is its st_mode."""
        mask = stat.S_IRWXG | stat.S_IRWXO if group_too else stat.S_IROTH
        if mode & mask:
            fix = "chmod 600" if group_too else "chmod o-rwx"
            self.warn(where, path, f"{name} can be read by other users (mode {stat.S_IMODE(mode):04o}): "
                                   f"{fix} it")

    def sorted_problems(self) -> list[str]:
        """By line; once each (a node reached twice through a YAML alias is read twice)."""
        return list(dict.fromkeys(text for _, _, text in sorted(self.problems)))

    def sorted_warnings(self) -> list[str]:
        return list(dict.fromkeys(text for _, _, text in sorted(self.warnings)))

    def resolve(self, path: str) -> str:
        """A relative path is relative to the directory of the config file."""
        return os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(path)))

    def scalar(self, node: Node, path: str, tags: tuple[str, ...], expected: str) -> Any:
        """The Python value of a scalar whose tag is one of *tags*, else _INVALID."""
        if not isinstance(node, ScalarNode) or node.tag not in tags:
            hint = " (quote it)" if expected == "a string" and isinstance(node, ScalarNode) else ""
            self.problem(node, path, f"expected {expected}, got {_kind(node)}{hint}")
            return _INVALID
        if node.tag == _STR:
            return node.value
        try:
            return self.loader.construct_object(node)
        except (yaml.YAMLError, ValueError):
            self.problem(node, path, f"not a valid {expected.split(' ', 1)[-1]}")
            return _INVALID

    def read_document(self, text: str, absolute_path: str) -> Config | None:
        try:
            self.loader = _Loader(text)
            root = self.loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            self._syntax_problem(exc)
            return None
        except yaml.reader.ReaderError as exc:      # a control character in the text
            line = text.count("\n", 0, exc.position) + 1
            self.problem(line, "(syntax)", f"unacceptable character #x{exc.character:04x}")
            return None
        if root is None or _is_null(root):
            return Config(path=absolute_path)          # an empty file: all defaults, no clients
        return _read_config(self, root, absolute_path)

    def _syntax_problem(self, exc: yaml.MarkedYAMLError) -> None:
        """One problem for a YAML syntax error. PyYAML's own str() quotes the
        offending line, which may hold a secret, so only its words are used."""
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        message = (exc.problem or "invalid YAML").removeprefix("but ")
        if exc.context:
            where = f" at line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
            message += f" ({exc.context}{where})"
        self.problem(line, "(syntax)", message)


# --------------------------------------------------------------------------
# Sections: a mapping that hands out values by key and reports unknown keys
# --------------------------------------------------------------------------


class _Section:
    """A YAML mapping being read. Every key read is remembered; finish()
    reports the keys nobody asked for as unknown, with a suggestion."""

    def __init__(self, reader: _Reader, node: Node, path: str):
        self.r = reader
        self.node = node
        self.path = path
        self._entries: dict[str, tuple[Node, Node]] = {}
        self._taken: set[str] = set()
        if isinstance(node, MappingNode):
            self._index(node)

    def _index(self, node: MappingNode) -> None:
        seen: dict[str, Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            if not (isinstance(key_node, ScalarNode) and key_node.tag == _STR):
                self.r.problem(key_node, self.path or "(document)", f"keys must be names, got {_kind(key_node)}")
                continue
            if key_node.value in seen:
                self.r.problem(key_node, self.at(key_node.value),
                               f"duplicate key (first at line {_line(seen[key_node.value])})")
            seen.setdefault(key_node.value, key_node)
        try:
            self.r.loader.flatten_mapping(node)     # YAML merge keys (<<: *anchor)
        except yaml.YAMLError as exc:
            self.r.problem(node, self.path or "(document)", getattr(exc, "problem", None) or "bad merge key")
        except RecursionError:                      # merges of merges, hundreds deep
            self.r.problem(node, self.path or "(document)", "merge keys nested too deeply")
        for key_node, value_node in node.value:     # merged keys first: the file's own win
            if isinstance(key_node, ScalarNode) and key_node.tag == _STR:
                self._entries[key_node.value] = (key_node, value_node)

    def at(self, key: str) -> str:
        return _join(self.path, key)

    def given(self, key: str) -> bool:
        """Whether *key* is present with a value other than null."""
        entry = self._entries.get(key)
        return entry is not None and not _is_null(entry[1])

    def take(self, key: str) -> Node | None:
        """The value node for *key*, or None when absent; marks the key as known."""
        self._taken.add(key)
        entry = self._entries.get(key)
        return entry[1] if entry else None

    def get(self, key: str, convert: Converter, default: Any = None, *, required: bool = False) -> Any:
        """The converted value of *key*; *default* when absent or wrong (the
        problem is recorded); a problem when absent and *required*."""
        node = self.take(key)
        if node is None:
            if required:
                self.r.problem(self.node, self.at(key), "missing (required)")
            return default
        value = convert(self.r, node, self.at(key))
        return default if value is _INVALID else value

    def finish(self) -> None:
        for key, (key_node, _) in self._entries.items():
            if key not in self._taken:
                close = difflib.get_close_matches(key, sorted(self._taken), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.r.problem(key_node, self.at(key), f"unknown key{hint}")


def _is_null(node: Node | None) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


def _section(r: _Reader, node: Node | None, path: str) -> _Section | None:
    """A section to read; None when absent, or not a mapping (recorded).
    A key with nothing after it (null) counts as an empty section."""
    if node is None:
        return None
    if not isinstance(node, MappingNode) and not _is_null(node):
        r.problem(node, path, f"expected a mapping, got {_kind(node)}")
        return None
    return _Section(r, node, path)


def _items(r: _Reader, node: Node | None, path: str) -> list[tuple[Node, str]]:
    """The items of a list with their paths; [] when absent, null or not a list (recorded)."""
    if node is None or _is_null(node):
        return []
    if not isinstance(node, SequenceNode):
        r.problem(node, path, f"expected a list, got {_kind(node)}")
        return []
    return [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]


# --------------------------------------------------------------------------
# Converters: (reader, node, path) → value or _INVALID
# --------------------------------------------------------------------------


def _string(*, nullable: bool = False, nonempty: bool = True) -> Converter:
    def convert(r: _Reader, node: Node, path: str) -> Any:
        if nullable and _is_null(node):
            return None
        value = r.scalar(node, path, (_STR,), "a string")
        if value is not _INVALID and nonempty and not value:
            r.problem(node, path, "must not be empty")
            return _INVALID
        return value
    return convert


def _integer(minimum: int, maximum: int | None = None) -> Converter:
    def convert(r: _Reader, node: Node, path: str) -> Any:
        value = r.scalar(node, path, (_INT,), "an integer")
        if value is _INVALID:
            return value
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            r.problem(node, path, f"must be {bound}, got {value}")
            return _INVALID
        return value
    return convert


def _seconds(r: _Reader, node: Node, path: str) -> Any:
    """A positive duration (int or float); zero, negative, infinite and NaN are refused."""
    value = r.scalar(node, path, (_INT, _FLOAT), "a number")
    if value is _INVALID:
        return value
    if not math.isfinite(value) or value <= 0:
        r.problem(node, path, f"must be greater than 0, got {value}")
        return _INVALID
    return float(value)


def _boolean(r: _Reader, node: Node, path: str) -> Any:
    return r.scalar(node, path, (_BOOL,), "true or false")


def _choice(*choices: str) -> Converter:
    def convert(r: _Reader, node: Node, path: str) -> Any:
        value = r.scalar(node, path, (_STR,), "a string")
        if value is not _INVALID and value not in choices:
            r.problem(node, path, f"{value!r} is not one of {', '.join(choices)}")
            return _INVALID
        return value
    return convert


def _list_of(convert_item: Converter) -> Converter:
    """A list whose items each pass *convert_item*; the valid ones, as a tuple."""
    def convert(r: _Reader, node: Node, path: str) -> Any:
        values = [convert_item(r, item, item_path) for item, item_path in _items(r, node, path)]
        return tuple(v for v in values if v is not _INVALID)
    return convert


def _path(*, nullable: bool = False) -> Converter:
    """A file path; a relative one is relative to the config file's directory."""
    def convert(r: _Reader, node: Node, path: str) -> Any:
        value = _string(nullable=nullable)(r, node, path)
        return value if value is None or value is _INVALID else r.resolve(value)
    return convert


def _url(*schemes: str) -> Converter:
    def convert(r: _Reader, node: Node, path: str) -> Any:
        value = _string()(r, node, path)
        if value is _INVALID:
            return value
        try:
            parts = urllib.parse.urlsplit(value)
            _ = parts.port      # raises ValueError on a bad port
        except ValueError:
            r.problem(node, path, "not a valid URL")
            return _INVALID
        if parts.scheme not in schemes or not parts.hostname:
            wanted = " or ".join(f"{s}://HOST" for s in schemes)
            r.problem(node, path, f"expected a URL like {wanted}")
            return _INVALID
        return value
    return convert


def _split_hostport(text: str) -> tuple[str, str | None]:
    """``[::1]:1812`` → ("::1", "1812"); ``10.0.0.5:1812`` → ("10.0.0.5", "1812");
    ``10.0.0.5`` → ("10.0.0.5", None). A bare IPv6 address keeps all its colons."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("an IPv6 address in brackets must look like [::1]:1812")
        return host, rest[1:] if rest else None
    if text.count(":") > 1:
        raise ValueError("write an IPv6 address in brackets, like [::1]:1812")
    host, colon, port = text.partition(":")
    return host, port if colon else None


def _hostport(*, listen: bool) -> Converter:
    """``HOST:PORT``. A listen address needs an IP and a port (0 is allowed:
    any free port, for tests); an upstream server may be a host name and
    defaults to port 1812."""
    def convert(r: _Reader, node: Node, path: str) -> Any:
        text = _string()(r, node, path)
        if text is _INVALID:
            return text
        try:
            host, port_text = _split_hostport(text)
            if port_text is None:
                if listen:
                    raise ValueError("expected HOST:PORT, like 127.0.0.1:1812 or [::1]:1812")
                port_text = str(_DEFAULT_RADIUS_PORT)
            port = _parse_port(port_text, minimum=0 if listen else 1)
            _check_host(host, ip_only=listen)
        except ValueError as exc:
            r.problem(node, path, str(exc))
            return _INVALID
        return ListenAddress(host, port)
    return convert


def _parse_port(text: str, *, minimum: int) -> int:
    if not text.isdigit() or not minimum <= int(text) <= 65535:
        raise ValueError(f"port must be a number between {minimum} and 65535, got {text!r}")
    return int(text)


def _check_host(host: str, *, ip_only: bool) -> None:
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if ip_only:
        raise ValueError(f"{host!r} is not an IP address")
    labels = host.split(".")
    if not host or not all(label and label.replace("-", "").isalnum() for label in labels):
        raise ValueError(f"{host!r} is not a host name or IP address")


def _network(r: _Reader, node: Node, path: str) -> Any:
    text = _string()(r, node, path)
    if text is _INVALID:
        return text
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(text, strict=False)
            r.problem(node, path, f"{text!r} has host bits set (did you mean {fixed}?)")
        else:
            r.problem(node, path, f"{text!r} is not an IP address or CIDR network")
        return _INVALID


def _require_ma(r: _Reader, node: Node, path: str) -> Any:
    """true | false | auto: YAML booleans, or the strings."""
    if isinstance(node, ScalarNode) and node.tag == _BOOL:
        return RequireMA.TRUE if r.loader.construct_object(node) else RequireMA.FALSE
    value = _choice("true", "false", "auto")(r, node, path)
    return value if value is _INVALID else RequireMA(value)


def _contains(placeholder: str, convert: Converter) -> Converter:
    """A template that must carry *placeholder* (or it could never work)."""
    def checked(r: _Reader, node: Node, path: str) -> Any:
        value = convert(r, node, path)
        if isinstance(value, str) and placeholder not in value:
            r.problem(node, path, f"must contain {placeholder}")
            return _INVALID
        return value
    return checked


# --------------------------------------------------------------------------
# Secrets: `key` inline or `key_file` read from disk, never both
# --------------------------------------------------------------------------


def _read_secret_file(r: _Reader, node: Node, path: str) -> Any:
    """The file's bytes without the trailing newline; a problem names the
    file and the reason, never the content."""
    name = _path()(r, node, path)
    if name is _INVALID:
        return name
    try:
        with open(name, "rb") as stream:
            mode = os.fstat(stream.fileno()).st_mode
            data = stream.read(_SECRET_FILE_MAX + 1)
    except OSError as exc:
        r.problem(node, path, f"cannot read {name}: {exc.strerror or exc}")
        return _INVALID
    r.check_private(node, path, name, mode)
    if len(data) > _SECRET_FILE_MAX:
        r.problem(node, path, f"{name} is too large for a secret")
        return _INVALID
    data = data.rstrip(b"\r\n")
    if not data:
        r.problem(node, path, f"{name} is empty")
        return _INVALID
    return data


def _secret(sec: _Section, key: str, *, required: bool) -> bytes | None:
    """``key`` (a string) or ``key_file`` (a path) → the secret's bytes.
    None when neither is given (a problem when *required*) or on error.
    An optional pair may be written out as null (``password_file: null``)."""
    file_key = f"{key}_file"
    inline_node, file_node = sec.take(key), sec.take(file_key)
    if not required:
        inline_node = None if _is_null(inline_node) else inline_node
        file_node = None if _is_null(file_node) else file_node
    if inline_node is not None and file_node is not None:
        sec.r.problem(file_node, sec.at(file_key), f"give {key} or {file_key}, not both")
        return None
    if file_node is not None:
        data = _read_secret_file(sec.r, file_node, sec.at(file_key))
        return None if data is _INVALID else data
    if inline_node is not None:
        text = _string()(sec.r, inline_node, sec.at(key))
        return None if text is _INVALID else text.encode("utf-8")
    if required:
        sec.r.problem(sec.node, sec.path, f"needs {key} or {file_key}")
    return None


def _check_shared_secret(sec: _Section, key: str, secret: bytes | None) -> None:
    """A warning for a RADIUS shared secret under _MIN_SHARED_SECRET
    characters (it protects User-Password and every Message-Authenticator;
    a short one falls to an offline guess from one captured packet)."""
    if secret is None or len(secret.decode("utf-8", "replace")) >= _MIN_SHARED_SECRET:
        return
    file_key = f"{key}_file"
    node = sec.take(file_key) if sec.given(file_key) else sec.take(key)
    sec.r.warn(node if node is not None else sec.node, sec.at(file_key if sec.given(file_key) else key),
               f"the shared secret is shorter than {_MIN_SHARED_SECRET} characters: "
               "use a random one of 16 or more (openssl rand -base64 24)")


def _existing_file_private(r: _Reader, node: Node | None, path: str, name: str | None, *,
                           group_too: bool = False) -> None:
    """check_private for a key file the server may make itself: when it
    exists already."""
    if node is None or name is None:
        return
    try:
        mode = os.stat(name).st_mode
    except OSError:
        return
    if stat.S_ISREG(mode):
        r.check_private(node, path, name, mode, group_too=group_too)


def _text_secret(sec: _Section, key: str, *, required: bool = False) -> str | None:
    """As _secret, for a secret the code uses as text (passwords, API tokens)."""
    data = _secret(sec, key, required=required)
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        sec.r.problem(sec.node, sec.at(f"{key}_file"), "is not UTF-8 text")
        return None


# --------------------------------------------------------------------------
# The sections, top to bottom as in docs/reference.md
# --------------------------------------------------------------------------


def _read_config(r: _Reader, root: Node, absolute_path: str) -> Config | None:
    if not isinstance(root, MappingNode):
        r.problem(root, "(document)", f"expected a mapping of sections, got {_kind(root)}")
        return None
    top = _Section(r, root, "")
    policy_node = top.take("policy")
    config = Config(
        path=absolute_path,
        server=_server(r, top.take("server")),
        store=top.get("store", _store, Config.store),
        store_key_file=top.get("store_key_file", _path(), r.resolve("store.key")),
        clients=_clients(r, top.take("clients")),
        primary=_primary(r, top.take("primary")),
        factors=_factors(r, top.take("factors")),
        policy=_policy(r, policy_node),
        passwords=_passwords(r, top.take("passwords")),
        audit=_audit(r, top.take("audit")),
        metrics=_metrics(r, top.take("metrics")),
        log=_log(r, top.take("log")),
        portal=_portal(r, top.take("portal")),
    )
    if r.tls_clients and not any(a.transport == "tls" for a in config.server.listen):
        for item, item_path in r.tls_clients:
            r.problem(_key_node(item, "transport") or item, _join(item_path, "transport"),
                      "tls needs a tls listener in server.listen (e.g. - tls: \"0.0.0.0:2083\")")
    if config.policy.unenrolled == "enrol" and config.portal is None:
        r.problem(_key_node(policy_node, "unenrolled") or policy_node or 1, "policy.unenrolled",
                  "enrol needs a portal section: the link it sends leads to the self-service page")
    # the store refuses a key file its group may read; say so before it does
    key_node = top.take("store_key_file")
    _existing_file_private(r, key_node if key_node is not None else 1,
                           "store_key_file", config.store_key_file, group_too=True)
    top.finish()
    return config


def _server(r: _Reader, node: Node | None) -> ServerConfig:
    sec = _section(r, node, "server")
    if sec is None:
        return ServerConfig()
    default = ServerConfig()
    listen_node = sec.take("listen")
    tls_node = sec.take("tls")
    config = ServerConfig(
        name=sec.get("name", _string(), default.name),
        listen=default.listen if listen_node is None else _listen_list(r, listen_node, sec.at("listen")),
        workers=sec.get("workers", _integer(1, 1024), default.workers),
        tls=_server_tls(r, tls_node, sec.at("tls")),
    )
    tls_listeners = [a for a in config.listen if a.transport == "tls"]
    if tls_listeners and config.tls is None and not (tls_node is not None and not _is_null(tls_node)):
        first = next(i for i, a in enumerate(config.listen) if a.transport == "tls")
        r.problem(_item_node(listen_node, first) or sec.node, f"server.listen[{first}].tls",
                  "a tls listener needs server.tls (cert_file, key_file, ca_file)")
    elif config.tls is not None and not tls_listeners:
        r.warn(tls_node, "server.tls", "no tls listener in server.listen uses it")
    sec.finish()
    return config


def _item_node(node: Node | None, index: int) -> Node | None:
    if isinstance(node, SequenceNode) and index < len(node.value):
        return node.value[index]
    return None


def _listen_list(r: _Reader, node: Node, path: str) -> tuple[ListenAddress, ...]:
    """``[{udp: "HOST:PORT"}, {tls: "HOST:PORT"}, …]``: at least one, no
    address twice within a transport (udp and tls may share one)."""
    addresses: list[ListenAddress] = []
    items = _items(r, node, path)
    if not items and (isinstance(node, SequenceNode) or _is_null(node)):
        r.problem(node, path, "needs at least one address")
    for item, item_path in items:
        sec = _section(r, item, item_path)
        if sec is None:
            continue
        given = [t for t in ("udp", "tls") if sec.take(t) is not None]
        if len(given) > 1:
            r.problem(sec.take("tls"), _join(item_path, "tls"), "give udp or tls, not both (one address per entry)")
            sec.finish()
            continue
        transport = given[0] if given else "udp"
        address = sec.get(transport, _hostport(listen=True), required=True)
        sec.finish()
        if address is None:
            continue
        address = dataclasses.replace(address, transport=transport)
        if address in addresses:
            r.problem(item, _join(item_path, transport), "listed twice")
        else:
            addresses.append(address)
    return tuple(addresses)


def _server_tls(r: _Reader, node: Node | None, path: str) -> ServerTlsConfig | None:
    """server.tls: the tls listeners' certificate and key, the CA client
    certificates must chain to, and the idle timeout; the files are loaded
    as the server would load them, so a wrong one is named here."""
    sec = _section(r, node, path)
    if sec is None:
        return None
    cert = sec.get("cert_file", _path(), required=True)
    key = sec.get("key_file", _path(), required=True)
    ca = sec.get("ca_file", _path(), required=True)
    idle = sec.get("idle_timeout", _seconds, ServerTlsConfig.idle_timeout)
    sec.finish()
    if cert is None or key is None or ca is None:
        return None
    config = ServerTlsConfig(cert_file=cert, key_file=key, ca_file=ca, idle_timeout=idle)
    from radius_mfa.radsec import TlsFilesError, build_context

    try:
        build_context(config)
    except TlsFilesError as exc:
        r.problem(sec.take(exc.key), sec.at(exc.key), str(exc))
        return None
    _existing_file_private(r, sec.take("key_file"), sec.at("key_file"), key)
    return config


def _store(r: _Reader, node: Node, path: str) -> Any:
    """sqlite:///relative.db (to the config file) or sqlite:////absolute.db,
    normalised to sqlite:////absolute; postgresql:// kept as it is."""
    url = _string()(r, node, path)
    if url is _INVALID:
        return url
    if url.startswith("sqlite://") and not url.startswith("sqlite:///"):
        r.problem(node, path, "a sqlite URL has three slashes: sqlite:///relative.db or sqlite:////absolute.db")
        return _INVALID
    if url.startswith("sqlite:///"):
        file = url[len("sqlite:///"):]
        if not file or file.endswith("/"):
            r.problem(node, path, "sqlite URL needs a file: sqlite:///relative.db or sqlite:////absolute.db")
            return _INVALID
        return "sqlite:///" + r.resolve(file)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            urllib.parse.urlsplit(url).port
        except ValueError:
            r.problem(node, path, f"not a valid PostgreSQL URL: {mask_url_password(url)}")
            return _INVALID
        return url
    scheme = f"{url.partition('://')[0]}://" if "://" in url else "a URL without a scheme"
    r.problem(node, path, f"unsupported store ({scheme}): use sqlite:///FILE or postgresql://USER@HOST/DB")
    return _INVALID


def _clients(r: _Reader, node: Node | None) -> tuple[ClientConfig, ...]:
    """The NAS list; names unique, no network listed twice. The duplicate
    checks run on every valid name and address, even of an otherwise broken
    client, so that one run reports them all."""
    clients: list[ClientConfig] = []
    names: dict[str, int] = {}
    networks: dict[Any, tuple[str, int]] = {}
    for item, item_path in _items(r, node, "clients"):
        sec = _section(r, item, item_path)
        if sec is None:
            continue
        name = sec.get("name", _string(), required=True)
        network = sec.get("address", _network, required=True)
        transport = sec.get("transport", _choice("udp", "tls"), "udp")
        name_node, address_node = sec.take("name"), sec.take("address")
        if name is not None and name in names:
            r.problem(name_node, sec.at("name"), f"duplicate client name {name!r} (first at line {names[name]})")
        elif name is not None:
            names[name] = _line(name_node)
        if network is not None and (transport, network) in networks:
            other, line = networks[(transport, network)]
            r.problem(address_node, sec.at("address"),
                      f"{network} is also the address of {'tls ' if transport == 'tls' else ''}client "
                      f"{other!r} (line {line})")
        elif network is not None:
            networks[(transport, network)] = (name or "?", _line(address_node))
        client = _client(sec, name, network, transport)
        if client is not None and transport == "tls":
            r.tls_clients.append((item, item_path))
        sec.finish()
        if client is not None:
            clients.append(client)
    return tuple(clients)


def _client(sec: _Section, name: str | None, network: Any, transport: str = "udp") -> ClientConfig | None:
    """The rest of one client, given its already checked name, network and transport."""
    if transport == "tls":
        # RFC 6614 section 2.3: over TLS the secret protects nothing; "radsec" by convention
        secret = _secret(sec, "secret", required=False) or b"radsec"
    else:
        secret = _secret(sec, "secret", required=True)
        _check_shared_secret(sec, "secret", secret)
    client = ClientConfig(
        name=name or "",
        network=network or ipaddress.ip_network("0.0.0.0/32"),
        secret=secret or b"",
        require_message_authenticator=sec.get("require_message_authenticator", _require_ma, RequireMA.TRUE),
        mode=Mode(sec.get("mode", _choice(*(m.value for m in Mode)), Mode.CHALLENGE.value)),
        timeout=sec.get("timeout", _seconds, 30.0),
        exempt=sec.get("exempt", _boolean, False),
        limit_proxy_state=sec.get("limit_proxy_state", _boolean, False),
        transport=transport,
        cert_name=_cert_name(sec, transport),
        radius11=_radius11(sec, transport),
    )
    if client.mode is Mode.SECOND_FACTOR_ONLY and client.require_message_authenticator is RequireMA.FALSE:
        # no password is checked in this mode: the Message-Authenticator is
        # all that proves the request came from the NAS (BlastRADIUS)
        sec.r.problem(sec.take("mode"), sec.at("mode"),
                      "second-factor-only needs require_message_authenticator true or auto: "
                      "no password is checked, so only the Message-Authenticator proves the request "
                      "comes from the NAS")
    return client if name is not None and network is not None and secret is not None else None


def _cert_name(sec: _Section, transport: str) -> str | None:
    """cert_name: the DNS name (SAN) or CN a tls client's certificate must carry."""
    name = sec.get("cert_name", _string(nullable=True))
    if name is None:
        return None
    if transport != "tls":
        sec.r.problem(sec.take("cert_name"), sec.at("cert_name"), "applies to transport: tls only")
        return None
    if any(ch.isspace() for ch in name) or "*" in name:
        sec.r.problem(sec.take("cert_name"), sec.at("cert_name"),
                      "must be one name, without spaces or wildcards")
        return None
    return name


def _radius11(sec: _Section, transport: str) -> str:
    """radius11: whether a tls client may (allow), must (require) or must not
    (forbid) speak RADIUS/1.1, negotiated by ALPN (RFC 9765)."""
    value = sec.get("radius11", _choice("allow", "require", "forbid"), "allow")
    if transport != "tls" and sec.take("radius11") is not None:
        sec.r.problem(sec.take("radius11"), sec.at("radius11"), "applies to transport: tls only")
    return value


def _primary(r: _Reader, node: Node | None) -> PrimaryConfig:
    sec = _section(r, node, "primary")
    if sec is None:
        return PrimaryConfig()
    backend = sec.get("backend", _choice("local", "radius", "ldap", "none"), "local")
    radius = _radius_primary(r, sec.take("radius"), sec.at("radius"))
    ldap = _ldap_primary(r, sec.take("ldap"), sec.at("ldap"))
    if backend == "radius" and not radius.servers:
        r.problem(sec.take("backend"), sec.at("backend"), "radius needs primary.radius.servers")
    if backend == "ldap" and not ldap.servers:
        r.problem(sec.take("backend"), sec.at("backend"), "ldap needs primary.ldap.servers")
    if backend == "ldap" and ldap.servers and not (ldap.user_dn_template or ldap.base_dn):
        r.problem(sec.take("backend"), sec.at("backend"),
                  "ldap needs primary.ldap.user_dn_template or primary.ldap.base_dn")
    sec.finish()
    return PrimaryConfig(backend=backend, radius=radius, ldap=ldap)


def _radius_primary(r: _Reader, node: Node | None, path: str) -> RadiusPrimaryConfig:
    sec = _section(r, node, path)
    if sec is None:
        return RadiusPrimaryConfig()
    servers = []
    for item, item_path in _items(r, sec.take("servers"), sec.at("servers")):
        server_sec = _section(r, item, item_path)
        if server_sec is None:
            continue
        address = server_sec.get("address", _hostport(listen=False), required=True)
        secret = _secret(server_sec, "secret", required=True)
        _check_shared_secret(server_sec, "secret", secret)
        require_ma = server_sec.get("require_message_authenticator", _boolean, True)
        server_sec.finish()
        if address is not None and secret is not None:
            servers.append(RadiusServerConfig(address.host, address.port, secret, require_ma))
    config = RadiusPrimaryConfig(
        servers=tuple(servers),
        timeout=sec.get("timeout", _seconds, 3.0),
        retries=sec.get("retries", _integer(0, 10), 2),
        reply_attributes=sec.get("reply_attributes", _list_of(_string()),
                                 DEFAULT_REPLY_ATTRIBUTES),
        dead_time=sec.get("dead_time", _seconds, 30.0),
    )
    sec.finish()
    return config


def _ldap_primary(r: _Reader, node: Node | None, path: str) -> LdapPrimaryConfig:
    sec = _section(r, node, path)
    if sec is None:
        return LdapPrimaryConfig()
    default = LdapPrimaryConfig()
    config = LdapPrimaryConfig(
        servers=sec.get("servers", _list_of(_url("ldap", "ldaps")), ()),
        starttls=sec.get("starttls", _boolean, False),
        ca_file=sec.get("ca_file", _readable_file),
        user_dn_template=sec.get("user_dn_template", _contains("{user}", _string(nullable=True))),
        bind_dn=sec.get("bind_dn", _string(nullable=True)),
        bind_password=_text_secret(sec, "bind_password"),
        base_dn=sec.get("base_dn", _string(nullable=True)),
        user_filter=sec.get("user_filter", _contains("{user}", _string()), default.user_filter),
        attributes=_ldap_attributes(r, sec.take("attributes"), sec.at("attributes")),
        mfa_group=sec.get("mfa_group", _string(nullable=True)),
        timeout=sec.get("timeout", _seconds, default.timeout),
        group_member_attribute=sec.get("group_member_attribute",
                                       _choice("member", "uniqueMember", "memberUid"),
                                       default.group_member_attribute),
        nested_groups=sec.get("nested_groups", _boolean, default.nested_groups),
    )
    sec.finish()
    return config


def _readable_file(r: _Reader, node: Node, path: str) -> Any:
    name = _path(nullable=True)(r, node, path)
    if isinstance(name, str) and not os.access(name, os.R_OK):
        r.problem(node, path, f"cannot read {name}")
        return _INVALID
    return name


def _ldap_attributes(r: _Reader, node: Node | None, path: str) -> LdapAttributes:
    sec = _section(r, node, path)
    if sec is None:
        return LdapAttributes()
    default = LdapAttributes()
    phone_node = sec.take("phone")
    if phone_node is None:
        phone = default.phone
    elif isinstance(phone_node, SequenceNode):
        phone = _list_of(_string())(r, phone_node, sec.at("phone"))
    else:
        single = _string()(r, phone_node, sec.at("phone"))
        phone = default.phone if single is _INVALID else (single,)
    config = LdapAttributes(
        display_name=sec.get("display_name", _string(), default.display_name),
        email=sec.get("email", _string(), default.email),
        phone=phone,
    )
    sec.finish()
    return config


def _factors(r: _Reader, node: Node | None) -> FactorsConfig:
    sec = _section(r, node, "factors")
    if sec is None:
        return FactorsConfig()
    config = FactorsConfig(
        totp=_totp(r, sec.take("totp")),
        hotp=_hotp(r, sec.take("hotp")),
        sms=_delivery(r, sec.take("sms"), "sms"),
        voice=_delivery(r, sec.take("voice"), "voice"),
        email=_delivery(r, sec.take("email"), "email"),
        push=_push(r, sec.take("push")),
    )
    sec.finish()
    return config


def _totp(r: _Reader, node: Node | None) -> TotpConfig:
    sec = _section(r, node, "factors.totp")
    if sec is None:
        return TotpConfig()
    config = TotpConfig(window=sec.get("window", _integer(0, 10), 1))
    sec.finish()
    return config


def _hotp(r: _Reader, node: Node | None) -> HotpConfig:
    sec = _section(r, node, "factors.hotp")
    if sec is None:
        return HotpConfig()
    config = HotpConfig(look_ahead=sec.get("look_ahead", _integer(0, 1000), 10))
    sec.finish()
    return config


_PROVIDER_TYPES = {"sms": ("http", "twilio"), "voice": ("http", "twilio"), "email": ("smtp", "http")}


def _delivery(r: _Reader, node: Node | None, kind: str) -> DeliveryFactorConfig | None:
    """factors.sms / voice / email; None when the factor is not configured."""
    path = f"factors.{kind}"
    sec = _section(r, node, path)
    if sec is None:
        return None
    default = DeliveryFactorConfig()
    providers_node = sec.take("providers")
    providers = _providers(r, providers_node, sec.at("providers"), _PROVIDER_TYPES[kind])
    if providers_node is None:
        r.problem(sec.node, sec.at("providers"), "missing (at least one provider is required)")
    elif _is_null(providers_node) or (isinstance(providers_node, SequenceNode) and not providers_node.value):
        r.problem(providers_node, sec.at("providers"), "needs at least one provider")
    config = DeliveryFactorConfig(
        code_ttl=sec.get("code_ttl", _seconds, default.code_ttl),
        rate_limit=_rate_limit(r, sec.take("rate_limit"), sec.at("rate_limit")),
        message=sec.get("message", _contains("{code}", _string()), default.message),
        subject=sec.get("subject", _string(), "Your sign-in code") if kind == "email" else None,
        code_digits=sec.get("code_digits", _integer(4, 10), default.code_digits),
        providers=providers,
    )
    sec.finish()
    return config


def _rate_limit(r: _Reader, node: Node | None, path: str) -> RateLimit:
    sec = _section(r, node, path)
    if sec is None:
        return RateLimit()
    config = RateLimit(sends=sec.get("sends", _integer(1), 5), minutes=sec.get("minutes", _seconds, 5.0))
    sec.finish()
    return config


def _providers(r: _Reader, node: Node | None, path: str, types: tuple[str, ...]) -> tuple[ProviderConfig, ...]:
    providers: list[ProviderConfig] = []
    for item, item_path in _items(r, node, path):
        sec = _section(r, item, item_path)
        if sec is None:
            continue
        provider = _provider(sec, types)
        if provider is not None and any(p.name == provider.name for p in providers):
            r.problem(sec.take("name"), sec.at("name"), f"duplicate provider name {provider.name!r}")
        elif provider is not None:
            providers.append(provider)
    return tuple(providers)


def _provider(sec: _Section, types: tuple[str, ...]) -> ProviderConfig | None:
    """One provider, read by the reader of its type: which keys are allowed depends on it."""
    name = sec.get("name", _string(), required=True)
    ptype = sec.get("type", _choice(*types), required=True)
    timeout = sec.get("timeout", _seconds, 5.0)
    if ptype is None:
        return None      # unknown keys cannot be told from keys of another type: say nothing more
    provider = _PROVIDER_READERS[ptype](sec, name, timeout)
    sec.finish()
    return provider


def _http_provider(sec: _Section, name: str | None, timeout: float) -> HttpProviderConfig | None:
    url = sec.get("url", _url("http", "https"), required=True)
    method = sec.get("method", _choice("POST", "GET", "PUT", "PATCH"), "POST")
    headers = _headers(sec.r, sec.take("headers"), sec.at("headers"))
    body = sec.get("body", _string(nullable=True))
    if name is None or url is None:
        return None
    return HttpProviderConfig(name=name, timeout=timeout, url=url, method=method, headers=headers, body=body)


def _headers(r: _Reader, node: Node | None, path: str) -> tuple[tuple[str, str], ...]:
    """A mapping of header names to values; values may hold API keys, so
    problems name the header, never its value."""
    if node is None or _is_null(node):
        return ()
    if not isinstance(node, MappingNode):
        r.problem(node, path, f"expected a mapping, got {_kind(node)}")
        return ()
    pairs = []
    for key_node, value_node in node.value:
        key = _string()(r, key_node, path)
        if key is _INVALID:
            continue
        value = _string(nonempty=False)(r, value_node, _join(path, key))
        if value is not _INVALID:
            pairs.append((key, value))
    return tuple(pairs)


def _twilio_provider(sec: _Section, name: str | None, timeout: float) -> TwilioProviderConfig | None:
    account_sid = sec.get("account_sid", _string(), required=True)
    auth_token = _text_secret(sec, "auth_token", required=True)
    from_number = sec.get("from", _string(), required=True)
    url = sec.get("url", _url("http", "https"))      # the API base; tests point it at a fake
    if None in (name, account_sid, auth_token, from_number):
        return None
    return TwilioProviderConfig(name=name, timeout=timeout, account_sid=account_sid, auth_token=auth_token,
                                from_number=from_number, url=url)


def _smtp_provider(sec: _Section, name: str | None, timeout: float) -> SmtpProviderConfig | None:
    host = sec.get("host", _string(), required=True)
    starttls = sec.get("starttls", _boolean, False)
    tls = sec.get("tls", _boolean, False)
    if starttls and tls:
        sec.r.problem(sec.take("tls"), sec.at("tls"), "give starttls or tls, not both")
    port = sec.get("port", _integer(1, 65535), 465 if tls else 587 if starttls else 25)
    username = sec.get("username", _string(nullable=True))
    password = _text_secret(sec, "password")
    if sec.given("username") != (sec.given("password") or sec.given("password_file")):
        sec.r.problem(sec.node, sec.path, "username and password (or password_file) go together")
    from_address = sec.get("from", _string(), required=True)
    if name is None or host is None or from_address is None:
        return None
    return SmtpProviderConfig(name=name, timeout=timeout, host=host, from_address=from_address, port=port,
                              starttls=starttls, tls=tls, username=username, password=password)


_PROVIDER_READERS: dict[str, Callable[[_Section, str | None, float], ProviderConfig | None]] = {
    "http": _http_provider, "twilio": _twilio_provider, "smtp": _smtp_provider}


def _push(r: _Reader, node: Node | None) -> PushConfig | None:
    sec = _section(r, node, "factors.push")
    if sec is None:
        return None
    default = PushConfig()
    config = PushConfig(
        listen=sec.get("listen", _hostport(listen=True), default.listen),
        tls_cert=sec.get("tls_cert", _path(), default.tls_cert),
        tls_key=sec.get("tls_key", _path(), default.tls_key),
        public_url=sec.get("public_url", _url("https", "http")),
        timeout=sec.get("timeout", _seconds, default.timeout),
        number_matching=sec.get("number_matching", _boolean, default.number_matching),
        pairing_ttl=sec.get("pairing_ttl", _seconds, default.pairing_ttl),
        rate_limit=_rate_limit(r, sec.take("rate_limit"), sec.at("rate_limit")),
        notify=_notifiers(r, sec.take("notify"), sec.at("notify")),
    )
    _existing_file_private(r, sec.take("tls_key"), sec.at("tls_key"), config.tls_key)
    sec.finish()
    return config


_NOTIFIER_TYPES = ("webhook",)
_PLACEHOLDER_NAME = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _notifiers(r: _Reader, node: Node | None, path: str) -> tuple[NotifierConfig, ...]:
    """factors.push.notify: a list of webhooks, each with a unique name."""
    notifiers: list[NotifierConfig] = []
    for item, item_path in _items(r, node, path):
        sec = _section(r, item, item_path)
        if sec is None:
            continue
        notifier = _notifier(sec)
        if notifier is not None and any(n.name == notifier.name for n in notifiers):
            r.problem(sec.take("name"), sec.at("name"), f"duplicate notifier name {notifier.name!r}")
        elif notifier is not None:
            notifiers.append(notifier)
    return tuple(notifiers)


def _notifier(sec: _Section) -> NotifierConfig | None:
    name = sec.get("name", _string(), required=True)
    ntype = sec.get("type", _choice(*_NOTIFIER_TYPES), "webhook")
    url = sec.get("url", _known_placeholders(_url("http", "https")), required=True)
    config_fields = {
        "method": sec.get("method", _choice("POST", "GET", "PUT", "PATCH"), "POST"),
        "headers": _headers(sec.r, sec.take("headers"), sec.at("headers")),
        "body": sec.get("body", _known_placeholders(_string(nullable=True))),
        "timeout": sec.get("timeout", _seconds, 5.0),
    }
    sec.finish()
    if name is None or url is None:
        return None
    return NotifierConfig(name=name, url=url, type=ntype, **config_fields)


def _known_placeholders(convert: Converter) -> Converter:
    """A notifier template: a ``{word}`` that looks like a placeholder must be
    one of NOTIFY_PLACEHOLDERS (a typo would otherwise be sent as is). Other
    braces (a JSON body's) are left alone."""
    def checked(r: _Reader, node: Node, path: str) -> Any:
        value = convert(r, node, path)
        if isinstance(value, str):
            unknown = sorted({m.group(1) for m in _PLACEHOLDER_NAME.finditer(value)} - set(NOTIFY_PLACEHOLDERS))
            if unknown:
                known = " ".join(f"{{{p}}}" for p in NOTIFY_PLACEHOLDERS)
                r.problem(node, path, f"unknown placeholder {{{unknown[0]}}} (known: {known})")
                return _INVALID
        return value
    return checked


def _policy(r: _Reader, node: Node | None) -> PolicyConfig:
    sec = _section(r, node, "policy")
    if sec is None:
        return PolicyConfig()
    default = PolicyConfig()
    config = PolicyConfig(
        unenrolled=sec.get("unenrolled", _choice("reject", "allow", "enrol"), default.unenrolled),
        username=_username(r, sec.take("username"), sec.at("username")),
        exempt_users=sec.get("exempt_users", _list_of(_string()), ()),
        exempt_groups=sec.get("exempt_groups", _list_of(_string()), ()),
        lockout=_lockout(r, sec.take("lockout"), sec.at("lockout")),
        delimiter=sec.get("delimiter", _string(), default.delimiter),
        state_ttl=sec.get("state_ttl", _seconds, default.state_ttl),
    )
    sec.finish()
    return config


def _username(r: _Reader, node: Node | None, path: str) -> UsernameConfig:
    sec = _section(r, node, path)
    if sec is None:
        return UsernameConfig()
    default = UsernameConfig()
    config = UsernameConfig(
        case=sec.get("case", _choice("insensitive", "sensitive"), default.case),
        strip_realm=sec.get("strip_realm", _boolean, default.strip_realm),
    )
    sec.finish()
    return config


def _passwords(r: _Reader, node: Node | None) -> PasswordsConfig:
    sec = _section(r, node, "passwords")
    if sec is None:
        return PasswordsConfig()
    default = PasswordsConfig()
    config = PasswordsConfig(
        scheme=sec.get("scheme", _choice("scrypt", "pbkdf2-sha256"), default.scheme),
        pbkdf2_iterations=sec.get("pbkdf2_iterations", _integer(_MIN_PBKDF2_ITERATIONS, _MAX_PBKDF2_ITERATIONS),
                                  default.pbkdf2_iterations),
    )
    sec.finish()
    return config


def _lockout(r: _Reader, node: Node | None, path: str) -> LockoutConfig:
    sec = _section(r, node, path)
    if sec is None:
        return LockoutConfig()
    config = LockoutConfig(failures=sec.get("failures", _integer(1), 5), minutes=sec.get("minutes", _seconds, 15.0))
    sec.finish()
    return config


def _audit(r: _Reader, node: Node | None) -> AuditConfig:
    sec = _section(r, node, "audit")
    if sec is None:
        return AuditConfig()
    file = sec.get("file", _string(), "-")
    sec.finish()
    return AuditConfig(file=file if file == "-" else r.resolve(file))


def _metrics(r: _Reader, node: Node | None) -> MetricsConfig | None:
    sec = _section(r, node, "metrics")
    if sec is None:
        return None
    listen = sec.get("listen", _hostport(listen=True), required=True)
    sec.finish()
    return MetricsConfig(listen=listen) if listen is not None else None


def _portal(r: _Reader, node: Node | None) -> PortalConfig | None:
    """portal: the self-service page; absent: off."""
    sec = _section(r, node, "portal")
    if sec is None:
        return None
    default = PortalConfig()
    config = PortalConfig(
        listen=sec.get("listen", _hostport(listen=True), default.listen),
        tls_cert=sec.get("tls_cert", _path(), default.tls_cert),
        tls_key=sec.get("tls_key", _path(), default.tls_key),
        public_url=sec.get("public_url", _url("https"), default.public_url, required=True),
    )
    _existing_file_private(r, sec.take("tls_key"), sec.at("tls_key"), config.tls_key)
    sec.finish()
    return config


def _key_node(node: Node | None, key: str) -> Node | None:
    """The node of ``key`` in the mapping ``node`` (for the line of a
    problem found after the section was read); None when absent."""
    if isinstance(node, MappingNode):
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and key_node.value == key:
                return key_node
    return None


def _log(r: _Reader, node: Node | None) -> LogConfig:
    sec = _section(r, node, "log")
    if sec is None:
        return LogConfig()
    config = LogConfig(
        level=sec.get("level", _choice("debug", "info", "warning", "error"), "info"),
        format=sec.get("format", _choice("auto", "json", "console"), "auto"),
    )
    sec.finish()
    return config
