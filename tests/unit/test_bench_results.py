"""BENCHMARKS.md comes from one tree and says how each figure was measured:
every committed result names its machine, date and commit, every figure has
a "how measured" line, and the sections `make bench` writes share one
commit (issue 23, "A fresh BENCHMARKS.md")."""
import json
import os

import pytest

from csdemu.bench import report, run
from tests import ROOT

RESULTS = os.path.join(ROOT, "bench", "results")
MAKE_BENCH = [name for name, _ in run.BENCHES] + [name for name, _ in run.MODULES]


def _results() -> dict:
    out = {}
    for fn in sorted(os.listdir(RESULTS)):
        if fn.endswith(".json"):
            with open(os.path.join(RESULTS, fn)) as f:
                out[fn[:-5]] = json.load(f)
    return out


@pytest.mark.parametrize("name", sorted(_results()))
def test_each_result_names_its_tree_and_explains_every_figure(name):
    res = _results()[name]
    m = res.get("machine", {})
    for key in ("cpu", "cores", "python", "kernel", "date", "commit"):
        assert m.get(key) not in (None, ""), f"{name}.json: machine.{key} missing"
    assert isinstance(res.get("how"), dict), f"{name}.json has no 'how' section"
    assert report.unexplained(res) == [], f"{name}.json: figures with no 'how measured' line"


def test_make_bench_sections_come_from_one_tree():
    results = _results()
    commits = {n: results[n]["machine"].get("commit") for n in MAKE_BENCH if n in results}
    assert set(MAKE_BENCH) <= set(results), "make bench did not write every section"
    assert len(set(commits.values())) == 1, commits


def test_render_puts_the_tree_on_top_and_sets_other_runs_apart(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "RESULTS", str(tmp_path))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "moved.md").write_text("## What moved\n\n| a | b |\n")
    monkeypatch.setattr(run, "NOTES", str(notes))
    mach = {"cpu": "x", "cores": 2, "python": "3", "kernel": "6", "date": "d"}
    (tmp_path / "a.json").write_text(json.dumps(
        {"speed": 2.0, "machine": {**mach, "commit": "abc"}, "how": {"speed": "timed so"}}))
    (tmp_path / "t.json").write_text(json.dumps(
        {"lost": 0, "machine": {**mach, "commit": "old"}, "how": {"l*": "counted so"}}))
    text = run.render("abc")
    head, other = text.split("# From other runs")
    assert "ran on commit abc" in head and "| speed | 2 | timed so |" in head
    assert "## t (commit old)" in other and "| lost | 0 | counted so |" in other
    assert "## t" not in head
    assert other.index("## t (commit old)") < other.index("# Notes") < other.index("## What moved")


def test_how_for_takes_exact_names_before_patterns():
    how = {"dense_*": "pattern", "dense_x": "exact"}
    assert report.how_for(how, "dense_x") == "exact"
    assert report.how_for(how, "dense_y") == "pattern"
    assert report.unexplained({"dense_y": 1, "other": 2, "how": how, "machine": {}}) == ["other"]
