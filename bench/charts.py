"""PNG charts of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker

GROWTH_AXIS = 4.0  # growth charts end here


def draw(results: dict[str, Any], out: Path) -> list[Path]:
    """Draw one chart per scenario that ran; return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    s = results["scenarios"]
    drawn = []
    if "sql_core" in s:
        series = dict(s["sql_core"]["series"])
        if "seed_way" in s:
            series["seed_way"] = s["seed_way"]["series"]["seed_way"]
        drawn.append(_grouped_rates(series, "SQL core vs pgbench tpcb-like", out / "sql_core.png"))
    if "hot_account" in s:
        drawn.append(_grouped_rates(s["hot_account"]["series"], "One hot account", out / "hot.png"))
    if "http_api" in s:
        drawn.append(_latencies(s["http_api"]["series"], out / "http.png"))
    if "history" in s:
        drawn.append(_history(s["history"], out / "history.png"))
    if "reaping" in s:
        drawn.append(_reaping(s["reaping"], out / "reaping.png"))
    if "flat_cost" in s:
        flat = s["flat_cost"]
        sizes = {str(n): f"{n:,} queued + in flight" for n in flat["backlogs"]}
        title = "against the empty queue"
        drawn.append(_growth(flat["operations"], sizes, title, out / "flat_cost.png"))
    if "scaling" in s:
        sizes = {str(n): f"{n:,} jobs of history" for n in s["scaling"]["jobs"]}
        title = "against no history"
        drawn.append(_growth(s["scaling"]["operations"], sizes, title, out / "scaling.png"))
    targets = [
        t for t in results.get("targets", []) if t["goal"].startswith((">=", "<= 2", "<= 1.5"))
    ]
    if targets:
        drawn.append(_ratios(targets, out / "ratios.png"))
    return drawn


def _grouped_rates(series: dict[str, Any], title: str, path: Path) -> Path:
    clients = sorted({int(c) for by_clients in series.values() for c in by_clients})
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(series)
    for i, (name, by_clients) in enumerate(series.items()):
        xs = [j + i * width for j, c in enumerate(clients) if str(c) in by_clients]
        ys = [by_clients[str(c)]["median"]["rate"] for c in clients if str(c) in by_clients]
        ax.bar(xs, ys, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(clients))])
    ax.set_xticklabels([f"{c} clients" for c in clients])
    ax.set_ylabel("transactions (or calls) per second, median")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _latencies(series: dict[str, Any], path: Path) -> Path:
    fig, (rates, lat) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, by_clients in series.items():
        clients = sorted(by_clients, key=int)
        medians = [by_clients[c]["median"] for c in clients]
        xs = [int(c) for c in clients]
        rates.plot(xs, [m["rate"] for m in medians], marker="o", label=name)
        line = lat.plot(xs, [m["p99_ms"] for m in medians], marker="o", label=f"{name} p99")
        lat.plot(xs, [m["p50_ms"] for m in medians], marker=".", linestyle="--",
                 color=line[0].get_color(), label=f"{name} p50")  # fmt: skip
    rates.set(xlabel="clients", ylabel="requests per second", title="HTTP vs SQL throughput")
    lat.set(xlabel="clients", ylabel="ms", title="latency")
    lat.axhline(50, color="grey", linewidth=0.8, linestyle=":")
    rates.legend(fontsize=8)
    lat.legend(fontsize=7)
    return _save(fig, path)


def _history(history: dict[str, Any], path: Path) -> Path:
    labels = list(history["pages"])
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ys = range(len(labels))
    ax.barh(
        [y + 0.2 for y in ys], [history["pages"][k]["p99_ms"] for k in labels], 0.4, label="p99"
    )
    ax.barh(
        [y - 0.2 for y in ys], [history["pages"][k]["p50_ms"] for k in labels], 0.4, label="p50"
    )
    ax.axvline(5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_yticks(list(ys))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms per list_jobs call (20 per page)")
    ax.set_title(f"History: {history['jobs']:,} jobs, heavy user {history['heavy_user_jobs']:,}")
    ax.legend()
    return _save(fig, path)


def _reaping(reaping: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels, p50, p99 = [], [], []
    for batch, data in reaping["by_batch"].items():
        for phase in ("idle", "while_reaping"):
            labels.append(f"{phase.replace('_', ' ')}\n(batch {batch})")
            p50.append(data["median"][phase]["p50_ms"])
            p99.append(data["median"][phase]["p99_ms"])
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], p50, 0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], p99, 0.4, label="p99")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("create_job latency, ms")
    ax.set_title(
        f"Foreground create_job ({reaping['foreground_clients']} clients) while reaping "
        f"{reaping['stalled_jobs']:,} stalled jobs"
    )
    ax.legend()
    return _save(fig, path)


def _growth(operations: dict[str, Any], sizes: dict[str, str], against: str, path: Path) -> Path:
    """Median ms per call of each operation at each size, and its growth against the first."""
    ops = list(operations)
    fig, (lat, growth) = plt.subplots(1, 2, figsize=(13, 0.42 * len(ops) + 2), sharey=True)
    ys = range(len(ops))
    height = 0.8 / len(sizes)
    for i, (size, label) in enumerate(sizes.items()):
        offsets = [y - 0.4 + (i + 0.5) * height for y in ys]
        lat.barh(offsets, [operations[op][size]["p50_ms"] for op in ops], height, label=label)
        if i:
            ratios = [operations[op][size]["ratio"] for op in ops]
            growth.barh(offsets, [min(r, GROWTH_AXIS) for r in ratios], height, label=label,
                        color=f"C{i}")  # fmt: skip
            for y, r in zip(offsets, ratios, strict=True):
                if r > GROWTH_AXIS:  # cut at the axis' end; the label tells the value
                    growth.text(GROWTH_AXIS, y, f" x{r:.3g}", va="center", ha="right", fontsize=7)
    growth.axvline(1.5, color="black", linewidth=1, linestyle=":")
    growth.set_xlim(0, GROWTH_AXIS)
    lat.set_xscale("log")
    lat.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    lat.set_yticks(list(ys))
    lat.set_yticklabels(ops, fontsize=8)
    lat.invert_yaxis()
    lat.set(xlabel="median ms per call (log scale)", title="Operations, one connection")
    growth.set(xlabel=f"median {against} (dotted: 1.5)", title="Growth")
    lat.legend(fontsize=7)
    growth.legend(fontsize=7)
    return _save(fig, path)


def _ratios(targets: list[dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(targets) + 1.5))
    ys = range(len(targets))
    colors = ["tab:green" if t["met"] else "tab:red" for t in targets]
    limit = 4.0  # longer bars are cut here; the label tells the value
    shown = [min(t["measured"] or 0, limit) for t in targets]
    ax.barh(list(ys), shown, color=colors)
    for y, t, x in zip(ys, targets, shown, strict=True):
        goal = float(t["goal"].split()[-1])
        ax.plot([goal, goal], [y - 0.4, y + 0.4], color="black", linewidth=2)
        ax.text(x + 0.03, y, f"{t['measured']} (goal {t['goal']})", va="center", fontsize=8)
    ax.set_xlim(0, limit + 1.2)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([t["target"] for t in targets], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("measured ratio (black: target)")
    ax.set_title("Targets")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
