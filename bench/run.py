"""Run the benchmarks side by side on one server and write the results.

    python -m bench.run                 every scenario, 3 runs x 10 s each figure (about 25 min)
    python -m bench.run --quick         tiny sizes, 1 s runs: checks the harness, not the speed
    python -m bench.run --only sql_core,hot_account --runs 5 --seconds 20
    python -m bench.run --only scaling  0 vs 10,000,000 jobs of history (not in the default run)

Starts an embedded PostgreSQL of its own under .data/bench (deleted afterwards unless --keep),
or uses BENCH_DATABASE_URL (a maintenance database such as `postgres`; the databases it creates
there are dropped afterwards). Writes <out>/<date>.json, <out>/<date>.md and PNG charts in
<out>/<date>/; <out> is bench/results (bench/results/tmp with --quick).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import report
from bench.harness import Config, Context
from bench.server import start, stop

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = (
    "sql_core",
    "hot_account",
    "seed_way",
    "http_api",
    "history",
    "reaping",
    "flat_cost",
    "http_cpu",
    "scaling",
)
# Run only when named in --only: scaling loads 10,000,000 jobs of history (about an hour).
ON_REQUEST = ("scaling",)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 1 s runs")
    parser.add_argument("--runs", type=int, help="measurements per figure (median is reported)")
    parser.add_argument("--seconds", type=float, help="length of one measurement")
    parser.add_argument("--clients", help="comma-separated client counts, e.g. 1,8,32")
    parser.add_argument(
        "--only",
        help=f"comma-separated scenarios of: {', '.join(SCENARIOS)} (default: all but"
        f" {', '.join(ON_REQUEST)})",
    )
    parser.add_argument("--out", type=Path, help="results directory")
    parser.add_argument("--keep", action="store_true", help="keep the embedded server running")
    parser.add_argument("--no-charts", action="store_true", help="skip the PNGs (no matplotlib)")
    args = parser.parse_args(argv)

    config = Config.quick() if args.quick else Config()
    if args.runs:
        config.runs = args.runs
    if args.seconds:
        config.seconds = args.seconds
    if args.clients:
        config.clients = [int(c) for c in args.clients.split(",")]
    chosen = args.only.split(",") if args.only else [s for s in SCENARIOS if s not in ON_REQUEST]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    out = args.out or ROOT / "bench" / "results" / ("tmp" if args.quick else "")

    server = start(ROOT / ".data" / "bench", keep=args.keep)
    ctx = Context(server, config, prefix=f"bench_{os.getpid()}")
    results: dict[str, Any] = {"meta": _meta(server, config), "scenarios": {}}
    try:
        for name in chosen:
            ctx.log(f"== {name}")
            started = time.monotonic()
            module = importlib.import_module(f"bench.scenarios.{name}")
            results["scenarios"][name] = module.run(ctx)
            results["scenarios"][name]["wall_seconds"] = round(time.monotonic() - started, 1)
    finally:
        results["meta"]["wall_seconds"] = round(time.monotonic() - ctx.started, 1)
        stop(server)
    paths = report.write(results, out, charts=not args.no_charts)
    ctx.log("wrote " + ", ".join(os.path.relpath(p, Path.cwd()) for p in paths))
    print(report.markdown(results))
    return 0


def _meta(server, config: Config) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "server": "BENCH_DATABASE_URL" if os.environ.get("BENCH_DATABASE_URL") else "embedded",
        "settings": server.settings(),
        "pg_stat_statements": server.has_pg_stat_statements(),
        "pgbench": str(server.pgbench),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "python": platform.python_version(),
        },
        "config": config.as_dict(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
