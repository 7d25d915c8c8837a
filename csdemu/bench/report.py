"""Benchmark results as text: one formatting for `csdemu bench` (without
--json) and for BENCHMARKS.md (csdemu/bench/run.py).

A result is a flat dict of figures; a value that is a list of dicts (one per
context, shape, ...) is a table.
"""
from __future__ import annotations

import fnmatch
import json


def fmt(v) -> str:
    """A figure as text: floats to 4 significant digits, containers as JSON."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def split(result: dict) -> tuple[dict, dict]:
    """-> (figures, tables): the list-of-dict values apart."""
    tables = {k: v for k, v in result.items()
              if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)}
    return {k: v for k, v in result.items() if k not in tables}, tables


def columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(c for r in rows for c in r))


def text(result: dict) -> str:
    """Aligned `name value` lines, then each table with aligned columns."""
    figures, tables = split(result)
    width = max((len(k) for k in figures), default=0)
    lines = [f"{k:<{width}}  {fmt(v)}" for k, v in figures.items()]
    for name, rows in tables.items():
        cols = columns(rows)
        cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
        w = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        lines += ["", f"{name}:", "  ".join(c.rjust(x) for c, x in zip(cols, w))]
        lines += ["  ".join(v.rjust(x) for v, x in zip(row, w)) for row in cells]
    return "\n".join(lines)


def how_for(how: dict, name: str) -> str:
    """How a figure was measured: the entry of `how` (a result's "how" dict)
    named `name`, else the first whose glob pattern matches it; "" if none."""
    if name in how:
        return how[name]
    return next((text for pat, text in how.items() if fnmatch.fnmatchcase(name, pat)), "")


#: keys of a result that are about the figures, not figures
META = ("machine", "how", "targets")


def unexplained(result: dict) -> list[str]:
    """The figures and tables of a result that no "how" entry explains."""
    how = result.get("how", {})
    return [k for k in result if k not in META and not how_for(how, k)]
