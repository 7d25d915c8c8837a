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

from csdemu.bench import report

fmt = report.fmt

BENCHES = [
    # (name, argv after `csdemu`)
    ("qpair", ["bench", "qpair", "--json"]),
    ("flash", ["bench", "flash", "--json"]),
    ("attention", ["bench", "attention", "--json"]),
    ("generate", ["bench", "generate", "--json"]),
    ("eval_sparse", ["eval-sparse", "--json"]),
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


def render() -> str:
    lines = ["# Benchmarks", "",
             "Written by `make bench` (python -m csdemu.bench.run) from bench/results/*.json. "
             "Comparisons are ratios measured inside one run.", ""]
    for fn in sorted(os.listdir(RESULTS)):
        if not fn.endswith(".json"):
            continue
        with open(os.path.join(RESULTS, fn)) as f:
            data = json.load(f)
        m = data.pop("machine", {})
        lines += [f"## {fn[:-5]}", "",
                  f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
                  f"Python {m.get('python', '?')}, Linux {m.get('kernel', '?')}; run {m.get('date', '?')}.", "",
                  "| figure | value |", "|---|---|"]
        figures, tables = report.split(data)
        lines += [f"| {k} | {fmt(v)} |" for k, v in figures.items()]
        lines.append("")
        for k, rows in tables.items():
            cols = report.columns(rows)
            lines += [f"{k}:", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
            lines.append("")
    return "\n".join(lines)


def main():
    os.makedirs(RESULTS, exist_ok=True)
    only = sys.argv[1:]
    failed = [n for n, argv in BENCHES if (not only or n in only) and not run(n, argv)]
    failed += [n for n, module in MODULES if (not only or n in only) and not run_module(n, module)]
    with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as f:
        f.write(render())
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
