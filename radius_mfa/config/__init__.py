"""YAML → a frozen, typed Config; every error with FILE:LINE and the key path.

Two halves: :mod:`radius_mfa.config.schema`, the dataclasses every other
module reads (one typed section per plugin, one per delivery provider kind),
and :mod:`radius_mfa.config.loader`, which reads the YAML file into them and
collects every problem. Both are re-exported here: ``from radius_mfa.config
import load_config, ClientConfig`` is how the rest of the code imports them.
"""

from radius_mfa.config import schema
from radius_mfa.config.loader import load_config, mask_url_password
from radius_mfa.config.schema import *  # noqa: F403 (every section type: schema.__all__)

__all__ = ["load_config", "mask_url_password", *schema.__all__]
