"""`python -m shared.worker --kinds K1,K2 --handler module:function`: run a pull-mode worker."""

from __future__ import annotations

import argparse
import logging
import os
import pkgutil
import signal
import socket
import sys
from collections.abc import Sequence

import shared.worker
from shared.core import log
from shared.core.db import database_from_settings
from shared.core.settings import ConfigurationError, Settings
from shared.worker import Worker


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.worker",
        description=shared.worker.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kinds", required=True, help="comma-separated job kinds to claim")
    parser.add_argument("--handler", required=True, help="package.module:function")
    parser.add_argument("--concurrency", type=int, default=1, help="jobs run at once (default 1)")
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        help="seconds between claims when the queue is empty (default 1)",
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM/SIGINT, how long running jobs may finish (default 30)",
    )
    parser.add_argument(
        "--worker-id",
        default=f"{socket.gethostname()}:{os.getpid()}",
        help="recorded on claimed jobs (default host:pid)",
    )
    args = parser.parse_args(argv)
    kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    if not kinds:
        parser.error("--kinds needs at least one kind")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    try:
        handler = pkgutil.resolve_name(args.handler)
    except (ImportError, AttributeError, ValueError) as exc:
        parser.error(f"cannot load handler {args.handler!r}: {exc}")
    try:
        db = database_from_settings(Settings.from_env())
    except ConfigurationError as exc:
        parser.error(str(exc))

    log.configure()
    worker = Worker(
        db,
        handler,
        kinds,
        worker_id=args.worker_id,
        concurrency=args.concurrency,
        poll_interval=args.poll_interval,
        grace_seconds=args.grace_seconds,
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.stop())
    abandoned = worker.run()
    if abandoned:
        # Their jobs are already failed as retryable; do not wait for the handlers' threads.
        logging.shutdown()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
