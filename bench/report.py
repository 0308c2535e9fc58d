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
    cpu = s.get("http_cpu")
    if cpu:
        r = cpu["generate_canned_over_hello"]
        add("HTTP CPU per request outside the database: generate / hello-world target", "<= 2.5",
            r, _le(r, 2.5), f"with the database: whole request {cpu['generate_over_hello']},"
            f" outside db.rpc {cpu['generate_outside_db_over_hello']}, less one wait's cost"
            f" {cpu['generate_net_of_wait_over_hello']}")  # fmt: skip
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
    flat = s.get("flat_cost")
    if flat:
        largest = str(flat["backlogs"][-1])
        worst, op = max((by[largest]["ratio"], op) for op, by in flat["operations"].items())
        add("flat cost: worst growth of a hot operation", "<= 1.5", worst, worst <= 1.5,
            f"{op}, {int(largest):,} queued + {int(largest):,} in flight")  # fmt: skip
        fair = flat["fairness"]
        share = min(fair["served_one_at_a_time"], fair["served_in_batches_of_10"])
        add(f"fair claims: other users served in the next {fair['other_users']} claims",
            f"at least {0.9 * fair['other_users']:.0f}", share, share >= 0.9 * fair["other_users"],
            f"one at a time {fair['served_one_at_a_time']}, in batches of 10"
            f" {fair['served_in_batches_of_10']}")  # fmt: skip
    scaling = s.get("scaling")
    if scaling:
        largest = str(scaling["jobs"][-1])
        worst, op = max((scaling["operations"][op][largest]["ratio"], op)
                        for op in scaling["hot_operations"])  # fmt: skip
        add("scaling: worst growth of a hot operation", "<= 1.5", worst, worst <= 1.5,
            f"{op}, {int(largest):,} jobs of history")  # fmt: skip
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
    s = results["scenarios"]
    for name, scenario in s.items():
        if "series" in scenario:
            lines += ["", f"**{name}**: per second (p50 / p99 ms), median of runs", ""]
            lines += _series_table(scenario["series"])
        for key, value in scenario.items():
            if not (key.startswith("ratio") and isinstance(value, dict)):
                continue
            nested = value if isinstance(next(iter(value.values())), dict) else {"": value}
            for series, by_clients in nested.items():
                label = f"{series} {key}".strip().replace("_", " ")
                lines += ["", f"{name}, {label}: {_by_clients(by_clients)}"]
    if "seed_way" in s:
        lines += ["", *_overdraw_table(s["seed_way"]["overdraw"])]
    if "http_api" in s and s["http_api"]["round_trips"]:
        lines += ["", *_round_trips_table(s["http_api"]["round_trips"])]
    if "http_cpu" in s:
        lines += ["", *_http_cpu_table(s["http_cpu"])]
    if "history" in s:
        lines += ["", *_history_table(s["history"])]
    if "reaping" in s:
        lines += ["", *_reaping_table(s["reaping"])]
    if "flat_cost" in s:
        lines += ["", *_flat_cost_table(s["flat_cost"])]
    if "scaling" in s:
        lines += ["", *_scaling_tables(s["scaling"])]
    return "\n".join(lines) + "\n"


def _by_clients(values: dict[str, Any]) -> str:
    return ", ".join(f"{v} at {c} clients" for c, v in values.items())


def _overdraw_table(overdraw: dict[str, Any]) -> list[str]:
    lines = [
        "**Overdraw trial** (per round: jobs created without money / users left below zero)",
        "",
        "| clients | attempts | jobs paid for | the seed's way | ours | ledger discrepancies |",
        "|---|---|---|---|---|---|",
    ]
    for clients, trial in overdraw.items():
        sides = {
            side: ", ".join(
                f"{j} / {u}"
                for j, u in zip(
                    trial[side]["jobs_without_money"], trial[side]["users_below_zero"], strict=True
                )
            )
            for side in ("seed_way", "ours")
        }
        lines.append(
            f"| {clients} | {trial['seed_way']['attempts']} | {trial['seed_way']['jobs_paid_for']}"
            f" | {sides['seed_way']} | {sides['ours']}"
            f" | {', '.join(map(str, trial['ledger_discrepancies']))} |"
        )
    return lines


def _round_trips_table(trips: dict[str, Any]) -> list[str]:
    lines = [
        "**Database statements per HTTP request** (pg_stat_statements calls / requests)",
        "",
        "| request | clients | per request | statements |",
        "|---|---|---|---|",
    ]
    for name, by_clients in trips.items():
        for clients, data in by_clients.items():
            shown = "; ".join(f"`{q[:40]}` x{c}" for q, c in data["statements"].items())
            lines.append(f"| {name} | {clients} | {data['per_request']} | {shown} |")
    return lines


def _http_cpu_table(cpu: dict[str, Any]) -> list[str]:
    lines = [
        "**Python CPU per HTTP request** (one process, direct WSGI calls, thread CPU time; µs,"
        " median of rounds; outside the database = whole request minus the CPU inside db.rpc;"
        " hello_wait = hello after one sleep as long as generate's database call;"
        " generate_canned = generate with db.rpc answered from memory)",
        "",
        "| series | whole request | p50 | outside the database | inside db.rpc | db.rpc wall |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in cpu["cpu_per_request"].items():
        lines.append(
            f"| {name} | {m['cpu_us']:.0f} | {m['cpu_p50_us']:.0f} | {m['outside_db_cpu_us']:.0f}"
            f" | {m['db_call_cpu_us']:.0f} | {m['db_call_wall_us']:.0f} |"
        )
    lines += [
        "",
        f"generate / hello: whole request {cpu['generate_over_hello']}, outside db.rpc"
        f" {cpu['generate_outside_db_over_hello']}, less one wait's cost ({cpu['wait_cost_us']} µs)"
        f" {cpu['generate_net_of_wait_over_hello']}; database answered from memory"
        f" {cpu['generate_canned_over_hello']}. A new token on every request: whole request"
        f" {cpu['generate_new_token_over_hello']}, outside db.rpc"
        f" {cpu['generate_new_token_outside_db_over_hello']}.",
    ]
    return lines


def _history_table(history: dict[str, Any]) -> list[str]:
    lines = [
        f"**History**: list_jobs, {history['page_size']} per page, {history['jobs']:,} jobs"
        f" (heavy user {history['heavy_user_jobs']:,}); plan uses an index:"
        f" {history['plan_uses_index']}; cursor is an index condition:"
        f" {history['cursor_is_index_condition']}",
        "",
        "| page | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|",
    ]
    for label, page in history["pages"].items():
        lines.append(f"| {label} | {page['p50_ms']} | {page['p99_ms']} | {page['max_ms']} |")
    return lines


def _reaping_table(reaping: dict[str, Any]) -> list[str]:
    lines = [
        f"**Reaping** {reaping['stalled_jobs']:,} stalled jobs under"
        f" {reaping['foreground_clients']} create_job clients (medians)",
        "",
        "| batch | reap s | idle create_job/s | while reaping /s | idle p99 ms"
        " | while reaping p99 ms | p99 ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch, data in reaping["by_batch"].items():
        m = data["median"]
        lines.append(
            f"| {batch} | {m['reap_seconds']} | {m['idle']['rate']:,.0f}"
            f" | {m['while_reaping']['rate']:,.0f} | {m['idle']['p99_ms']}"
            f" | {m['while_reaping']['p99_ms']} | {m['p99_ratio']} |"
        )
    return lines


def _flat_cost_table(flat: dict[str, Any]) -> list[str]:
    sizes = [str(size) for size in flat["backlogs"]]
    fair = flat["fairness"]
    lines = [
        f"**Flat cost**: median ms per call (one connection, {flat['samples']} samples per"
        " round, median of rounds) with N jobs queued and N in flight; x growth against N = 0",
        "",
        "| operation | " + " | ".join(f"N = {int(size):,}" for size in sizes) + " |",
        *_growth_rows(flat["operations"], sizes),
        "",
        "",
        f"**Fair claims**: one user with {fair['heavy_jobs']:,} jobs waiting, {fair['other_users']}"
        f" other users one each: the next {fair['other_users']} claims served"
        f" {fair['served_one_at_a_time']} of the others one at a time"
        f" ({fair['claim_p50_ms']} ms per claim), {fair['served_in_batches_of_10']} in batches"
        f" of 10 ({fair['batch_claim_p50_ms']} ms per batch).",
    ]
    return lines


def _growth_rows(operations: dict[str, Any], sizes: list[str]) -> list[str]:
    """The separator and one row per operation: p50 at the first size, then p50 (x growth)."""
    lines = ["|---" * (len(sizes) + 1) + "|"]
    for op, by_size in operations.items():
        cells = [f"{by_size[sizes[0]]['p50_ms']:.3f}"]
        cells += [f"{by_size[s]['p50_ms']:.3f} (x{by_size[s]['ratio']:.2f})" for s in sizes[1:]]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    return lines


def _scaling_tables(scaling: dict[str, Any]) -> list[str]:
    sizes = [str(jobs) for jobs in scaling["jobs"]]
    base, largest = scaling["sizes"][sizes[0]]["before"], scaling["sizes"][sizes[-1]]["before"]
    jobs = int(sizes[-1])
    load = scaling["load"].get(sizes[-1], {})
    lines = [
        f"**Scaling**: median ms per call (one connection, {scaling['samples']} samples per"
        f" round, median of rounds) with N jobs of history ({scaling['users']:,} users,"
        f" {scaling['days']} days); x growth against N = 0",
        "",
        "| operation | " + " | ".join(f"N = {int(size):,}" for size in sizes) + " |",
        *_growth_rows(scaling["operations"], sizes),
        "",
        f"Loaded in {load.get('load_seconds', 0):,.0f} s (+ vacuum analyze"
        f" {load.get('vacuum_seconds', 0):,.0f} s), ledger discrepancies after the load:"
        f" {load.get('ledger_discrepancies', '-')}; database {largest['database_bytes'] / 1e9:.2f}"
        f" GB at N = {jobs:,} ({base['database_bytes'] / 1e6:.0f} MB at N = 0).",
    ]
    upkeep = load.get("maintenance")
    if upkeep:
        frozen = ", ".join(f"{t} {s:,.0f} s" for t, s in upkeep["vacuum_freeze_seconds"].items())
        day = upkeep["oldest_day_of_events"]
        lines.append(
            f"After the measurement, at N = {jobs:,}: vacuum (freeze) {frozen}; deleting the"
            f" oldest day of delivered events ({day['rows']:,} rows) {day['delete_seconds']:,} s,"
            f" the vacuum after it {day['vacuum_seconds']:,} s."
        )
    lines += [
        "",
        f"**Sizes at N = {jobs:,}** (bytes per job: growth from N = 0 divided by N)",
        "",
        "| table | rows | heap + TOAST MB | indexes MB | total MB | bytes per job |",
        "|---|---|---|---|---|---|",
    ]
    tables = sorted(largest["tables"].items(), key=lambda item: -item[1]["total_bytes"])
    total_growth = 0
    for name, t in tables:
        grown = t["total_bytes"] - base["tables"].get(name, {}).get("total_bytes", 0)
        total_growth += grown
        if t["total_bytes"] < 1e6:
            continue
        mb = [f"{t[key] / 1e6:,.0f}" for key in ("table_bytes", "index_bytes", "total_bytes")]
        lines.append(f"| {name} | {t['rows']:,} | {' | '.join(mb)} | {grown / jobs:,.0f} |")
    lines.append(f"| all tables | | | | {total_growth / 1e6:,.0f} | {total_growth / jobs:,.0f} |")
    at = {size: scaling["sizes"][size].get("buffers_per_call", {}) for size in sizes}
    if at[sizes[-1]]:
        lines += [
            "",
            "**Shared buffers per call** (pg_stat_statements, all rounds: hit / read / dirtied /"
            " written; a read comes from the OS cache or the disk)",
            "",
            "| statement | " + " | ".join(f"N = {int(size):,}" for size in sizes) + " |",
            "|---" * (len(sizes) + 1) + "|",
        ]
        for label in sorted(at[sizes[-1]]):
            cells = [at[size].get(label) for size in sizes]
            lines.append(f"| {label} | " + " | ".join(
                f"{c['hit']:g} / {c['read']:g} / {c['dirtied']:g} / {c['written']:g}" if c else "-"
                for c in cells) + " |")  # fmt: skip
    return lines


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


if __name__ == "__main__":
    # Re-render a run's markdown and charts from its JSON: python -m bench.report <run>.json
    import sys

    record = Path(sys.argv[1])
    print("\n".join(map(str, write(json.loads(record.read_text()), record.parent))))
