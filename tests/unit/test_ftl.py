"""The block FTL through FlashNamespace, checked against a dict model.
User streams are in test_ftl_streams.py, the one-call read in test_read_into.py."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csdemu.drive.flash import FlashNamespace
from csdemu.drive.namespace import Request
from tests.naive_ftl import (DictFTL, Host, blob, profile, rw_cmd, scratch_dir, tiny_profile,
                             tmp_path)  # noqa: F401  (tmp_path: tmpfs data dirs)
from nvme_cmds.logs import FLASH_LOG
from nvme_cmds.opcodes import NvmOpcode
from nvme_cmds.status import Status

W, R = NvmOpcode.WRITE, NvmOpcode.READ


def check_all(host, model, step=16):
    for lba in range(0, model.nlbas, step):
        n = min(step, model.nlbas - lba)
        r = host.read(lba, n)
        assert r.status == Status.SUCCESS
        assert bytes(r.data) == model.read(lba, n), f"LBAs {lba}..{lba + n - 1} differ"


# ---------------------------------------------------------------- property test

ops = st.lists(st.one_of(
    st.tuples(st.just("w"), st.integers(0, 10_000), st.integers(1, 16)),
    st.tuples(st.just("w"), st.integers(0, 10_000), st.integers(1, 16)),
    st.tuples(st.just("w"), st.integers(0, 10_000), st.integers(1, 16)),
    st.tuples(st.just("t"), st.integers(0, 10_000), st.integers(1, 24)),
    st.tuples(st.just("r"), st.integers(0, 10_000), st.integers(1, 16)),
    st.tuples(st.just("f"), st.just(0), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0), st.just(0)),
    st.tuples(st.just("crash"), st.just(0), st.just(0)),
), min_size=20, max_size=90)


@settings(max_examples=40, deadline=None)
@given(seq=ops, policy=st.sampled_from(["greedy", "cost-benefit"]))
def test_ftl_matches_dict_model(seq, policy):
    with scratch_dir() as d:
        _run_model(d, seq, policy)


def _run_model(d, seq, policy):
    prof = tiny_profile(gc__policy=policy)
    ns = FlashNamespace(1, prof, d, sync_before_erase=False)
    host, model = Host(ns), DictFTL(ns.nlbas, ns.lba_size)
    # two full passes over the namespace write more than the raw flash: GC runs
    for v in (0, 1):
        for lba in range(0, ns.nlbas, 64):
            n = min(64, ns.nlbas - lba)
            host.write(lba, blob(lba, n, v))
            model.write(lba, blob(lba, n, v))
    assert ns.stats()["gc_runs"] > 0
    version = 2
    for op, a, n in seq:
        lba = a % ns.nlbas
        n = min(n, ns.nlbas - lba)
        if op == "w":
            data = blob(lba, n, version)
            version += 1
            assert host.write(lba, data).status == Status.SUCCESS
            model.write(lba, data)
        elif op == "t":
            assert host.trim([(lba, n)]).status == Status.SUCCESS
            model.trim(lba, n)
        elif op == "r":
            r = host.read(lba, n)
            assert r.status == Status.SUCCESS and bytes(r.data) == model.read(lba, n)
        elif op == "f":
            host.flush()
            model.flush()
        elif op == "reopen":
            ns.close()
            model.flush()                    # a clean close is a flush
            ns = FlashNamespace(1, prof, d, sync_before_erase=False)
            host.ns = ns
        else:                                # kill -9: drop everything in memory
            ns.ftl.nand.close()
            either = model.crash()
            ns = FlashNamespace(1, prof, d, sync_before_erase=False)
            host.ns = ns
            for x, allowed in either.items():
                got = bytes(host.read(x, 1).data)
                assert got in allowed, f"LBA {x}: an older version came back after a crash"
                model.settle(x, got)
    check_all(host, model)
    s = ns.stats()
    assert s["valid_pages"] == s["mapped_lpns"] == len(model.data)
    ns.close()


# ---------------------------------------------------------------- GC under pressure

@pytest.mark.parametrize("policy", ["greedy", "cost-benefit"])
def test_gc_at_90_percent_fill(tmp_path, policy):
    ns = FlashNamespace(1, profile(gc__policy=policy), tmp_path, sync_before_erase=False)
    host, model = Host(ns), DictFTL(ns.nlbas, ns.lba_size)
    fill = int(ns.nlbas * 0.9)
    for lba in range(0, fill, 32):
        n = min(32, fill - lba)
        host.write(lba, blob(lba, n, 0))
        model.write(lba, blob(lba, n, 0))
    rng = np.random.default_rng(1)
    before = ns.stats()
    written, version = 0, 1
    while written < 3 * ns.nlbas:
        lba = int(rng.integers(0, fill))
        n = int(min(rng.integers(1, 5), fill - lba))
        data = blob(lba, n, version)
        version += 1
        assert host.write(lba, data).status == Status.SUCCESS
        model.write(lba, data)
        written += n
        if version % 500 == 0:
            x = int(rng.integers(0, fill - 8))
            assert bytes(host.read(x, 8).data) == model.read(x, 8)
    check_all(host, model, step=32)
    s = ns.stats()
    host_w = s["host_pages_written"] - before["host_pages_written"]
    nand_w = s["nand_pages_written"] - before["nand_pages_written"]
    assert s["gc_runs"] > 10 and s["gc_pages_copied"] > 0
    assert nand_w / host_w > 1.0
    assert s["erases"] > 0 and s["pe_max"] >= 1
    assert s["free_lines"] >= 1
    assert s["valid_pages"] == fill
    ns.close()


# ---------------------------------------------------------------- NVMe fields

@pytest.fixture
def ns(tmp_path):
    n = FlashNamespace(1, profile(), tmp_path)
    yield n
    n.close()


def test_reserved_bits_and_ranges(ns):
    data = blob(0, 1, 0)
    assert ns.process_io(rw_cmd(W, 0, 1, data=data, cdw12_extra=1 << 20)).status == Status.INVALID_FIELD
    assert ns.process_io(rw_cmd(R, 0, 1, cdw12_extra=1 << 26)).status == Status.INVALID_FIELD
    assert ns.process_io(rw_cmd(R, ns.nlbas - 1, 2)).status == Status.LBA_OUT_OF_RANGE
    assert ns.process_io(rw_cmd(R, 1 << 40, 1)).status == Status.LBA_OUT_OF_RANGE
    assert ns.process_io(rw_cmd(W, 0, 2, data=data)).status == Status.INVALID_FIELD    # short data
    assert ns.process_io(rw_cmd(R, ns.nlbas - 1, 1, cdw12_extra=1 << 31)).status == Status.SUCCESS
    assert ns.process_io(Request(0x05, 1, (0,) * 6, 0)).status == Status.INVALID_OPCODE
    dsm = Request(int(NvmOpcode.DATASET_MANAGEMENT), 1, (0, 1 << 3 | 4, 0, 0, 0, 0), 0,
                  memoryview(bytes(16)))
    assert ns.process_io(dsm).status == Status.INVALID_FIELD
    dsm_short = Request(int(NvmOpcode.DATASET_MANAGEMENT), 1, (1, 4, 0, 0, 0, 0), 0,
                        memoryview(bytes(16)))
    assert ns.process_io(dsm_short).status == Status.INVALID_FIELD


def test_unwritten_trimmed_and_zeroed_read_zero(ns):
    host = Host(ns)
    assert bytes(host.read(10, 4).data) == bytes(4 * 4096)
    host.write(0, blob(0, 64, 1))
    assert host.trim([(3, 2), (40, 5)]).status == Status.SUCCESS
    assert host.zeroes(20, 3).status == Status.SUCCESS
    got = bytes(host.read(0, 64).data)
    exp = bytearray(blob(0, 64, 1))
    for lo, n in ((3, 2), (40, 5), (20, 3)):
        exp[lo * 4096:(lo + n) * 4096] = bytes(n * 4096)
    assert got == bytes(exp)
    out = Host(ns).trim([(ns.nlbas - 1, 2)])
    assert out.status == Status.LBA_OUT_OF_RANGE
    assert host.trim([(0, 64)], ad=False).status == Status.SUCCESS      # no AD: no-op
    assert bytes(host.read(0, 1).data) == blob(0, 1, 1)


def test_timing_of_commands(ns):
    p = ns.profile
    host = Host(ns)
    host.now = 10_000_000
    r = host.write(0, blob(0, 8, 0))
    t = p.timing
    # early completion: firmware + PCIe transfer, no tPROG
    assert r.done_ns - 10_000_000 < t.tPROG_ns
    rf = host.write(8, blob(8, 8, 0), fua=True)
    assert rf.done_ns - host.now > t.tPROG_ns
    host.now = 50_000_000
    rr = host.read(0, 1)
    lat = rr.done_ns - 50_000_000
    assert lat >= t.fw_read_4k_ns + t.tR_ns
    assert lat < t.fw_read_4k_ns + t.tR_ns + 20_000
    fl = host.flush()
    assert fl.done_ns >= 50_000_000


def test_log_pages_and_health(ns):
    host = Host(ns)
    host.write(0, blob(0, 32, 0))
    host.read(0, 32)
    log = np.frombuffer(ns.log_page(0xC0), FLASH_LOG)[0]
    assert log["host_pages_written"] == 32 and log["nchannels"] == ns.profile.geometry.channels
    assert log["total_lines"] == ns.profile.derive().lines
    assert log["channel_busy_ns"][:4].sum() > 0
    h = ns.health()
    assert h["percentage_used"] == 0 and h["available_spare"] == 100 and h["media_errors"] == 0
    assert len(ns.log_page(0x02)) == 512 and ns.log_page(0x7F) is None
    idf = ns.identify()
    assert len(idf) == 4096 and int.from_bytes(idf[0:8], "little") == ns.nlbas


# ---------------------------------------------------------------- faults

def test_program_failures_are_remapped(tmp_path):
    ns = FlashNamespace(1, profile(faults__program_fail_every=37), tmp_path)
    host, model = Host(ns), DictFTL(ns.nlbas, ns.lba_size)
    for i in range(40):
        lba = (i * 29) % (ns.nlbas - 16)
        data = blob(lba, 16, i)
        assert host.write(lba, data).status == Status.SUCCESS
        model.write(lba, data)
    check_all(host, model)
    s = ns.stats()
    assert s["program_failures"] >= 10 and s["bad_blocks"] >= 1
    ns.close()
    ns = FlashNamespace(1, profile(), tmp_path)     # bad blocks persist
    assert ns.stats()["bad_blocks"] == s["bad_blocks"]
    check_all(Host(ns), model)
    ns.close()


def test_read_failures_never_return_data(ns):
    host = Host(ns)
    host.write(0, blob(0, 16, 0))
    ns.set_fault_injection(read_fail_every=5)
    statuses = [host.read(i, 1) for i in range(10)]
    bad = [r for r in statuses if r.status != Status.SUCCESS]
    assert len(bad) == 2
    assert all(r.status == Status.UNRECOVERED_READ_ERROR and r.data is None for r in bad)
    assert all(bytes(r.data) == blob(i, 1, 0) for i, r in enumerate(statuses) if r.status == 0)
    assert ns.health()["media_errors"] == 2
    ns.set_fault_injection(read_fail_every=0, read_fail_ppm=1_000_000)
    assert host.read(0, 1).status == Status.UNRECOVERED_READ_ERROR
    ns.set_fault_injection(read_fail_ppm=0)
    assert bytes(host.read(0, 16).data) == blob(0, 16, 0)


def test_factory_bad_blocks_and_rates_are_reproducible(tmp_path):
    a = FlashNamespace(1, profile(faults__bad_block_ppm=50_000, faults__seed=3), tmp_path / "a")
    b = FlashNamespace(1, profile(faults__bad_block_ppm=50_000, faults__seed=3), tmp_path / "b")
    assert (a.ftl.nand.bad == b.ftl.nand.bad).all() and a.stats()["bad_blocks"] > 0
    host, model = Host(a), DictFTL(a.nlbas, a.lba_size)
    for i in range(0, a.nlbas - 8, 8):
        host.write(i, blob(i, 8, 0))
        model.write(i, blob(i, 8, 0))
    check_all(host, model)
    a.close()
    b.close()


# ---------------------------------------------------------------- other layouts

def test_small_lbas_read_modify_write(tmp_path):
    ns = FlashNamespace(1, profile(device__lba_size=512), tmp_path)
    host, model = Host(ns), DictFTL(ns.nlbas, 512)
    assert ns.nlbas == ns.profile.derive().user_pages * 8
    rng = np.random.default_rng(0)
    for v in range(200):
        lba = int(rng.integers(0, 400))
        n = int(rng.integers(1, 20))
        data = blob(lba, n, v, 512)
        assert host.write(lba, data).status == Status.SUCCESS
        model.write(lba, data)
        if v % 7 == 0:
            host.zeroes(lba + 1, 11)
            model.trim(lba + 1, 11)
        if v % 11 == 0:
            host.trim([(lba, 9)])
            model.trim(lba, 9)
    for lba in range(0, 440, 13):
        assert bytes(host.read(lba, 13).data) == model.read(lba, 13)
    ns.close()


def test_large_flash_pages(tmp_path):
    """nvmevirt-970pro: 8 x 4 KiB pages per 32 KiB flash page."""
    prof = profile("nvmevirt-970pro", geometry__pages_per_block=64, geometry__blocks_per_plane=8,
                   geometry__channels=2)
    ns = FlashNamespace(1, prof, tmp_path, sync_before_erase=False)
    host, model = Host(ns), DictFTL(ns.nlbas, ns.lba_size)
    rng = np.random.default_rng(2)
    for v in range(3 * ns.nlbas // 8):
        lba = int(rng.integers(0, ns.nlbas - 8))
        data = blob(lba, 8, v)
        host.write(lba, data)
        model.write(lba, data)
    check_all(host, model)
    assert ns.stats()["gc_runs"] > 0
    # 8 pages written together sit in at most 2 flash pages: at most 2 tR, not 8
    host.write(0, blob(0, 8, 99))
    host.flush()
    host.now = ns.ftl.clocks.next_idle_ns() + 1
    busy0 = int(ns.ftl.clocks.lun_busy.sum())
    r = host.read(0, 8)
    assert bytes(r.data) == blob(0, 8, 99)
    sensed = int(ns.ftl.clocks.lun_busy.sum()) - busy0
    assert sensed in (prof.timing.tR_ns, 2 * prof.timing.tR_ns)
    ns.close()


def test_write_cache_off_means_write_through(ns):
    host = Host(ns)
    host.now = 1_000_000
    ns.set_write_cache(False)
    r = host.write(0, blob(0, 4, 0))
    assert r.done_ns - 1_000_000 > ns.profile.timing.tPROG_ns
    ns.set_write_cache(True)
    host.now = r.done_ns + 10_000_000
    r2 = host.write(8, blob(8, 4, 0))
    assert r2.done_ns - host.now < ns.profile.timing.tPROG_ns


def test_stats_are_json(ns):
    import json
    Host(ns).write(0, blob(0, 4, 0))
    s = json.loads(json.dumps(ns.stats()))
    assert s["host_pages_written"] == 4 and s["waf"] == 1.0
    assert len(s["channel_busy_ns"]) == ns.profile.geometry.channels


def test_bench_runs(tmp_path):
    from csdemu.bench.flash import run_flash_bench
    out = run_flash_bench("instinfer", tmp_path, seq_bytes=2 << 20, rand_ios=300, qd=8,
                          waf_overwrite=0.5, overrides={"geometry.channels": 4, "geometry.ways": 2,
                                                        "geometry.blocks_per_plane": 16,
                                                        "geometry.pages_per_block": 32})
    for k in ("seq_write", "seq_read", "rand_write_4k", "rand_read_4k"):
        assert out[k]["wall_mbps"] > 0 and out[k]["modeled_mbps"] > 0
    assert out["realtime_factor_seq_read"] > 0
    assert out["waf_random_overwrite_90pct"]["waf"] >= 1.0
