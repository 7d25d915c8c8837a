"""What every benchmark result carries: the machine and the source tree it
ran on, and how it is saved."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time

#: what a run writes, so not part of the tree it measured
OUTPUTS = ("bench/results/", "BENCHMARKS.md")


def commit(root: str | None = None) -> str:
    """The tree a benchmark ran on: HEAD's hash, plus "+dirty" when tracked
    files (other than benchmark outputs) differ from it; "unknown" outside git."""
    root = root or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, text=True,
                              capture_output=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                 text=True, capture_output=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = [ln for ln in changed if not ln[3:].startswith(OUTPUTS)]
    return head + ("+dirty" if dirty else "")


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "commit": commit()}


def write_json(result: dict, out: str) -> None:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        f.write(json.dumps(result, indent=2) + "\n")
