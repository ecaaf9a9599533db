"""``python -m fintech_operator`` is the same as the ``fintech-operator`` command."""

import sys

from fintech_operator import cli

sys.exit(cli.main())
