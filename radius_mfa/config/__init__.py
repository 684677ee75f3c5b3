"""YAML → a frozen, typed Config; every error with FILE:LINE and the key path.

Two halves: :mod:`radius_mfa.config.schema`, the dataclasses every other
module reads (one typed section per plugin, one per delivery provider kind),
and :mod:`radius_mfa.config.loader`, which reads the YAML file into them and
collects every problem. Both are re-exported here: ``from radius_mfa.config
import load_config, ClientConfig`` is how the rest of the code imports them.
"""

from radius_mfa.config.loader import load_config, mask_url_password
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
    PrimaryConfig,
    ProviderConfig,
    PushConfig,
    RadiusPrimaryConfig,
    RadiusServerConfig,
    RateLimit,
    RequireMA,
    ServerConfig,
    SmtpProviderConfig,
    TotpConfig,
    TwilioProviderConfig,
    UsernameConfig,
)

__all__ = [
    "DEFAULT_REPLY_ATTRIBUTES", "NOTIFY_PLACEHOLDERS", "AuditConfig", "ClientConfig", "Config",
    "DeliveryFactorConfig", "FactorsConfig", "HotpConfig", "HttpProviderConfig", "LdapAttributes",
    "LdapPrimaryConfig", "ListenAddress", "LockoutConfig", "LogConfig", "MetricsConfig", "Mode",
    "NotifierConfig", "PasswordsConfig", "PolicyConfig", "PrimaryConfig", "ProviderConfig", "PushConfig",
    "RadiusPrimaryConfig", "RadiusServerConfig", "RateLimit", "RequireMA", "ServerConfig",
    "SmtpProviderConfig", "TotpConfig", "TwilioProviderConfig", "UsernameConfig", "load_config",
    "mask_url_password",
]
