"""System model (csdemu.sysmodel, `csdemu reproduce`): parameters, the CSD
timing shared with the daemon, OOM limits, output formats, and the paper's
acceptance figures (docs/system-model.md says which hold and why)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from csdemu.cli import main
from csdemu.drive.flash.timing import Clocks, NandTiming
from csdemu.drive.kv.attend_timing import EngineClock, EngineRates, attend_time, dense_work
from csdemu.drive.profile import load_profile
from csdemu.sysmodel import (ModelError, csd_attend_ns, load_hardware, load_model, pcie_gbps,
                             reproduce)
from csdemu.sysmodel.csd import attend_pages, layer_attend


# The paper's configuration. The paper does not give its emulated CSD's capacity; it says
# the drive is emulated "as a 980 Pro", and its testbed's 980 Pro is 2 TB, so the drive is
# taken at 2 TB raw here (the shipped `instinfer` profile is a 4 GiB emulation size, whose
# KV lines hold no OPT-13B batch past 1: test_sysmodel_output checks that it is marked).
PAPER_CSD = {"device.capacity": "2T"}


@pytest.fixture(scope="module")
def paper():
    rows, params = reproduce(overrides=PAPER_CSD)
    assert all(r["fits"] for r in rows if not r["oom"])
    return {(r["system"], r["batch"]): r for r in rows}, params


def tps(paper, s, b):
    return paper[0][(s, b)]["tokens_per_s"]


def best(paper, s):
    return max((r["tokens_per_s"] or 0.0) for (sy, _), r in paper[0].items() if sy == s)


# ------------------------------------------------------------------ parameters
def test_model_shapes_from_hardware_facts():
    opt = load_model("opt-13b")
    assert opt.kv_bytes_per_token == 2 * 40 * 5120 * 2 == 819200        # ~0.78 MiB
    assert abs(opt.params / 12.85e9 - 1) < 0.01
    assert abs(load_model("opt-30b").params / 29.97e9 - 1) < 0.01
    assert abs(load_model("llama-2-13b").params / 13.016e9 - 1) < 0.01
    hw = load_hardware()
    assert hw.gpu.memory_gb == 48 and hw.gpu.mem_bw_gbps == 768
    assert hw.ssd.read_gbps == 7.0 and hw.ssd.write_gbps == 5.0
    assert hw.host.memory_gb == 96
    assert 24 < pcie_gbps(4, 16) < 26.5 and 12 < pcie_gbps(3, 16) < 13.5


def test_config_json(tmp_path):
    cfg = {"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 512,
           "num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 1376,
           "vocab_size": 1000, "torch_dtype": "bfloat16"}
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    m = load_model(str(p))
    assert (m.layers, m.q_heads, m.kv_heads, m.head_dim, m.gated_ffn) == (4, 8, 2, 64, True)
    assert m.kv_bytes_per_token_layer == 2 * 2 * 64 * 2
    rows, _ = reproduce(model=str(p), input_len=64, output_len=8, batches=(1, 2))
    assert all(r["tokens_per_s"] > 0 for r in rows)
    del cfg["vocab_size"]
    p.write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="vocab_size"):
        load_model(str(p))


# ------------------------------------------------------------------ one timing code
def test_csd_attend_ns_is_attend_time_on_the_stated_layout():
    prof = load_profile("instinfer")
    lens = [48, 16, 32]
    ns = csd_attend_ns(prof, 4, 2, 128, lens, 2, 16)
    # The same command built by hand: per sequence (a fresh stream, channel-first),
    # per kv head K then V pages; the stream was written K head-major, then V.
    ch, lun = [], []
    for L in lens:
        g = L // 16
        for h in range(2):
            for kind in range(2):
                pos = kind * 2 * g + h * g + np.arange(g)
                ch += list(pos % 8)
                lun += list((pos // 8) % prof.geometry.ways)
    clk = Clocks.create(8, prof.geometry.ways)
    t = attend_time(0, np.array(ch), np.array(lun), 4096, dense_work(lens, 4, 128), clk,
                    NandTiming.from_profile(prof), EngineRates.from_profile(prof), EngineClock())
    assert ns == t.done_ns > 0


def test_system_model_layer_time_equals_csd_attend_ns():
    prof = load_profile("instinfer")
    for sparse in (None, 0.125):
        done, _, _ = layer_attend(prof, 8, 8, 128, 3, 200, 2, 16, sparse)
        assert done == csd_attend_ns(prof, 8, 8, 128, [200] * 3, 2, 16, sparse)


def test_dense_attend_is_channel_bound_at_scale():
    prof = load_profile("instinfer")
    ns = csd_attend_ns(prof, 40, 40, 128, [2048] * 8, 2, 16)
    flash = 8 * 40 * 2 * 128 * 4096 / (8 * 1.4e9)
    assert 0.99 < ns * 1e-9 / flash < 1.05


def test_sparse_pages_fewer_than_dense():
    prof = load_profile("instinfer")
    d, _, _, dm = attend_pages(prof, 40, 40, 128, [2048], 2, 16)
    s, _, _, sm = attend_pages(prof, 40, 40, 128, [2048], 2, 16, sparse={"r": 16, "k": 64, "window": 16})
    assert len(s) < 0.6 * len(d)


def test_sparf_moves_the_k_copy_and_the_selected_rows():
    """At 1/8: r/d of K from the channel-indexed copy (1/16 of the KV bytes)
    plus k/len of the token rows and the window, moved by column reads."""
    prof = load_profile("instinfer")
    _, _, _, dm = attend_pages(prof, 32, 8, 128, [2048] * 2, 2, 16)
    _, _, _, sm = attend_pages(prof, 32, 8, 128, [2048] * 2, 2, 16, sparse=0.125)
    expect = 1 / 16 + (256 + 16) / 2048
    assert abs(sm.sum() / dm.sum() - expect) < 0.01


# ------------------------------------------------------------------ FlexGen's disk path
def test_flexgen_disk_path_is_the_measured_share_of_the_rating():
    """KV read = FlexGen's measured share of the SSD's rated read, then the blocking
    relay -> GPU copy; expected figures worked out by hand, not by the model's code.

    FlexGen's cost_model.py: dtoc_bdw = 0.473 * GB, ctod_bdw_cache_p = 0.746 * GB, with
    GB = 1 << 30 (flexgen/utils.py), on a disk its paper rates "about 2GB/s" read and
    "about 1GB/s" write:  0.473 * 1.073741824 = 0.507880 GB/s / 2 = 0.253940 of the read,
                          0.746 * 1.073741824 = 0.801011 GB/s / 1 = 0.801011 of the write.
    OPT-13B, batch 8, 1024 + 2 tokens: the one decode step attends over 1025 tokens.
      KV per token = 2 (K,V) * 40 layers * 5120 * 2 B     = 819 200 B
      read  8 * 1025 * 819 200                            = 6.71744e9 B
      980 PRO 7.0 GB/s * 0.253940                         = 1.777580 GB/s -> 3.778981 s
      relay -> GPU, gen4 x16: 16 * 1.969231 GB/s * 0.80   = 25.20615 GB/s -> 0.266500 s
      write the new token, 8 * 819 200 = 6.5536e6 B at 5.0 GB/s * 0.801011
                                                          = 4.005057 GB/s -> 0.001636 s
      KV access                                           = 4.047117 s
    """
    hw = load_hardware()
    assert hw.flexgen.disk_read_fraction == pytest.approx(0.253940, rel=1e-5)
    assert hw.flexgen.disk_write_fraction == pytest.approx(0.801011, rel=1e-5)
    rows, _ = reproduce(input_len=1024, output_len=2, batches=(8,), systems=("flexgen",))
    assert rows[0]["breakdown"]["kv_access_s"] == pytest.approx(4.047117, rel=1e-5)


def test_flexgen_on_its_own_testbed_disk_reads_at_its_measured_rate(tmp_path):
    """On a disk rated as FlexGen's testbed (2 GB/s read, 1 GB/s write) the path runs at
    exactly FlexGen's fitted rates, 0.473 and 0.746 GiB/s. Same step as above, by hand:
      read  6.71744e9 B / (0.473 * 2^30 = 507 879 883 B/s)  = 13.226429 s
      relay -> GPU at 25.20615 GB/s                         =  0.266500 s
      write 6.5536e6 B / (0.746 * 2^30 = 801 011 401 B/s)   =  0.008182 s
      KV access                                             = 13.501111 s
    """
    p = tmp_path / "t4disk.toml"
    p.write_text("[ssd]\ndescription = 'FlexGen testbed disk'\nread_gbps = 2.0\n"
                 "write_gbps = 1.0\n")
    rows, _ = reproduce(input_len=1024, output_len=2, batches=(8,), systems=("flexgen",),
                        ssd=str(p))
    assert rows[0]["breakdown"]["kv_access_s"] == pytest.approx(13.501111, rel=1e-5)


def test_flexgen_relay_buffer_limit():
    """copy_worker_func relays one layer's K cache through a 2^30-element pinned buffer."""
    from dataclasses import replace

    from csdemu.sysmodel import SysConfig, run
    hw = load_hardware()
    big = hw.with_(gpu=replace(hw.gpu, memory_gb=1000.0))
    cfg = SysConfig(load_model("opt-13b"), big, load_profile("instinfer"))
    r64, r128 = run(cfg, (64, 128), ("flexgen",))
    assert r64["oom"] is False                     # 2047 * 64 * 40 * 128 = 0.62 G elements
    assert r128["oom"] and "relay buffer" in r128["oom_reason"]


def test_bad_flexgen_profile_one_line(tmp_path):
    from csdemu.sysmodel import HardwareError
    p = tmp_path / "fg.toml"
    p.write_text("[flexgen]\ndescription = 'x'\ndisk_read_fraction = 1.5\n")
    with pytest.raises(HardwareError, match="disk_read_fraction"):
        load_hardware(flexgen=str(p))


# ------------------------------------------------------------------ OOM limits
def test_oom_limits(paper):
    assert paper[0][("flexgen", 64)]["oom"] is False
    assert paper[0][("flexgen", 128)]["oom"] is True
    assert "GPU memory" in paper[0][("flexgen", 128)]["oom_reason"]
    assert paper[0][("deepspeed", 16)]["breakdown"]["swapped_gb"] == 0
    assert paper[0][("deepspeed", 32)]["breakdown"]["swapped_gb"] > 0
    assert tps(paper, "instinfer", 256) is not None


# ------------------------------------------------------------------ paper acceptance
def test_deepspeed_best_at_16_and_falls_at_32(paper):
    ds = {b: tps(paper, "deepspeed", b) for b in (1, 4, 8, 16, 32)}
    assert max(ds, key=ds.get) <= 16
    assert ds[16] / ds[32] > 10


def test_dense_instinfer_over_flexgen_at_64(paper):
    # FlexGen's disk path at the share of the rated read its authors measured
    # (hw/flexgen.toml); docs/system-model.md, "FlexGen's disk path".
    assert 6.85 * 0.85 < tps(paper, "instinfer", 64) / tps(paper, "flexgen", 64) < 6.85 * 1.15


def test_the_paper_configuration_uses_the_papers_page_hit_rate(paper):
    assert paper[1]["page_hit"]["kind"] == "paper" and paper[1]["page_hit"]["rates"] == [0.5]
    assert paper[0][("instinfer-sparf", 256)]["breakdown"]["page_hit"] == "paper"


def test_best_sparf_over_best_flexgen(paper):
    # 12.69x: near the +15 % bound (12.765); docs/system-model.md, "Against the paper"
    assert 11.1 * 0.85 < best(paper, "instinfer-sparf") / best(paper, "flexgen") < 11.1 * 1.15


def test_sparf_over_dense_at_256(paper):
    assert 2.08 * 0.85 < tps(paper, "instinfer-sparf", 256) / tps(paper, "instinfer", 256) < 2.08 * 1.15


def test_uniform_page_hit_keeps_todays_rule():
    """--page-hit uniform: top-k spread uniformly, ~88 % of 16-token groups sensed
    (the rule before the paper's figure): SparF only a little faster than dense."""
    rows, params = reproduce(batches=(256,), systems=("instinfer", "instinfer-sparf"),
                             page_hit="uniform", overrides=PAPER_CSD)
    assert params["page_hit"]["kind"] == "uniform"
    r = rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"]
    assert 1.0 < r < 1.5


@pytest.mark.xfail(strict=True, reason="missing fact: ZeRO-Inference's achieved weight-streaming "
                   "and CPU-attention rates on the paper's host (pinned or pageable copies, the "
                   "Xeon's DRAM channels); at the datasheet rates (25.2 GB/s gen4 x16 pinned, "
                   "140.8 GB/s DDR4) its best is 11.9 tokens/s, 40 % above dense InstInfer's 8.5")
def test_dense_instinfer_best_near_deepspeed_best(paper):
    assert 0.85 < best(paper, "instinfer") / best(paper, "deepspeed") / 1.046 < 1.15


# ------------------------------------------------------------------ CLI
def test_cli_json_and_png(tmp_path):
    png = tmp_path / "t.png"   # --json with --png: the figure is written
    r = CliRunner().invoke(main, ["reproduce", "--model", "opt-13b", "--input", "128", "--output",
                                  "16", "--batch", "1,8", "--json", "--png", str(png),
                                  "--channels", "16", "--channel-gbps", "2"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.output)
    assert set(obj) == {"rows", "params"}
    for row in obj["rows"]:
        assert {"system", "batch", "tokens_per_s", "oom", "breakdown"} <= set(row)
        assert (row["tokens_per_s"] is None) == row["oom"]
    assert obj["params"]["csd"]["channels"] == 16 and obj["params"]["csd"]["channel_mbps"] == 2000
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_table(tmp_path):
    r = CliRunner().invoke(main, ["reproduce", "--input", "64", "--output", "4", "--batch", "2",
                                  "--png", ""])
    assert r.exit_code == 0 and "InstInfer-SparF" in r.output and "tokens/s" in r.output


@pytest.mark.parametrize("args,name", [(["--batch", "1,x"], "--batch"),
                                       (["--sparse", "2"], "--sparse"),
                                       (["--gpus", "0"], "--gpus"),
                                       (["--model", "nope"], "nope")])
def test_cli_bad_flag_one_line(args, name):
    r = CliRunner().invoke(main, ["reproduce", "--png", ""] + args)
    assert r.exit_code != 0
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert len(lines) == 1 and "error" in lines[0].lower() and name in lines[0], r.output
