"""The host side of the system model at scale: the GPU's non-attention work
against batch, one Attend round trip per layer from the drive's own timing,
the layer waiting for its slowest drive, the shared PCIe links, and the
drives' KV lines."""
from __future__ import annotations

import pytest

from csdemu.drive.profile import load_profile
from csdemu.sysmodel import SysConfig, load_hardware, load_model, reproduce
from csdemu.sysmodel.csd import layer_attend
from csdemu.sysmodel.instinfer import command_round_trip_s, kv_line_bytes, prefill_write_s
from csdemu.topology import load_topology

ONE_STEP = dict(input_len=1024, output_len=2)          # one decode step, over 1025 tokens


def step(batch, csds=1, **kw):
    args = {**ONE_STEP, **kw}
    return reproduce(batches=(batch,), csds=csds, systems=("instinfer",), **args)[0][0]["breakdown"]


def test_gpu_work_is_weight_bound_then_flop_bound():
    """A6000, OPT-13B: a layer's 0.63 GB of weights at 768 GB/s against 2 FLOPs per
    weight per sequence at 154.8 TFLOP/s cross at b = 154.8e12 / 768e9 = 201.6."""
    b201, b202, b256 = step(201), step(202), step(256)
    assert (b201["gpu_bound"], b202["gpu_bound"], b256["gpu_bound"]) == ("weights", "flops", "flops")
    assert step(1)["compute_s"] == pytest.approx(b201["compute_s"], rel=0.02)
    m = load_model("opt-13b")
    flops = 2.0 * (m.layers * m.layer_params + m.vocab * m.hidden) * 256 / 154.8e12
    assert b256["compute_s"] == pytest.approx(flops, rel=1e-6)


def test_one_command_round_trip_per_layer_from_the_drive_profile():
    """instinfer: firmware 30.49 us per read command (timing.fw_read_ns), no link latency;
    a 1 us link latency adds 2 us per layer (submission and completion)."""
    assert command_round_trip_s(load_profile("instinfer")) == pytest.approx(30.49e-6)
    base = step(4)
    assert base["command_s"] == pytest.approx(40 * 30.49e-6)
    slow = step(4, overrides={"pcie.latency_ns": 1000})
    assert slow["command_s"] == pytest.approx(40 * 32.49e-6)
    assert slow["step_s"] > base["step_s"]


def test_the_layer_waits_for_its_slowest_drive():
    """40 kv heads over 3 drives: 14, 13, 13. The step's CSD part is the 14-head drive."""
    prof = load_profile("instinfer")
    done, _, _ = layer_attend(prof, 14, 14, 128, 4, 1025, 2, 16)
    assert step(4, csds=3)["csd_attend_s"] == pytest.approx(40 * done * 1e-9)


def test_q_and_outputs_cross_the_gpus_link(tmp_path):
    """q out and outputs back, float32: 4 sequences x 40 heads x 128 x 4 B each way,
    over the GPU's x16 (25.2 GB/s); an x4 GPU link takes four times as long."""
    per_way = 4 * 40 * 128 * 4
    x16 = load_topology(None).gbps(16)
    assert step(4)["host_link_s"] == pytest.approx(40 * 2 * per_way / x16 * 1e-9, rel=0.01)
    p = tmp_path / "narrow.toml"
    p.write_text('[topology]\ndescription = "x4 GPU"\nlink_gen = 4\nroot_complex_lanes = 64\n'
                 'gpu_lanes = 4\ndrive_lanes = 4\n')
    assert step(4, topology=str(p))["host_link_s"] == pytest.approx(4 * step(4)["host_link_s"], rel=0.01)


def test_the_prefill_saturates_the_gpus_link_with_many_drives():
    """20 drives of 2.6 GB/s program bandwidth each would take 52 GB/s; every byte
    leaves the GPU over its x16 (25.2 GB/s), so that link sets the prefill's KV time."""
    cfg = SysConfig(load_model("opt-13b"), load_hardware(), load_profile("instinfer"), csds=20)
    kv = 64 * 1024 * load_model("opt-13b").kv_bytes_per_token
    assert prefill_write_s(cfg, 64, 1.0) == pytest.approx(kv / (cfg.topology.gbps(16) * 1e9), rel=1e-3)
    one = SysConfig(load_model("opt-13b"), load_hardware(), load_profile("instinfer"), csds=1)
    assert prefill_write_s(one, 64, 1.0) > 15 * prefill_write_s(cfg, 64, 1.0) / 20


def test_adding_drives_stops_paying_off_at_small_batch():
    """At batch 16 the GPU's work and the round trips do not shrink with more drives."""
    tps = {n: reproduce(csds=n, batches=(16,), systems=("instinfer",), overrides={
        "device.capacity": "2T"})[0][0]["tokens_per_s"] for n in (1, 20)}
    assert tps[20] / tps[1] < 0.8 * 20


def test_capacity_is_the_kv_lines():
    """csd_capacity_ok compares the busiest drive's KV with its KV lines (kv_pct of the
    lines), not with the block namespace."""
    prof = load_profile("instinfer")
    d = prof.derive()
    assert kv_line_bytes(prof) == d.kv_lines * d.pages_per_line * 4096 == 192 * 128 * 32 * 4096
    small = step(1)
    assert small["csd_capacity_ok"] and small["csd_kv_lines_gb"] == pytest.approx(3.221225472)
    assert small["csd_kv_gb"] == pytest.approx(1026 * 40 * 2 * 40 * 128 * 2 / 1e9)   # input + output
    rows, _ = reproduce(batches=(4,), systems=("instinfer",), **ONE_STEP)
    assert rows[0]["fits"] is False and "KV lines" in rows[0]["fit_reason"]
    assert rows[0]["breakdown"]["csd_capacity_ok"] is False
