"""radius-mfa: a RADIUS server that adds multi-factor authentication."""

__version__ = "0.1.0"
