"""`python -m radius_mfa …`: the same as the `radius-mfa` command."""

import sys

from radius_mfa.cli import main

sys.exit(main())
