"""`csdemu reproduce` output: unfit configurations marked, figures only when
asked for with --json, vector or 300 dpi figures with the systems' real names
and "modeled", and --sweep."""
from __future__ import annotations

import json
import struct

import pytest
from click.testing import CliRunner

from csdemu.cli import main
from csdemu.sysmodel import reproduce
from csdemu.sysmodel.report import format_table, valid

SMALL = ["--input", "64", "--output", "4"]


def cli(*args):
    return CliRunner().invoke(main, ["reproduce", *SMALL, *args])


def test_json_writes_no_figure_unless_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("--batch", "1", "--json", "--system", "instinfer")
    assert r.exit_code == 0, r.output
    assert list(tmp_path.iterdir()) == []
    assert "figure" not in json.loads(r.output)["params"]
    r = cli("--batch", "1", "--system", "instinfer")          # the table still draws one
    assert r.exit_code == 0 and (tmp_path / "throughput.png").exists()


def _png_dpi(path) -> float:
    data = path.read_bytes()
    i = data.index(b"pHYs")
    ppm = struct.unpack(">I", data[i + 4:i + 8])[0]
    return ppm * 0.0254


def test_figures_vector_or_300_dpi_with_real_names_and_modeled(tmp_path):
    svg, pdf, png = tmp_path / "t.svg", tmp_path / "t.pdf", tmp_path / "t.png"
    for p in (svg, pdf, png):
        r = cli("--batch", "1,2", "--json", "--png", str(p))
        assert r.exit_code == 0, r.output
    text = svg.read_text()
    assert "<svg" in text and "Modeled" in text and "modeled" in text
    for name in ("ZeRO-Inference", "FlexGen-SparQ", "InstInfer-SparF", "Recomp (vLLM)"):
        assert name in text
    assert "deepspeed" not in text
    assert pdf.read_bytes()[:4] == b"%PDF"
    assert _png_dpi(png) == pytest.approx(300, abs=1)


def test_unfit_configurations_are_marked_never_valid(tmp_path):
    """The shipped instinfer drive's KV lines (3.2 GB) hold OPT-13B at batch 1, not 4."""
    rows, params = reproduce(batches=(1, 4), systems=("instinfer", "flexgen"))
    by = {(r["system"], r["batch"]): r for r in rows}
    assert by[("instinfer", 1)]["fits"] and not by[("instinfer", 4)]["fits"]
    assert valid(by[("instinfer", 4)]) is None and valid(by[("instinfer", 1)]) is not None
    table = format_table(rows, params)
    assert f"{by[('instinfer', 4)]['tokens_per_s']:.2f}*" in table
    assert "* does not fit the drives" in table and "KV lines" in table
    svg = tmp_path / "f.svg"
    r = CliRunner().invoke(main, ["reproduce", "--batch", "1,4", "--system", "instinfer",
                                  "--json", "--png", str(svg)])
    assert r.exit_code == 0 and "no fit" in svg.read_text()


def test_sweep_draws_one_curve_per_system(tmp_path):
    svg = tmp_path / "s.svg"
    r = cli("--batch", "1,2", "--system", "instinfer", "--system", "flexgen",
            "--sweep", "channels=4,8,16", "--json", "--png", str(svg))
    assert r.exit_code == 0, r.output
    sw = json.loads(r.output)["sweep"]
    assert sw["param"] == "channels" and sw["values"] == [4, 8, 16]
    ii = sw["best"]["instinfer"]
    assert ii[0] < ii[1] < ii[2]
    assert len(set(sw["best"]["flexgen"])) == 1          # FlexGen has no CSD channels
    text = svg.read_text()
    assert "CSD flash channels" in text and "InstInfer" in text and "FlexGen" in text


def test_sweep_page_hit_and_csds_in_the_table():
    r = cli("--batch", "2", "--system", "instinfer-sparf", "--sweep", "page-hit=0.3,0.6,uniform",
            "--png", "")
    assert r.exit_code == 0, r.output
    assert "what-if sweep of SparF page-hit rate" in r.output
    r = cli("--batch", "2", "--system", "instinfer", "--sweep", "csds=1,2", "--png", "")
    assert r.exit_code == 0 and "what-if sweep of CSDs" in r.output


@pytest.mark.parametrize("value,msg", [("ways=1,2", "PARAM one of"), ("channels=x", "not a int"),
                                       ("csds=1,40", "holds at most 27"), ("channels=", "no values")])
def test_bad_sweep_one_line(value, msg):
    r = cli("--batch", "1", "--png", "", "--sweep", value)
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code != 0 and len(lines) == 1 and "--sweep" in lines[0] and msg in lines[0], r.output


@pytest.mark.parametrize("value", ["2X", "0"])
def test_bad_csd_capacity_one_line(value):
    r = cli("--batch", "1", "--png", "", "--csd-capacity", value)
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code != 0 and len(lines) == 1 and "--csd-capacity" in lines[0], r.output
