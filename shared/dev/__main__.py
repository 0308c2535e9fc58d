"""`python -m shared.dev`: the dev server (see shared.dev.server)."""

import sys

from shared.dev.server import main

if __name__ == "__main__":
    sys.exit(main())
