"""`python -m draem` runs the command line."""

import sys

from draem.cli import main

sys.exit(main())
