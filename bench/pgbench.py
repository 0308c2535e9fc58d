"""pgbench, PostgreSQL's own load generator: the reference every ratio is measured against.

Runs use the extended protocol with prepared statements (`-M prepared`), as psycopg does after a
statement's fifth execution, and `-j` = min(clients, 2) threads (this machine has 2 cores).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.load import Result

TPS_LINE = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.MULTILINE)
LATENCY_LINE = re.compile(r"^latency average = ([\d.]+) ms", re.MULTILINE)
SHORT_RUN_TRANSACTIONS = 20
FAILED_LINE = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Pgbench:
    binary: Path
    url: str  # the database pgbench works on

    def init(self, scale: int) -> None:
        """Create and fill the tpcb tables (server-side generation, then vacuum and keys)."""
        self._run(["-i", "-q", "-s", str(scale), "-I", "dtGvp"], timeout=3600)

    def run(
        self,
        clients: int,
        seconds: float,
        *,
        builtin: str | None = None,
        script: str | None = None,
        variables: dict[str, object] | None = None,
        vacuum: bool = False,
    ) -> Result:
        """Run one timed pgbench; latencies are not sampled (only the average is printed).

        Under a second (smoke tests) it runs SHORT_RUN_TRANSACTIONS per client instead.
        """
        args = ["-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2))]
        if seconds >= 1:
            args += ["-T", str(round(seconds))]
        else:
            args += ["-t", str(SHORT_RUN_TRANSACTIONS)]
        if not vacuum:
            args.append("-n")
        for name, value in (variables or {}).items():
            args += ["-D", f"{name}={value}"]
        with tempfile.NamedTemporaryFile("w", suffix=".sql") as file:
            if script is not None:
                file.write(script)
                file.flush()
                args += ["-f", file.name]
            else:
                args += ["-b", builtin or "tpcb-like"]
            out = self._run(args, timeout=seconds + 600)
        tps = float(TPS_LINE.search(out).group(1))
        failed = FAILED_LINE.search(out)
        latency = LATENCY_LINE.search(out)
        result = Result(clients=clients, seconds=seconds, ops=round(tps * seconds))
        if failed and int(failed.group(1)):
            result.errors["failed"] = int(failed.group(1))
        if latency:
            result.latencies_ms = [float(latency.group(1))]  # the average, for the record
        return result

    def _run(self, args: list[str], timeout: float) -> str:
        done = subprocess.run(
            [str(self.binary), *args, self.url],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"pgbench {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout + done.stderr
