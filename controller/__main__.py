"""``python -m controller``: the autoscaling loop (see :mod:`controller.cli`)."""

import sys

from controller.cli import main

sys.exit(main())
