"""The schema: the frozen, typed Config the loader (radius_mfa.config.loader) builds.

The dataclasses below are the contract every other module reads. Each plugin
receives only its own section: a delivery provider, for one, gets the
section of its own kind (HttpProviderConfig, TwilioProviderConfig,
SmtpProviderConfig), never the keys of another.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import ClassVar


class Mode(str, enum.Enum):
    CHALLENGE = "challenge"
    INLINE = "inline"
    SECOND_FACTOR_ONLY = "second-factor-only"


class RequireMA(str, enum.Enum):
    """require_message_authenticator: true | false | auto (required once seen)."""
    TRUE = "true"
    FALSE = "false"
    AUTO = "auto"


@dataclass(frozen=True)
class ListenAddress:
    host: str          # "0.0.0.0", "::", "127.0.0.1"; brackets removed
    port: int
    transport: str = "udp"   # server.listen: udp | tls (RADIUS over TLS); elsewhere unused


@dataclass(frozen=True)
class ServerTlsConfig:
    """server.tls: the certificate of tls listeners and the CA their clients' chain to."""
    cert_file: str
    key_file: str
    ca_file: str
    idle_timeout: float = 60.0       # seconds without a request before a connection is closed


@dataclass(frozen=True)
class ServerConfig:
    name: str = "radius-mfa"
    listen: tuple[ListenAddress, ...] = (ListenAddress("0.0.0.0", 1812),)   # in config order, udp and tls
    workers: int = 1
    tls: ServerTlsConfig | None = None   # required by a tls listener


@dataclass(frozen=True)
class ClientConfig:
    name: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network   # a single IP becomes a /32 or /128
    secret: bytes = field(repr=False)                        # from `secret` or read from `secret_file`
    require_message_authenticator: RequireMA = RequireMA.TRUE
    mode: Mode = Mode.CHALLENGE
    timeout: float = 30.0
    exempt: bool = False
    # drop an Access-Request carrying Proxy-State without a valid
    # Message-Authenticator (draft-ietf-radext-deprecating-radius)
    limit_proxy_state: bool = False
    transport: str = "udp"                                   # udp | tls: clients match within their transport
    cert_name: str | None = None                             # tls: the name its certificate must carry
    radius11: str = "allow"                                  # tls: allow | require | forbid RADIUS/1.1 (RFC 9765)


@dataclass(frozen=True)
class RadiusServerConfig:
    host: str
    port: int
    secret: bytes = field(repr=False)
    require_message_authenticator: bool = True


# What an upstream Access-Accept may pass through to the NAS's final Access-Accept.
DEFAULT_REPLY_ATTRIBUTES = (
    "Class", "Filter-Id", "Session-Timeout", "Idle-Timeout", "Termination-Action",
    "Framed-Protocol", "Framed-IP-Address", "Framed-IP-Netmask", "Framed-Route",
    "Framed-Routing", "Framed-MTU", "Framed-Compression", "Framed-Pool",
    "Framed-IPv6-Prefix", "Framed-IPv6-Route", "Framed-IPv6-Pool", "Framed-Interface-Id",
    "Service-Type", "Tunnel-Type", "Tunnel-Medium-Type", "Tunnel-Private-Group-Id",
    "Acct-Interim-Interval", "Vendor-Specific",
)


@dataclass(frozen=True)
class RadiusPrimaryConfig:
    servers: tuple[RadiusServerConfig, ...] = ()
    timeout: float = 3.0
    retries: int = 2
    # attribute names passed through from the upstream's Access-Accept;
    # "Vendor-Specific" stands for every vendor attribute. MS-CHAP2-Success and
    # the MS-MPPE keys always pass (MS-CHAPv2 needs them).
    reply_attributes: tuple[str, ...] = DEFAULT_REPLY_ATTRIBUTES
    dead_time: float = 30.0           # seconds a server that did not answer is skipped, probed with Status-Server


@dataclass(frozen=True)
class LdapAttributes:
    display_name: str = "displayName"
    email: str = "mail"
    phone: tuple[str, ...] = ("mobile", "telephoneNumber")


@dataclass(frozen=True)
class LdapPrimaryConfig:
    servers: tuple[str, ...] = ()
    starttls: bool = False
    ca_file: str | None = None
    user_dn_template: str | None = None
    bind_dn: str | None = None
    bind_password: str | None = field(default=None, repr=False)   # read from bind_password_file
    base_dn: str | None = None
    user_filter: str = "(uid={user})"
    attributes: LdapAttributes = LdapAttributes()
    mfa_group: str | None = None
    timeout: float = 5.0
    group_member_attribute: str = "member"   # on group entries: member | uniqueMember | memberUid
    nested_groups: bool = False       # Active Directory: LDAP_MATCHING_RULE_IN_CHAIN (1.2.840.113556.1.4.1941)


@dataclass(frozen=True)
class PrimaryConfig:
    backend: str = "local"            # local | radius | ldap | none
    radius: RadiusPrimaryConfig = RadiusPrimaryConfig()
    ldap: LdapPrimaryConfig = LdapPrimaryConfig()


@dataclass(frozen=True)
class TotpConfig:
    window: int = 1


@dataclass(frozen=True)
class HotpConfig:
    look_ahead: int = 10


@dataclass(frozen=True)
class RateLimit:
    sends: int = 5
    minutes: float = 5.0


@dataclass(frozen=True, kw_only=True)
class ProviderConfig:
    """What every delivery provider has; each kind is a subclass with its own
    keys, and ``type`` (http | twilio | smtp) is fixed by the subclass."""
    type: ClassVar[str]
    name: str
    timeout: float = 5.0


@dataclass(frozen=True, kw_only=True)
class HttpProviderConfig(ProviderConfig):
    """``type: http``: a generic gateway, placeholders in its url and body (radius_mfa.httptemplate)."""
    type: ClassVar[str] = "http"
    url: str
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)   # may hold API keys
    body: str | None = None


@dataclass(frozen=True, kw_only=True)
class TwilioProviderConfig(ProviderConfig):
    """``type: twilio``: SMS and voice through Twilio's REST API."""
    type: ClassVar[str] = "twilio"
    account_sid: str
    auth_token: str = field(repr=False)      # from auth_token_file
    from_number: str                         # `from`
    url: str | None = None                   # the API base; None: https://api.twilio.com


@dataclass(frozen=True, kw_only=True)
class SmtpProviderConfig(ProviderConfig):
    """``type: smtp``: mail through an SMTP server."""
    type: ClassVar[str] = "smtp"
    host: str
    from_address: str                        # `from`
    port: int | None = None                  # None: 465 with tls, 587 with starttls, else 25
    starttls: bool = False
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)     # from password_file


@dataclass(frozen=True)
class DeliveryFactorConfig:
    """factors.sms, factors.voice, factors.email."""
    code_ttl: float = 300.0
    rate_limit: RateLimit = RateLimit()
    message: str = "Your sign-in code is {code}"
    subject: str | None = None          # email only
    code_digits: int = 6
    providers: tuple[ProviderConfig, ...] = ()


#: What a notifier's url and body may carry (see radius_mfa.push.notify).
NOTIFY_PLACEHOLDERS = ("user", "client", "push_id", "user_ip", "number_hint")


@dataclass(frozen=True)
class NotifierConfig:
    """One entry of factors.push.notify: a webhook called when a push starts,
    so the user's phone (or chat, or pager) knows to open the authenticator.
    ``type`` selects the notifier; ``webhook`` is the only one built in."""
    name: str
    url: str
    type: str = "webhook"
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)   # may hold API keys
    body: str | None = None
    timeout: float = 5.0


@dataclass(frozen=True)
class PushConfig:
    listen: ListenAddress = ListenAddress("0.0.0.0", 8443)
    tls_cert: str = "/etc/radius-mfa/push.crt"
    tls_key: str = "/etc/radius-mfa/push.key"
    public_url: str | None = None
    timeout: float = 50.0
    number_matching: bool = True
    pairing_ttl: float = 600.0          # seconds a `device pair` link stays valid
    rate_limit: RateLimit = RateLimit()  # pushes started per user (5 in 5 minutes)
    notify: tuple[NotifierConfig, ...] = ()


@dataclass(frozen=True)
class FactorsConfig:
    totp: TotpConfig = TotpConfig()
    hotp: HotpConfig = HotpConfig()
    sms: DeliveryFactorConfig | None = None       # None: not configured
    voice: DeliveryFactorConfig | None = None
    email: DeliveryFactorConfig | None = None
    push: PushConfig | None = None


@dataclass(frozen=True)
class PortalConfig:
    """portal: the self-service page, HTTPS. When ``listen`` equals
    ``factors.push.listen`` one server serves the device API and the page
    (with the device API's certificate)."""
    listen: ListenAddress = ListenAddress("0.0.0.0", 8444)
    tls_cert: str = "/etc/radius-mfa/portal.crt"
    tls_key: str = "/etc/radius-mfa/portal.key"
    public_url: str = ""                # what enrolment links point at (required)


@dataclass(frozen=True)
class LockoutConfig:
    failures: int = 5
    minutes: float = 15.0


@dataclass(frozen=True)
class UsernameConfig:
    """How user names are compared: after Unicode NFC and trimming, and
    case-insensitively by default, as directories match them."""
    case: str = "insensitive"           # insensitive | sensitive
    strip_realm: bool = False           # CORP\alice and alice@corp → alice


@dataclass(frozen=True)
class PasswordsConfig:
    """The local backend's hash for new and upgraded passwords, and the
    timing floor of every password check."""
    scheme: str = "scrypt"              # scrypt (N=2^14, r=8, p=1) | pbkdf2-sha256
    pbkdf2_iterations: int = 600_000


@dataclass(frozen=True)
class PolicyConfig:
    unenrolled: str = "reject"          # reject | allow | enrol
    username: UsernameConfig = UsernameConfig()
    exempt_users: tuple[str, ...] = ()
    exempt_groups: tuple[str, ...] = ()
    lockout: LockoutConfig = LockoutConfig()
    delimiter: str = ","
    state_ttl: float = 300.0            # seconds a challenge State stays valid (extension)


@dataclass(frozen=True)
class AuditConfig:
    file: str = "-"                     # "-": stdout


@dataclass(frozen=True)
class MetricsConfig:
    listen: ListenAddress


@dataclass(frozen=True)
class LogConfig:
    """Extension: how the server logs to stderr."""
    level: str = "info"                 # debug | info | warning | error
    format: str = "auto"                # auto (console on a terminal, else json) | json | console


@dataclass(frozen=True)
class Config:
    path: str                           # the file it was read from
    server: ServerConfig = ServerConfig()
    store: str = "sqlite:////var/lib/radius-mfa/radius-mfa.db"
    # Extension: the key that seals token secrets in the store, kept outside
    # it; "" until loaded, then absolute (default: store.key beside this file)
    store_key_file: str = ""
    clients: tuple[ClientConfig, ...] = ()
    primary: PrimaryConfig = PrimaryConfig()
    factors: FactorsConfig = FactorsConfig()
    policy: PolicyConfig = PolicyConfig()
    passwords: PasswordsConfig = PasswordsConfig()
    audit: AuditConfig = AuditConfig()
    metrics: MetricsConfig | None = None
    log: LogConfig = LogConfig()
    portal: PortalConfig | None = None   # None: no self-service page
    # What the loader found worth a warning (short shared secrets, files
    # others can read), each ``FILE:LINE: key.path: warning: message``, by
    # line; never a secret. check-config prints them, serve logs them.
    warnings: tuple[str, ...] = field(default=(), compare=False)


# What ``radius_mfa.config`` re-exports: every section type and constant above.
__all__ = sorted(name for name, value in list(globals().items())
                 if not name.startswith("_") and (name.isupper() or getattr(value, "__module__", None) == __name__))
