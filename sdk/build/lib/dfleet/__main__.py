"""python -m dfleet"""

import sys

from dfleet.cli import main

sys.exit(main())
