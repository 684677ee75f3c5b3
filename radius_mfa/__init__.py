"""radius-mfa: a RADIUS server that adds multi-factor authentication."""

__version__ = "0.1.0"


def version() -> str:
    """The installed distribution's version; the source tree's when the
    package runs without being installed."""
    from importlib import metadata

    try:
        return metadata.version("radius-mfa")
    except metadata.PackageNotFoundError:
        return __version__
