"""``python -m radius_mfa_authenticator``: the console script."""

import sys

from radius_mfa_authenticator.cli import main

sys.exit(main())
