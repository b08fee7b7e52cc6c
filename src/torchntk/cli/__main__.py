"""``python -m torchntk.cli``."""

import sys

from . import main

sys.exit(main())
