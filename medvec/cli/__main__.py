"""`python -m medvec.cli ...`: the same command line as the `medvec` script."""

import sys

from medvec.cli import main

sys.exit(main())
