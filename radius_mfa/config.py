"""YAML → a frozen, typed Config; every error with FILE:LINE and the key path.

The dataclasses below are the contract every other module reads. Each plugin
receives only its own section.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class ServerConfig:
    name: str = "radius-mfa"
    listen: tuple[ListenAddress, ...] = (ListenAddress("0.0.0.0", 1812),)
    workers: int = 1


@dataclass(frozen=True)
class ClientConfig:
    name: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network   # a single IP becomes a /32 or /128
    secret: bytes = field(repr=False)                        # from `secret` or read from `secret_file`
    require_message_authenticator: RequireMA = RequireMA.TRUE
    mode: Mode = Mode.CHALLENGE
    timeout: float = 30.0
    exempt: bool = False


@dataclass(frozen=True)
class RadiusServerConfig:
    host: str
    port: int
    secret: bytes = field(repr=False)
    require_message_authenticator: bool = True


@dataclass(frozen=True)
class RadiusPrimaryConfig:
    servers: tuple[RadiusServerConfig, ...] = ()
    timeout: float = 3.0
    retries: int = 2


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


@dataclass(frozen=True)
class ProviderConfig:
    """One delivery provider; the keys that do not apply to its type stay None."""
    name: str
    type: str                          # http | twilio | smtp
    timeout: float = 5.0
    # http / twilio
    url: str | None = None
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = ()
    body: str | None = None
    account_sid: str | None = None
    auth_token: str | None = field(default=None, repr=False)   # twilio, from auth_token_file
    from_number: str | None = None                             # twilio `from`
    # smtp
    host: str | None = None
    port: int | None = None
    starttls: bool = False
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)     # from password_file
    from_address: str | None = None                            # smtp `from`


@dataclass(frozen=True)
class DeliveryFactorConfig:
    """factors.sms, factors.voice, factors.email."""
    code_ttl: float = 300.0
    rate_limit: RateLimit = RateLimit()
    message: str = "Your sign-in code is {code}"
    subject: str | None = None          # email only
    code_digits: int = 6
    providers: tuple[ProviderConfig, ...] = ()


@dataclass(frozen=True)
class PushConfig:
    listen: ListenAddress = ListenAddress("0.0.0.0", 8443)
    tls_cert: str = "/etc/radius-mfa/push.crt"
    tls_key: str = "/etc/radius-mfa/push.key"
    public_url: str | None = None
    timeout: float = 50.0
    number_matching: bool = True


@dataclass(frozen=True)
class FactorsConfig:
    totp: TotpConfig = TotpConfig()
    hotp: HotpConfig = HotpConfig()
    sms: DeliveryFactorConfig | None = None       # None: not configured
    voice: DeliveryFactorConfig | None = None
    email: DeliveryFactorConfig | None = None
    push: PushConfig | None = None


@dataclass(frozen=True)
class LockoutConfig:
    failures: int = 5
    minutes: float = 15.0


@dataclass(frozen=True)
class PolicyConfig:
    unenrolled: str = "reject"          # reject | allow
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
    clients: tuple[ClientConfig, ...] = ()
    primary: PrimaryConfig = PrimaryConfig()
    factors: FactorsConfig = FactorsConfig()
    policy: PolicyConfig = PolicyConfig()
    audit: AuditConfig = AuditConfig()
    metrics: MetricsConfig | None = None
    log: LogConfig = LogConfig()
