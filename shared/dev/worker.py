"""`python -m shared.dev.worker --kinds ... --handler ...`: a worker on the dev server's database.

The same command line as `python -m shared.worker`; with no DATABASE_URL set it uses the embedded
PostgreSQL of a running `PIPELINE=queue ./scripts/dev` (same data dir).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from shared.dev.embedded import PGDATA_NAME, start_embedded
from shared.dev.server import data_dir_from
from shared.worker.__main__ import main as worker_main


def main(argv: Sequence[str] | None = None) -> int:
    if not os.environ.get("DATABASE_URL", "").strip():
        data_dir = data_dir_from(os.environ)
        if not (data_dir / PGDATA_NAME / "postmaster.pid").exists():
            print(
                f"no dev database is running in {data_dir}: start `PIPELINE=queue ./scripts/dev`"
                " first, or set DATABASE_URL",
                file=sys.stderr,
            )
            return 2
        os.environ["DATABASE_URL"] = start_embedded(data_dir, keep=True)
    return worker_main(argv)


if __name__ == "__main__":
    sys.exit(main())
