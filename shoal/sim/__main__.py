"""`python -m shoal.sim`: the same as `shoal simulate`."""

import sys

from shoal.sim.cli import main

if __name__ == "__main__":
    sys.exit(main())
