"""Table, JSON and figures of the system model. Every figure says "modeled"
and names the systems as their authors do; a configuration that is out of
memory or does not fit the drives is marked, never drawn as a valid bar."""
from __future__ import annotations

import json
import math

from csdemu.sysmodel.systems import NAMES, SYSTEMS

_BD_COLS = ("kv_access_s", "csd_compute_s", "csd_attend_s", "host_link_s", "command_s",
            "compute_s", "transfer_s", "swap_s", "step_s")
_BD_HEAD = ("KV access", "CSD compute tail", "slowest CSD", "shared host links",
            "command round trips", "GPU non-attention", "transfers", "swap", "step")
UNFIT = "*"
COLORS = ("#1f77b4", "#9467bd", "#e377c2", "#17becf", "#2ca02c", "#d62728", "#ff7f0e")


def _fmt(r):
    if r is None:
        return "-"
    if r["oom"]:
        return "OOM"
    v = r["tokens_per_s"]
    s = f"{v:.2f}" if v < 100 else f"{v:.0f}"
    return s if r.get("fits", True) else s + UNFIT


def _systems(rows):
    return [s for s in SYSTEMS if any(r["system"] == s for r in rows)]


def header(params: dict) -> str:
    ph = params.get("page_hit") or {}
    return (f"modeled decode throughput, tokens/s  (model {params['model']}, {params['gpus']} GPU, "
            f"{params['csds']} CSD [{params['profile']}], input {params['input']}, "
            f"output {params['output']}, sparse {params['sparse']})\n"
            f"SparF page-hit rate: {ph.get('kind', '?')} - {ph.get('source', '?')}")


def format_table(rows: list[dict], params: dict) -> str:
    systems = _systems(rows)
    batches = sorted({r["batch"] for r in rows})
    by = {(r["system"], r["batch"]): r for r in rows}
    out = [header(params)]
    w = max(len(NAMES[s]) for s in systems) + 2
    out.append("system".ljust(w) + "".join(f"{'b=' + str(b):>10}" for b in batches))
    for s in systems:
        out.append(NAMES[s].ljust(w) + "".join(f"{_fmt(by.get((s, b))):>10}" for b in batches))
    unfit = [r for r in rows if not r["oom"] and not r.get("fits", True)]
    if unfit:
        out.append(f"{UNFIT} does not fit the drives (not a valid configuration): "
                   f"{unfit[0]['fit_reason']}" + (" ..." if len(unfit) > 1 else ""))
    out.append("")
    out.append("per decode step, seconds (mean over steps): " + " | ".join(_BD_HEAD))
    out.append("system".ljust(w) + f"{'batch':>6}" + "".join(f"{c[:-2][:12]:>13}" for c in _BD_COLS)
               + "  GPU bound")
    for s in systems:
        for b in batches:
            r = by.get((s, b))
            if r is None:
                continue
            if r["oom"]:
                out.append(NAMES[s].ljust(w) + f"{b:>6}" + f"   out of memory: {r['oom_reason']}")
                continue
            bd = r["breakdown"]
            out.append(NAMES[s].ljust(w) + f"{b:>6}"
                       + "".join(f"{bd.get(c, 0.0):>13.4f}" for c in _BD_COLS)
                       + f"  {bd.get('gpu_bound', '')}" + ("" if r.get("fits", True) else f"  {UNFIT}"))
    return "\n".join(out)


def to_json(rows: list[dict], params: dict, sweep: dict | None = None) -> str:
    obj = {"rows": rows, "params": params}
    if sweep is not None:
        obj["sweep"] = sweep
    return json.dumps(obj, indent=1, sort_keys=False)


def valid(r) -> float | None:
    """A row's throughput if it is a valid configuration, else None."""
    return r["tokens_per_s"] if r and not r["oom"] and r.get("fits", True) else None


def _save(fig, path: str) -> None:
    kind = path.rsplit(".", 1)[-1].lower() if "." in path else "png"
    fig.savefig(path, dpi=300 if kind not in ("pdf", "svg") else None,
                format=kind if kind in ("pdf", "svg", "png") else None)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"     # SVG text stays text (searchable)
    matplotlib.rcParams["pdf.fonttype"] = 42
    import matplotlib.pyplot as plt
    return plt


def plot(rows: list[dict], params: dict, path: str) -> None:
    """Bars per batch and system: .pdf/.svg vector, anything else 300 dpi."""
    import numpy as np
    plt = _pyplot()
    systems = _systems(rows)
    batches = sorted({r["batch"] for r in rows})
    by = {(r["system"], r["batch"]): r for r in rows}
    x = np.arange(len(batches))
    wd = 0.8 / max(1, len(systems))
    fig, ax = plt.subplots(figsize=(11, 4.4))
    vals = [valid(r) for r in rows if valid(r)]
    # log scale: Recomp and the offloading systems differ by two orders of magnitude
    floor = min(vals) / 3 if vals else 0.1
    ax.set_yscale("log")
    for i, s in enumerate(systems):
        color = COLORS[SYSTEMS.index(s) % len(COLORS)]
        xs = x - 0.4 + wd * (i + 0.5)
        heights = [(valid(by.get((s, b))) or floor) - floor for b in batches]
        ax.bar(xs, heights, wd, bottom=floor, label=NAMES[s], color=color)
        for xi, b in zip(xs, batches):
            r = by.get((s, b))
            if r is None or valid(r) is not None:
                continue
            # marked, never a bar: an empty hatched box and why
            ax.bar(xi, floor * 2, wd, bottom=floor, fill=False, hatch="///", edgecolor=color,
                   linewidth=0.6)
            ax.text(xi, floor * 3.2, "OOM" if r["oom"] else "no fit", rotation=90, ha="center",
                    va="bottom", fontsize=6)
    ax.set_xticks(x, [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput, tokens/s (modeled)")
    ax.set_title(f"Modeled: {params['model']}, {params['input']}+{params['output']} tokens, "
                 f"{params['gpus']} GPU, {params['csds']} CSD ({params['profile']}); "
                 f"SparF page-hit {params.get('page_hit', {}).get('kind', '?')}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.text(0.01, 0.01, "hatched: out of memory or does not fit the drives (no valid value)",
             fontsize=6)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_sweep(sweep: dict, params: dict, path: str) -> None:
    """One curve per system: its best valid throughput over the batches at
    each value of the swept parameter; invalid points are left out."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.4))
    xs = sweep["values"]
    for s, ys in sweep["best"].items():
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=NAMES[s],
                    color=COLORS[SYSTEMS.index(s) % len(COLORS)])
    ax.set_xlabel(sweep["label"])
    ax.set_ylabel("best throughput over batches, tokens/s (modeled)")
    ax.set_title(f"Modeled what-if: {sweep['label']} ({params['model']}, batches "
                 f"{','.join(map(str, params['batches']))})", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def format_sweep(sweep: dict) -> str:
    xs = sweep["values"]
    w = max(len(NAMES[s]) for s in sweep["best"]) + 2
    out = [f"what-if sweep of {sweep['label']}: best valid throughput over the batches, tokens/s "
           f"(modeled; - = no valid batch)",
           "system".ljust(w) + "".join(f"{str(x):>10}" for x in xs)]
    for s, ys in sweep["best"].items():
        out.append(NAMES[s].ljust(w) + "".join(
            f"{'-' if y is None else (f'{y:.2f}' if y < 100 else f'{y:.0f}'):>10}" for y in ys))
    return "\n".join(out)
