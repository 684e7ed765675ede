"""python -m steadyhand: the command line."""

import sys

from steadyhand.cli import main

sys.exit(main())
