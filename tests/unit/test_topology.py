"""Drive arrays without daemons: the split rule, the host's PCIe topology,
an array step's time, the system model's N-CSD attend built on both, and
`csdemu array start`'s argument checks (all refused before any fork)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

from csdemu.cli import main
from csdemu.drive.profile import load_profile
from csdemu.sysmodel import array_attend, array_attend_ns, csd_attend, pcie_gbps
from csdemu.sysmodel.array import busiest_load, layer_array_attend
from csdemu.topology import (MemberStep, TopologyError, array_time, attend_io_bytes, load_topology,
                             plan, rows_for)


# ------------------------------------------------------------------ the split rule
@pytest.mark.parametrize("kv_heads,drives", [(40, 1), (40, 3), (40, 8), (3, 3), (8, 5), (1, 1)])
def test_heads_split_contiguously_and_as_evenly_as_they_go(kv_heads, drives):
    shares = plan(kv_heads, drives)
    assert [s.member for s in shares] == list(range(drives))
    assert all(s.mod == 1 for s in shares)
    heads = [h for s in shares for h in range(s.head0, s.head0 + s.heads)]
    assert heads == list(range(kv_heads))                       # each head once, in order
    sizes = [s.heads for s in shares]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("kv_heads,drives", [(3, 8), (2, 3), (1, 4), (5, 6)])
def test_more_drives_than_kv_heads_split_the_batch_by_sequence_id(kv_heads, drives):
    shares = plan(kv_heads, drives)
    assert [s.member for s in shares] == list(range(drives))
    per_head = [sum(s.head0 == h for s in shares) for h in range(kv_heads)]
    assert sum(per_head) == drives and max(per_head) - min(per_head) <= 1
    ids = np.array([0, 1, 2, 3, 7, 10, 2 ** 40 + 1], np.uint64)
    for h in range(kv_heads):
        mine = [s for s in shares if s.head0 == h]
        assert all(s.heads == 1 and s.mod == len(mine) for s in mine)
        rows = [np.arange(ids.size) if (r := rows_for(s, ids)) is None else r for s in mine]
        held = np.concatenate(rows)
        assert sorted(held.tolist()) == list(range(ids.size))  # every sequence on one drive
        for s, r in zip(mine, rows):
            assert all(s.holds(ids[i]) for i in r)


def test_q_heads_follow_their_kv_head():
    s = plan(4, 2)[1]                        # kv heads 2, 3
    assert s.kv_heads() == slice(2, 4) and s.q_heads(3) == slice(6, 12)
    assert rows_for(s, np.arange(5, dtype=np.uint64)) is None


def test_bad_split_is_refused():
    with pytest.raises(ValueError, match="at least one kv head and one drive"):
        plan(0, 2)


# ------------------------------------------------------------------ the topology
def test_the_paper_host_from_its_lane_count():
    t = load_topology()
    assert t.name == "instinfer-host" and t.link_gen == 4
    assert t.free_lanes == 64 - 16 - 4
    assert t.behind_switch(11) == [False] * 11                   # 44 lanes: 11 drives of x4
    assert t.behind_switch(12) == [False] * 7 + [True] * 5      # the switch takes x16
    assert t.max_drives == 7 + 20 and sum(t.behind_switch(20)) == 13
    with pytest.raises(TopologyError, match="at most 27 drives"):
        t.behind_switch(28)
    assert math.isclose(t.gbps(16), pcie_gbps(4, 16))            # one PCIe table for both


def test_array_time_is_the_slowest_member_plus_the_shared_links():
    t = load_topology()
    steps = [MemberStep(0, 1000, 25_200, 50_400), MemberStep(1, 3000, 25_200, 50_400)]
    at = array_time(t, 2, steps)
    gpu = t.gbps(16)                                             # 25.2 GB/s = bytes per ns
    assert at.slowest_ns == 3000 and at.slowest_member == 1
    assert at.host_in_ns == math.ceil(50_400 / gpu) and at.host_out_ns == math.ceil(100_800 / gpu)
    assert at.device_ns == 3000 + at.host_in_ns + at.host_out_ns
    assert array_time(t, 2, []).device_ns == 0


def test_drives_behind_the_switch_share_its_upstream_link(tmp_path):
    p = tmp_path / "narrow.toml"
    p.write_text('[topology]\ndescription = "x"\nlink_gen = 4\nroot_complex_lanes = 32\n'
                 'gpu_lanes = 16\ndrive_lanes = 4\n[switch]\nupstream_lanes = 4\n'
                 'downstream_lanes = 32\n')
    t = load_topology(str(p))
    behind = t.behind_switch(6)                                  # 16 free lanes: 4 drives direct
    assert behind == [False, False, False, True, True, True]
    steps = [MemberStep(i, 100, 1000, 0) for i in range(6)]
    at = array_time(t, 6, steps)
    # x4 upstream carries 3 drives' q: slower than the GPU's x16 carrying all 6
    assert at.host_in_ns == math.ceil(3000 / t.gbps(4)) > math.ceil(6000 / t.gbps(16))


@pytest.mark.parametrize("body,msg", [
    ('[topology]\ndescription = "x"\nlink_gen = 4\nroot_complex_lanes = 64\ngpu_lanes = 16\n'
     'drive_lanes = 4\nlanes = 3\n', r"\[topology\] unknown key 'lanes'"),
    ('[topology]\ndescription = "x"\nlink_gen = 4\nroot_complex_lanes = 64\ngpu_lanes = 12\n'
     'drive_lanes = 4\n', r"gpu_lanes must be one of"),
    ('[topology]\ndescription = "x"\nlink_gen = 4\nroot_complex_lanes = 64\ngpu_lanes = 16\n',
     r"drive_lanes is required"),
    ('[topology]\ndescription = "x"\nlink_gen = 4\nroot_complex_lanes = -1\ngpu_lanes = 16\n'
     'drive_lanes = 4\n', r"root_complex_lanes must be a non-negative integer"),
])
def test_bad_topology_one_line_naming_the_key(tmp_path, body, msg):
    p = tmp_path / "bad.toml"
    p.write_text(body)
    with pytest.raises(TopologyError, match=msg) as e:
        load_topology(str(p))
    assert "\n" not in str(e.value) and "bad.toml" in str(e.value)
    with pytest.raises(TopologyError, match="unknown topology 'nope'"):
        load_topology("nope")


# ------------------------------------------------------------------ the system model on top
def test_one_drive_array_is_the_drive_plus_the_gpu_link():
    prof = load_profile("instinfer")
    lens = [64, 128, 32]
    one = csd_attend(prof, 8, 4, 128, lens, 2, 16).done_ns
    io = attend_io_bytes(3, 8, 128)
    gpu = load_topology().gbps(16)
    assert array_attend_ns(prof, None, 8, 4, 128, lens, 2, 16, 1) == \
        one + 2 * math.ceil(io / gpu)


def test_array_attend_charges_each_share_with_the_drives_own_timing():
    prof = load_profile("instinfer")
    lens = [64, 128, 32, 96]
    at, times = array_attend(prof, None, 6, 2, 128, lens, 2, 16, 3)
    # 2 kv heads over 3 drives: head 0 on drives 0, 1 (ids 0, 2 | 1, 3), head 1 on drive 2
    assert times[0].done_ns == csd_attend(prof, 3, 1, 128, [64, 32], 2, 16).done_ns
    assert times[1].done_ns == csd_attend(prof, 3, 1, 128, [128, 96], 2, 16).done_ns
    assert times[2].done_ns == csd_attend(prof, 3, 1, 128, lens, 2, 16).done_ns
    assert at.slowest_member == 2 and at.slowest_ns == times[2].done_ns


@pytest.mark.parametrize("drives", [1, 2, 3, 5])
def test_uniform_batches_cost_the_same_through_the_cached_path(drives):
    prof = load_profile("instinfer")
    at, _ = layer_array_attend(prof, None, 8, 4, 128, 6, 160, 2, 16, drives, 0.125)
    assert at.device_ns == array_attend_ns(prof, None, 8, 4, 128, [160] * 6, 2, 16, drives, 0.125)
    # kv heads x sequences of the busiest drive: 4 kv heads, 6 sequences
    assert busiest_load(4, drives, 6) == {1: 24, 2: 12, 3: 12, 5: 6}[drives]


def test_more_csds_make_the_model_faster_until_the_heads_run_out():
    from csdemu.sysmodel import reproduce
    tps = {n: reproduce(csds=n, batches=(16,), systems=("instinfer",))[0][0]["tokens_per_s"]
           for n in (1, 4, 8)}
    assert tps[1] < tps[4] < tps[8] < 8 * tps[1]


# ------------------------------------------------------------------ the CLI, before any fork
@pytest.mark.parametrize("args,msg", [
    (["--drives", "2", "--profile", "instinfer", "--profile", "femu-bbssd", "--profile", "x"],
     "--profile: give one for all 2 drives or one per drive, got 3"),
    (["--profile", "instinfer"], "--drives: how many drives?"),
    (["--drives", "2", "--profile", "nope"], "nope"),
    (["--drives", "2", "--set", "geometry.channels"], "expected SECTION.KEY=VALUE"),
    (["--drives", "28"], "--topology: topology instinfer-host holds at most 27 drives"),
    (["--drives", "2", "--topology", "nope"], "--topology: unknown topology 'nope'"),
    (["--drives", "0"], "--drives"),
])
def test_array_start_bad_arguments_one_line(tmp_path, args, msg):
    r = CliRunner().invoke(main, ["array", "start", "--dir", str(tmp_path / "a"), *args])
    assert r.exit_code != 0
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], r.output
    assert not (tmp_path / "a").exists()                         # nothing was started


def test_array_config_bad_key_one_line(tmp_path):
    cfg = tmp_path / "array.toml"
    cfg.write_text('drives = 2\n[[drive]]\nprofile = "instinfer"\n[[drive]]\nprofle = "x"\n')
    r = CliRunner().invoke(main, ["array", "start", "--dir", str(tmp_path / "a"),
                                  "--config", str(cfg)])
    assert r.exit_code != 0 and r.output.count("\n") == 1
    assert "[[drive]] 1: unknown key 'profle'" in r.output


def test_array_commands_without_an_array_one_line(tmp_path):
    for verb in (["status"], ["stop"], ["member", "0", "status"]):
        r = CliRunner().invoke(main, ["array", verb[0], "--dir", str(tmp_path), *verb[1:]])
        assert r.exit_code != 0 and r.output.count("\n") == 1
        assert "no csdemu array in" in r.output


@pytest.mark.parametrize("args,msg", [
    (["--csds", "28"], "Invalid value for --csds: topology instinfer-host holds at most 27"),
    (["--topology", "nope"], "Invalid value for --topology: unknown topology 'nope'"),
])
def test_reproduce_refuses_what_the_topology_cannot_hold(args, msg):
    r = CliRunner().invoke(main, ["reproduce", "--png", "", *args])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and msg in r.output, r.output
