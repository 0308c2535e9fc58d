"""The benchmark harness still runs: every scenario once, at tiny size, on the test server.

Measures nothing worth reading (0.3 s windows, 50 users); it only keeps bench/ from rotting.
Charts are drawn only where matplotlib is installed (requirements-bench.txt).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bench import run

SCENARIOS = set(run.SCENARIOS)


def test_every_scenario_runs_and_reports(
    server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_DATABASE_URL", server_url)
    charts = importlib.util.find_spec("matplotlib") is not None
    args = ["--quick", "--clients", "2", "--seconds", "0.3", "--out", str(tmp_path)]
    args += ["--only", ",".join(run.SCENARIOS)]  # scaling too, which the default run leaves out
    assert run.main(args + ([] if charts else ["--no-charts"])) == 0

    (record,) = tmp_path.glob("*.json")
    results = json.loads(record.read_text())
    assert set(results["scenarios"]) == SCENARIOS
    assert {t["target"].split(",")[0] for t in results["targets"]} >= {
        "create_job / tpcb-like",
        "lifecycle / tpcb-like",
        "history p99",
        "foreground p99 while reaping / idle p99",
        "flat cost: worst growth of a hot operation",
        "fair claims: other users served in the next 20 claims",
        "HTTP CPU per request outside the database: generate / hello-world target",
        "scaling: worst growth of a hot operation",
    }
    # The correctness half of the comparisons holds at any size.
    overdraw = results["scenarios"]["seed_way"]["overdraw"]["2"]
    assert overdraw["ours"]["jobs_without_money"] == [0]
    assert overdraw["ledger_discrepancies"] == [0]
    reaping = results["scenarios"]["reaping"]["by_batch"]
    assert all(r["stalled_left"] == 0 and r["ledger_discrepancies"] == 0
               for batch in reaping.values() for r in batch["runs"])  # fmt: skip
    assert results["scenarios"]["history"]["plan_uses_index"] in (True, False)
    fairness = results["scenarios"]["flat_cost"]["fairness"]
    assert fairness["served_one_at_a_time"] >= 18 and fairness["served_in_batches_of_10"] >= 18
    cpu = results["scenarios"]["http_cpu"]
    assert cpu["generate_over_hello"] > cpu["generate_outside_db_over_hello"] > 0
    assert cpu["generate_canned_over_hello"] > 0
    assert all(s["cpu_us"] > 0 for s in cpu["cpu_per_request"].values())
    scaling = results["scenarios"]["scaling"]
    assert all(load["ledger_discrepancies"] == 0 for load in scaling["load"].values())
    history = scaling["sizes"][str(scaling["jobs"][-1])]["before"]["tables"]
    assert history["jobs"]["rows"] > scaling["jobs"][-1] > 0
    assert (tmp_path / record.name.replace(".json", ".md")).exists()
    if charts:
        assert len(list((tmp_path / record.stem).glob("*.png"))) == 8
