"""Profiles: shipped presets load, every key is validated, errors are one line."""
import json
import re

import pytest

from csdemu.drive.profile import PROFILE_DIR, Profile, ProfileError, list_profiles, load_profile

SHIPPED = ["instinfer", "femu-bbssd", "nvmevirt-970pro"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load(name):
    p = load_profile(name)
    assert isinstance(p, Profile) and p.name == name
    d = p.derive()
    assert d.total_pages * p.geometry.page_bytes == d.raw_bytes
    assert d.raw_bytes <= 17 * 2**30            # a data dir of a few GiB (sparse)
    assert 0 < d.nlbas < d.total_pages * d.lbas_per_page


def test_list_profiles():
    names = dict(list_profiles())
    assert set(SHIPPED) <= set(names)
    assert all(desc and "\n" not in desc for desc in names.values())


def test_anchor_numbers():
    ii = load_profile("instinfer")
    assert ii.geometry.channels * ii.timing.channel_mbps == 11200        # 11.2 GB/s internal
    assert ii.pcie.bandwidth_mbps == 7000 and ii.geometry.page_bytes == 4096
    assert (ii.engine.gemv_gflops, ii.engine.softmax_mflops, ii.engine.filter_mbps) == (13.3, 15.0, 1800)
    fe = load_profile("femu-bbssd")
    g, t = fe.geometry, fe.timing
    assert (g.channels, g.ways, g.planes, g.blocks_per_plane, g.pages_per_block) == (8, 8, 1, 256, 256)
    assert (t.tR_ns, t.tPROG_ns, t.tBERS_ns) == (40_000, 200_000, 2_000_000)
    assert (fe.gc.threshold_pct, fe.gc.threshold_high_pct, fe.gc.policy) == (75.0, 95.0, "greedy")
    nv = load_profile("nvmevirt-970pro")
    assert (nv.geometry.channels, nv.geometry.ways, nv.geometry.flash_page_bytes) == (8, 2, 32768)
    assert nv.derive().pages_per_flash_page == 8
    assert (nv.timing.channel_mbps, nv.pcie.bandwidth_mbps, nv.timing.tR_4k_ns) == (800, 3360, 35760)
    assert (nv.timing.tPROG_ns, nv.timing.fw_read_4k_ns, nv.device.over_provisioning_pct) == (185_000, 21_500, 7.0)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_number_cites_a_source(name):
    for line in (PROFILE_DIR / f"{name}.toml").read_text().splitlines():
        if re.match(r"^\s*\w+\s*=\s*[-\d.]", line):
            assert "#" in line, f"{name}: no source comment on: {line}"


@pytest.mark.parametrize("override, message", [
    ({"timing.tR_ns": -3}, "profile instinfer.toml: [timing] tR_ns must be a positive integer, got -3"),
    ({"timing.tR_ns": 1.5}, "[timing] tR_ns must be a positive integer, got 1.5"),
    ({"timing.tR_ns": True}, "[timing] tR_ns must be a positive integer, got True"),
    ({"timing.tr_ns": 3}, "[timing] unknown key 'tr_ns'"),
    ({"geometry.page_bytes": 3000}, "[geometry] page_bytes must be a power-of-two integer, got 3000"),
    ({"gc.policy": "random"}, "[gc] policy must be one of 'greedy', 'cost-benefit', got 'random'"),
    ({"device.timing_mode": "fast"}, "[device] timing_mode must be one of"),
    ({"device.over_provisioning_pct": 100}, "[device] over_provisioning_pct must be a percentage"),
    ({"faults.read_fail_ppm": 2_000_000}, "[faults] read_fail_ppm must be an integer in 0..1000000"),
    ({"gc.threshold_pct": 99.0}, "[gc] threshold_pct must not exceed threshold_high_pct"),
    ({"geometry.flash_page_bytes": 6144}, "[geometry] flash_page_bytes must be a multiple of page_bytes"),
    ({"geometry.channels": 65}, "[geometry] channels must be at most 64"),
    ({"geometry.oob_bytes": 8}, "[geometry] oob_bytes must be at least 24"),
    ({"device.lba_size": 8192}, "[device] lba_size must be a power of two in 512..page_bytes"),
    ({"geometry.blocks_per_plane": 3}, "[geometry] blocks_per_plane must be at least 4"),
    ({"device.write_buffer_bytes": 100}, "[device] write_buffer_bytes must be 0 or at least one flash page"),
    ({"engine.kv_dram_bytes": 0}, "[engine] kv_dram_bytes must be a positive integer, got 0"),
    ({"bogus.key": 1}, "override names unknown section [bogus]"),
    ({"nodot": 1}, "override 'nodot' must be 'section.key'"),
])
def test_bad_values_raise_one_line(override, message):
    with pytest.raises(ProfileError) as e:
        load_profile("instinfer", overrides=override)
    msg = str(e.value)
    assert message in msg and "\n" not in msg
    assert msg.startswith("profile instinfer.toml: ")


def test_overrides_both_spellings():
    a = load_profile("femu-bbssd", overrides={"geometry.blocks_per_plane": 16})
    b = load_profile("femu-bbssd", overrides={"geometry": {"blocks_per_plane": 16}})
    assert a == b and a.geometry.blocks_per_plane == 16 and a.derive().lines == 16
    d = a.derive()
    assert d.kv_lines == 4              # femu-bbssd sets 25 % of the lines aside for KV
    # 7 % OP of the 12 host lines is too little slack for GC: capped at host - 3 lines
    assert d.user_pages == (d.lines - d.kv_lines - 3) * d.pages_per_line


def test_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[device\nx = 1\n")
    with pytest.raises(ProfileError, match=r"^profile bad.toml: ") as e:
        load_profile(bad)
    assert "\n" not in str(e.value)
    missing = tmp_path / "m.toml"
    missing.write_text((PROFILE_DIR / "instinfer.toml").read_text().replace("tR_ns = 40000", ""))
    with pytest.raises(ProfileError, match=r"\[timing\] missing required key 'tR_ns'"):
        load_profile(missing)
    extra = tmp_path / "e.toml"
    extra.write_text((PROFILE_DIR / "instinfer.toml").read_text() + "\n[flash]\ntR_ns = 1\n")
    with pytest.raises(ProfileError, match=r"unknown section \[flash\]"):
        load_profile(extra)
    with pytest.raises(ProfileError, match="no such profile"):
        load_profile("no-such-drive")


def test_json_round_trip(tmp_path):
    p = load_profile("nvmevirt-970pro", {"faults.seed": 7})
    f = tmp_path / "p.json"
    f.write_text(p.to_json())
    q = load_profile(f)
    assert q == p and json.loads(f.read_text())["faults"]["seed"] == 7


def test_kv_dram_budget_is_the_papers_2_gb_and_old_profiles_get_it():
    for name in SHIPPED:
        assert load_profile(name).engine.kv_dram_bytes == 2 << 30     # InstInfer paper: 2 GB
    assert load_profile("instinfer", {"engine.kv_dram_bytes": 1 << 26}).engine.kv_dram_bytes == 1 << 26
    # A device.json written before the key existed still loads, with the paper's budget.
    raw = json.loads(load_profile("femu-bbssd").to_json())
    del raw["engine"]["kv_dram_bytes"]
    from csdemu.drive.profile import profile_from_dict
    assert profile_from_dict(raw, name="old").engine.kv_dram_bytes == 2 << 30


# ------------------------------------------------------------ capacity and extends (issue 20)
def test_capacity_resolves_to_whole_lines():
    from csdemu.drive.profile import load_profile
    p = load_profile("instinfer", {"device.capacity": "1T"})
    g, d = p.geometry, p.derive()
    line = g.channels * g.ways * g.planes * g.pages_per_block * g.page_bytes
    assert g.blocks_per_plane == (1 << 40) // line and d.raw_bytes == 1 << 40
    odd = load_profile("instinfer", {"device.capacity": line * 3 + 1})     # rounds up
    assert odd.geometry.blocks_per_plane == 4
    assert load_profile("instinfer", {"device.capacity": "1.5G"}).derive().raw_bytes >= 3 << 29


@pytest.mark.parametrize("over, msg", [
    ({"device.capacity": "2X"}, "capacity must be bytes or a size like 2T, got '2X'"),
    ({"device.capacity": -5}, "capacity must be positive"),
    ({"device.capacity": "1T", "geometry.blocks_per_plane": 4},
     "give device.capacity or geometry.blocks_per_plane, not both"),
])
def test_bad_capacity_is_one_line_naming_it(over, msg):
    from csdemu.drive.profile import ProfileError, load_profile
    with pytest.raises(ProfileError, match=msg):
        load_profile("instinfer", over)


def test_a_profile_extends_a_base_and_changes_what_differs(tmp_path):
    from csdemu.drive.profile import ProfileError, load_profile
    base = load_profile("instinfer")
    f = tmp_path / "mine.toml"
    f.write_text('extends = "instinfer"\n[device]\ndescription = "mine"\ncapacity = "64G"\n'
                 '[timing]\ntR_ns = 12345\n')
    p = load_profile(str(f))
    assert p.name == "mine" and p.device.description == "mine" and p.timing.tR_ns == 12345
    assert p.timing.tPROG_ns == base.timing.tPROG_ns and p.engine == base.engine
    assert p.derive().raw_bytes == 64 << 30
    child = tmp_path / "child.toml"                      # a base given by path, two levels
    child.write_text('extends = "mine.toml"\n[timing]\ntPROG_ns = 1000000\n')
    c = load_profile(str(child))
    assert c.timing.tR_ns == 12345 and c.timing.tPROG_ns == 1_000_000
    loop = tmp_path / "loop.toml"
    loop.write_text('extends = "loop.toml"\n')
    with pytest.raises(ProfileError, match="loops back on itself"):
        load_profile(str(loop))
    (tmp_path / "nobase.toml").write_text('extends = "no-such-profile"\n')
    with pytest.raises(ProfileError, match="no such profile"):
        load_profile(str(tmp_path / "nobase.toml"))
