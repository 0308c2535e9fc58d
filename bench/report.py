"""Results: the JSON record, a markdown table of the targets and figures, and PNG charts."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any


def write(results: dict[str, Any], out: Path, *, charts: bool = True) -> list[Path]:
    """Write <out>/<date>.json, <out>/<date>.md and <out>/<date>/*.png; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    stem = dt.date.fromisoformat(results["meta"]["date"][:10]).isoformat()
    results["targets"] = targets(results)
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    md_path = out / f"{stem}.md"
    md_path.write_text(markdown(results))
    if not charts:
        return [json_path, md_path]
    from bench.charts import draw  # matplotlib: requirements-bench.txt only

    return [json_path, md_path, *draw(results, out / stem)]


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 5 with its measured value (None when the scenario did not run)."""
    s = results["scenarios"]
    rows: list[dict[str, Any]] = []

    def add(name: str, goal: str, measured: float | None, met: bool | None, note: str = "") -> None:
        rows.append({"target": name, "goal": goal, "measured": measured, "met": met, "note": note})

    core = s.get("sql_core")
    if core:
        clients = "8" if "8" in core["ratios_to_tpcb_like"]["create_job"] else _mid(core)
        r = core["ratios_to_tpcb_like"]["create_job"][clients]
        rp = core["ratios_to_tpcb_like"]["create_job_pgbench"][clients]
        add(f"create_job / tpcb-like, {clients} clients", ">= 1.0", r, _ge(r, 1.0),
            f"driven by pgbench: {rp}")  # fmt: skip
        r = core["ratios_to_tpcb_like"]["lifecycle"][clients]
        add(f"lifecycle / tpcb-like, {clients} clients", ">= 0.4", r, _ge(r, 0.4))
    hot = s.get("hot_account")
    if hot:
        r = hot["ratio"]
        add(f"hot account / one-row update, {hot['clients']} clients", ">= 0.5", r, _ge(r, 0.5),
            f"driven by pgbench: {hot['ratio_pgbench']}")  # fmt: skip
    http = s.get("http_api")
    if http:
        clients = "8" if "8" in http["ratio_generate_to_create_job"] else _first(http)
        r = http["ratio_generate_to_create_job"][clients]
        add(f"HTTP generate / SQL create_job, {clients} clients", ">= 0.5", r, _ge(r, 0.5))
        p99 = http["series"]["generate"][clients]["median"]["p99_ms"]
        add(f"HTTP generate p99, {clients} clients", "<= 50 ms", p99, p99 <= 50)
    history = s.get("history")
    if history:
        worst = max(page["p99_ms"] for page in history["pages"].values())
        add("history p99, any page", "<= 5 ms", worst, worst <= 5)
    reaping = s.get("reaping")
    if reaping:
        seconds = reaping["median"]["reap_seconds"]
        add(f"reap {reaping['stalled_jobs']:,} stalled jobs", "<= 60 s", seconds, seconds <= 60)
        r = reaping["median"]["p99_ratio"]
        add("foreground p99 while reaping / idle p99", "<= 2.0", r, _le(r, 2.0))
    return rows


def markdown(results: dict[str, Any]) -> str:
    """The tables BENCHMARKS.md quotes: targets first, then every figure."""
    meta = results["meta"]
    lines = [
        f"Run {meta['date']} at commit {meta['commit']}, {meta['server']} PostgreSQL "
        f"{meta['settings'].get('server_version', '?')}, {meta['machine']['cpus']} CPUs "
        f"({meta['machine']['cpu_model']}); each figure the median of {meta['config']['runs']} "
        f"x {meta['config']['seconds']:g} s; whole run {meta.get('wall_seconds', 0) / 60:.1f} min.",
        "",
        "| target | goal | measured | met |",
        "|---|---|---|---|",
    ]
    for row in results.get("targets") or targets(results):
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        note = f" ({row['note']})" if row["note"] else ""
        lines.append(f"| {row['target']} | {row['goal']} | {_fmt(row['measured'])}{note} | {met} |")
    for name, scenario in results["scenarios"].items():
        if "series" in scenario:
            lines += ["", f"**{name}** (per second; p50 / p99 in ms; median of runs)", ""]
            lines += _series_table(scenario["series"])
        for key in ("pages", "overdraw", "median", "round_trips"):
            if key in scenario:
                lines += ["", f"**{name}: {key}**", "", "```", json.dumps(scenario[key], indent=1),
                          "```"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _series_table(series: dict[str, Any]) -> list[str]:
    clients = sorted({int(c) for by_clients in series.values() for c in by_clients})
    head = "| series | " + " | ".join(f"{c} clients" for c in clients) + " |"
    lines = [head, "|---" * (len(clients) + 1) + "|"]
    for name, by_clients in series.items():
        cells = []
        for c in clients:
            m = by_clients.get(str(c), {}).get("median")
            cells.append(f"{m['rate']:,.0f} ({m['p50_ms']:.1f} / {m['p99_ms']:.1f})" if m else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.3g}" if value < 1000 else f"{value:,.0f}"


def _ge(value: float | None, goal: float) -> bool | None:
    return None if value is None else value >= goal


def _le(value: float | None, goal: float) -> bool | None:
    return None if value is None else value <= goal


def _mid(core: dict[str, Any]) -> str:
    keys = sorted(core["ratios_to_tpcb_like"]["create_job"], key=int)
    return keys[len(keys) // 2]


def _first(http: dict[str, Any]) -> str:
    return sorted(http["ratio_generate_to_create_job"], key=int)[-1]
