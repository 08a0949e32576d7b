"""`python -m launcher [all|controller|worker|ui|test] [FLAGS] [-- WORKER ARGS]` (all flags: --help)."""

import sys

from launcher.main import main

if __name__ == "__main__":
    sys.exit(main())
