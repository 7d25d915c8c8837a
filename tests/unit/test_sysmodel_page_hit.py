"""SparF's page-hit rate in the system model: each source, what a rate does
to the Attend's pages, and the CLI naming the source it used."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from csdemu.cli import main
from csdemu.drive.profile import load_profile
from csdemu.sysmodel import PageHitError, Sparsity, load_model, reproduce
from csdemu.sysmodel.csd import attend_pages
from csdemu.sysmodel.page_hit import TABLE, resolve

ROOT = Path(__file__).resolve().parents[2]


def sensed_vs_dense(model: str, L: int, page_hit) -> float:
    m = load_model(model)
    prof = load_profile("instinfer")
    T = prof.geometry.page_bytes // (m.head_dim * m.dtype_bytes)
    dense = attend_pages(prof, m.q_heads, m.kv_heads, m.head_dim, [L], m.dtype_bytes, T)[0]
    sparse = attend_pages(prof, m.q_heads, m.kv_heads, m.head_dim, [L], m.dtype_bytes, T,
                          Sparsity(0.125, page_hit))[0]
    return len(sparse) / len(dense)


@pytest.mark.parametrize("rate", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("L", [1024, 2048])
def test_a_rate_is_the_share_of_dense_pages_sensed(rate, L):
    """OPT-13B, 16-token pages: SparF senses `rate` of dense's pages, the K copy included
    (within one group's K and V per (sequence, head), 2 of 2L/16 pages)."""
    assert sensed_vs_dense("opt-13b", L, rate) == pytest.approx(rate, abs=2 / (2 * L / 16) + 1e-9)


def test_a_rate_moves_only_the_selected_rows():
    """Fewer sensed groups carry the same k selected tokens: more rows per group, the
    same bytes over the channel (column reads)."""
    prof = load_profile("instinfer")
    moved = [attend_pages(prof, 40, 40, 128, [2048], 2, 16, Sparsity(0.125, h))[3].sum()
             for h in (0.4, 0.8)]
    assert moved[0] == pytest.approx(moved[1], rel=0.01)


def test_the_measured_figures_are_eval_sparse_results():
    """hw/page-hit.toml [measured] is bench/results/eval_sparse.json's SparF 1/8 rows."""
    with open(TABLE, "rb") as f:
        table = tomllib.load(f)["measured"]
    res = json.loads((ROOT / "bench" / "results" / "eval_sparse.json").read_text())
    got = {r["context"]: r["flash_pages_vs_dense"] for r in res["rows"] if r["mode"] == "sparf-1/8"}
    assert table["contexts"] == sorted(got)
    assert table["sensed_vs_dense"] == pytest.approx([got[c] for c in table["contexts"]], abs=1e-4)
    assert "csdemu eval-sparse" in table["command"]


@pytest.mark.parametrize("L", [1024, 2048, 4096])
def test_smollm2_measured_rate_gives_back_the_measured_pages(L):
    """Same rule as the live drive: fed its own measurement, the model senses what the
    drive sensed (SmolLM2, 32-token pages), to within one group per (sequence, head)."""
    ph = resolve("measured", "smollm2-135m", 0.125)
    want = ph.rate_at(L)
    assert sensed_vs_dense("smollm2-135m", L, want) == pytest.approx(want, abs=2 / (2 * L / 32) + 1e-9)


@pytest.mark.parametrize("model,ratio,kind", [("opt-13b", 0.125, "paper"),
                                              ("llama-2-13b", 0.125, "paper"),
                                              ("smollm2-135m", 0.125, "measured"),
                                              ("opt-13b", 0.25, "uniform"),
                                              ("my-model", 0.125, "uniform")])
def test_auto_picks_the_source_for_the_model(model, ratio, kind):
    assert resolve(None, model, ratio).kind == kind


def test_paper_and_measured_are_figures_at_one_eighth():
    with pytest.raises(PageHitError, match="ratio 0.125"):
        resolve("paper", "opt-13b", 0.25)
    with pytest.raises(PageHitError, match="in \\(0, 1\\]"):
        resolve("1.5", "opt-13b", 0.125)


def test_output_names_the_source():
    rows, params = reproduce(input_len=64, output_len=4, batches=(2,),
                             systems=("instinfer-sparf",), page_hit="0.6")
    assert params["page_hit"]["kind"] == "rate" and params["page_hit"]["rates"] == [0.6]
    r = CliRunner().invoke(main, ["reproduce", "--input", "64", "--output", "4", "--batch", "2",
                                  "--system", "instinfer-sparf", "--page-hit", "measured",
                                  "--model", "smollm2-135m", "--png", ""])
    assert r.exit_code == 0, r.output
    assert "SparF page-hit rate: measured - csdemu eval-sparse" in r.output


def test_the_paper_rate_makes_sparf_faster_than_uniform():
    kw = dict(batches=(16,), systems=("instinfer-sparf",), input_len=1024, output_len=8)
    paper = reproduce(page_hit="paper", **kw)[0][0]["breakdown"]["step_s"]
    uniform = reproduce(page_hit="uniform", **kw)[0][0]["breakdown"]["step_s"]
    assert uniform > 1.5 * paper


@pytest.mark.parametrize("args,msg", [(["--page-hit", "nope"], "--page-hit"),
                                      (["--page-hit", "0"], "--page-hit"),
                                      (["--page-hit", "paper", "--sparse", "0.25"], "--page-hit")])
def test_bad_page_hit_one_line(args, msg):
    r = CliRunner().invoke(main, ["reproduce", "--png", "", "--batch", "1", "--output", "2", *args])
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code != 0 and len(lines) == 1 and msg in lines[0], r.output


def test_drawn_groups_and_dims_spread_over_the_dies():
    """Which groups and dims SparF selects is data-dependent; the model's draws must
    not pile the heads' pages onto a few dies. Llama-2-13B at 2100 tokens (one full
    K-copy page per dim): a head's copy spans 128 pages = 8 channels x 16 ways, so the
    same dims in every head would put all 40 heads' copy pages of a dim on one die.
    (At exactly 2048 tokens the layout itself puts every head's last group on one die,
    for the live drive as for the model: 128 groups per head = one stripe cycle.)"""
    prof = load_profile("instinfer")
    ch, lun, _, _ = attend_pages(prof, 40, 40, 128, [2100] * 4, 2, 16, Sparsity(0.125, 0.5))
    dies = np.bincount(ch * 16 + lun, minlength=128)
    assert dies.max() < 1.5 * dies.mean()
    assert len(ch) == pytest.approx(0.5 * 4 * 40 * 2 * (2100 // 16), rel=0.02)
