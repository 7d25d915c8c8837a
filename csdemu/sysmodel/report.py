"""Table, JSON and PNG output of the system model."""
from __future__ import annotations

import json

from csdemu.sysmodel.systems import SYSTEMS

_BD_COLS = ("kv_access_s", "csd_compute_s", "compute_s", "transfer_s", "swap_s", "step_s")


def _fmt(v):
    return "OOM" if v is None else (f"{v:.2f}" if v < 100 else f"{v:.0f}")


def format_table(rows: list[dict], params: dict) -> str:
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in rows)]
    batches = sorted({r["batch"] for r in rows})
    by = {(r["system"], r["batch"]): r for r in rows}
    out = [f"decode throughput, tokens/s  (model {params['model']}, {params['gpus']} GPU, "
           f"{params['csds']} CSD [{params['profile']}], input {params['input']}, "
           f"output {params['output']}, sparse {params['sparse']})"]
    w = max(len(s) for s in systems) + 2
    out.append("system".ljust(w) + "".join(f"{'b=' + str(b):>10}" for b in batches))
    for s in systems:
        out.append(s.ljust(w) + "".join(f"{_fmt(by[(s, b)]['tokens_per_s']) if (s, b) in by else '-':>10}"
                                        for b in batches))
    out.append("")
    out.append("per decode step, seconds (mean over steps): KV access | CSD compute tail | "
               "GPU compute | transfers | swap | step")
    out.append("system".ljust(w) + f"{'batch':>6}" + "".join(f"{c[:-2]:>13}" for c in _BD_COLS))
    for s in systems:
        for b in batches:
            r = by.get((s, b))
            if r is None:
                continue
            if r["oom"]:
                out.append(s.ljust(w) + f"{b:>6}" + f"   out of memory: {r['oom_reason']}")
                continue
            bd = r["breakdown"]
            out.append(s.ljust(w) + f"{b:>6}" + "".join(f"{bd.get(c, 0.0):>13.4f}" for c in _BD_COLS))
    return "\n".join(out)


def to_json(rows: list[dict], params: dict) -> str:
    return json.dumps({"rows": rows, "params": params}, indent=1, sort_keys=False)


def plot_png(rows: list[dict], params: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    systems = [s for s in SYSTEMS if any(r["system"] == s for r in rows)]
    batches = sorted({r["batch"] for r in rows})
    by = {(r["system"], r["batch"]): r for r in rows}
    x = np.arange(len(batches))
    wd = 0.8 / max(1, len(systems))
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    top = max([r["tokens_per_s"] for r in rows if r["tokens_per_s"]] or [1.0])
    for i, s in enumerate(systems):
        vals = [by[(s, b)]["tokens_per_s"] if (s, b) in by else None for b in batches]
        xs = x - 0.4 + wd * (i + 0.5)
        ax.bar(xs, [v or 0 for v in vals], wd, label=s)
        for xi, v in zip(xs, vals):
            if v is None:
                ax.text(xi, top * 0.02, "OOM", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (tokens/s)")
    ax.set_title(f"{params['model']}, {params['input']}+{params['output']} tokens, "
                 f"{params['gpus']} GPU, {params['csds']} CSD ({params['profile']})", fontsize=10)
    ax.legend(fontsize=8, ncol=min(5, len(systems)))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
