"""The exception tree, by whose fault a thing went wrong."""


class RadiusMfaError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(RadiusMfaError):
    """The configuration file is wrong: the administrator's fault.

    ``problems`` holds every problem found, each already formatted as
    ``FILE:LINE: key.path: message``.
    """

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class UsageError(RadiusMfaError):
    """A command was called with arguments that make no sense (exit 2)."""


class RefusedError(RadiusMfaError):
    """A command was understood but cannot be done: not found, exists already,
    invalid value (exit 1)."""


class NotFoundError(RefusedError):
    """The named user, token or device does not exist."""


class AlreadyExistsError(RefusedError):
    """The named user, token or device exists already."""


class StoreError(RadiusMfaError):
    """The store could not be read or written (our side, or the database's)."""


class RemoteProtocolError(RadiusMfaError):
    """A peer sent bytes that are not a valid RADIUS packet: the peer's fault."""


class LocalProtocolError(RadiusMfaError):
    """We were asked to encode something that cannot be encoded: our fault."""
