"""`make bench`: run every benchmark, keep its JSON under bench/results/,
and rewrite BENCHMARKS.md from those files (with the machine each ran on)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

# results and BENCHMARKS.md belong to the checkout this runs in
ROOT = os.getcwd()
RESULTS = os.path.join(ROOT, "bench", "results")
# Hand-written notes on figures across runs (what moved, and why), kept
# apart from the measured results and appended to BENCHMARKS.md as they are
NOTES = os.path.join(ROOT, "bench", "notes")

from csdemu.bench import report
from csdemu.bench.machine import commit

fmt = report.fmt

BENCHES = [
    # (name, argv after `csdemu`)
    ("qpair", ["bench", "qpair", "--json"]),
    ("flash", ["bench", "flash", "--json"]),
    ("attention", ["bench", "attention", "--json"]),
    ("generate", ["bench", "generate", "--json"]),
    ("realtime", ["bench", "realtime", "--json"]),
    ("array", ["bench", "array", "--json"]),
    ("eval_sparse", ["eval-sparse", "--json"]),
]
#: run only when named (`python -m csdemu.bench.run causal`), like `make
#: torture`: their sections show under "From other runs" with their own tree
SEPARATE = [
    ("causal", ["bench", "causal", "--json"]),
    ("trace", ["bench", "trace", "--json"]),
]

MODULES = [
    # (name, module run with -m that writes bench/results/NAME.json itself)
    ("fio", "csdemu.bench.fio.bench"),
]


def run(name, argv) -> bool:
    out = os.path.join(RESULTS, f"{name}.json")
    cmd = [sys.executable, "-m", "csdemu", *argv, "--out", out]
    print("+ csdemu", " ".join(argv), flush=True)
    r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    return r.returncode == 0


def run_module(name, module) -> bool:
    out = os.path.join(RESULTS, f"{name}.json")
    print("+ python -m", module, flush=True)
    r = subprocess.run([sys.executable, "-m", module, "--out", out], cwd=ROOT,
                       stdout=subprocess.DEVNULL)
    return r.returncode == 0


def _section(name: str, data: dict, note: str = "") -> list[str]:
    m = data.pop("machine", {})
    how = data.pop("how", {})
    lines = [f"## {name}{note}", "",
             f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
             f"Python {m.get('python', '?')}, Linux {m.get('kernel', '?')}; "
             f"run {m.get('date', '?')} on commit {m.get('commit', 'unknown')}.", "",
             "| figure | value | how measured |", "|---|---|---|"]
    figures, tables = report.split(data)
    lines += [f"| {k} | {fmt(v)} | {report.how_for(how, k)} |" for k, v in figures.items()]
    lines.append("")
    for k, rows in tables.items():
        cols = report.columns(rows)
        lines += [f"{k}: {report.how_for(how, k)}", "",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
        lines.append("")
    return lines


def render(tree: str | None = None) -> str:
    """BENCHMARKS.md: the sections run on `tree` first, then any from other
    trees under their own heading. By default `tree` is the one most of
    `make bench`'s own sections ran on, so a separate run (make torture)
    that rewrites the file leaves them on top."""
    results = {}
    for fn in sorted(os.listdir(RESULTS)):
        if fn.endswith(".json"):
            with open(os.path.join(RESULTS, fn)) as f:
                results[fn[:-5]] = json.load(f)
    if tree is None:
        ours = [results[n].get("machine", {}).get("commit") for n, _ in BENCHES + MODULES
                if n in results]
        ours = [c for c in ours if c]
        tree = max(set(ours), key=ours.count) if ours else commit()
    ours = {k: v for k, v in results.items() if v.get("machine", {}).get("commit") == tree}
    other = {k: v for k, v in results.items() if k not in ours}
    lines = ["# Benchmarks", "",
             f"Written by `make bench` (python -m csdemu.bench.run) from bench/results/*.json. "
             f"Every section below the next heading ran on commit {tree}"
             f"{' (HEAD plus the changes of the commit that carries this file)' if tree.endswith('+dirty') else ''}. "
             "Comparisons are ratios measured inside one run; each figure says how it was measured.", ""]
    for name, data in ours.items():
        lines += _section(name, data)
    if other:
        lines += ["# From other runs", "",
                  "These sections come from separate runs (e.g. `make torture`) on the trees "
                  "named in each; they were not rerun with the sections above.", ""]
        for name, data in other.items():
            lines += _section(name, data, f" (commit {data.get('machine', {}).get('commit', 'unknown')})")
    notes = sorted(fn for fn in os.listdir(NOTES) if fn.endswith(".md")) if os.path.isdir(NOTES) else []
    if notes:
        lines += ["# Notes", "", "Written by hand (bench/notes/), about figures across runs.", ""]
        for fn in notes:
            with open(os.path.join(NOTES, fn)) as f:
                lines += [f.read().rstrip("\n"), ""]
    return "\n".join(lines)


def main():
    os.makedirs(RESULTS, exist_ok=True)
    only = sys.argv[1:]
    failed = [n for n, argv in BENCHES if (not only or n in only) and not run(n, argv)]
    failed += [n for n, argv in SEPARATE if n in only and not run(n, argv)]
    failed += [n for n, module in MODULES if (not only or n in only) and not run_module(n, module)]
    with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as f:
        f.write(render())
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
