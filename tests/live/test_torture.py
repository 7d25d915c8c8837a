"""The CI-sized torture suite (tools/torture/, `make torture` for the full size).

Hypothesis drives structured SQEs through a real daemon's shared-memory rings;
the other parts run the same code as the full run at small sizes and write
bench/results/torture/ci.json. The last tests reproduce bugs the suite found
in other modules (see docs/torture.md, "Findings").
"""
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import csdemu
from nvme_cmds.status import Status
from tests import ROOT
from tools.torture.common import DEFINED_STATUSES, field_status, small_daemon
from tools.torture.fuzz import FuzzTarget, Gen
from tools.torture.run import failures, run_all, write_results
from nvme_cmds.opcodes import AdminOpcode, NvmOpcode, VendorAdminOpcode, VendorIoOpcode

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.one_of(st.sampled_from([0, 1, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF]), st.integers(0, 2**32 - 1))
u64 = st.one_of(st.sampled_from([0, 4096, 1 << 47, 2**64 - 1]), st.integers(0, 2**64 - 1))
IO_OPCODES = st.one_of(st.sampled_from([int(o) for o in NvmOpcode] + [int(o) for o in VendorIoOpcode]), u8)
ADMIN_OPCODES = st.one_of(st.sampled_from([int(o) for o in AdminOpcode]
                                          + [int(o) for o in VendorAdminOpcode if o != VendorAdminOpcode.DMA_MAP]), u8)


@st.composite
def sqe_fields(draw, opcodes):
    return dict(opc=draw(opcodes), flags=draw(st.sampled_from([0, 0x40, 0x01, 0x04, 0x80, 0xC0]) | u8),
                nsid=draw(st.sampled_from([0, 1, 2, 3, 0xFFFFFFFF]) | u32), cdw2=draw(u32), cdw3=draw(u32),
                mptr=draw(u64), prp1=draw(u64), prp2=draw(u64),
                c10=draw(u32), c11=draw(u32), c12=draw(st.integers(0, 15) | u32), c13=draw(u32),
                c14=draw(u32), c15=draw(u32))


@pytest.fixture(scope="module")
def target():
    d = small_daemon().start()
    t = FuzzTarget(11, daemon=d)
    yield t
    t.close()
    d.cleanup()


def _assert_clean(t: FuzzTarget):
    s = t.stats
    assert (s.crashes, s.hangs, s.undefined, s.bogus, s.isolation) == (0, 0, 0, 0, 0), s.as_dict()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(sqe_fields(IO_OPCODES), min_size=1, max_size=24), data=st.data())
def test_hypothesis_io_sqes_always_complete_with_defined_status(target, batch, data):
    g: Gen = target.io_gen
    sqes = []
    for f in batch:
        e = g.sqe(f.pop("opc"), f.pop("flags"), None, f.pop("nsid"), f.pop("cdw2"), f.pop("cdw3"),
                  f.pop("mptr"), f.pop("prp1"), f.pop("prp2"), **f)
        if data.draw(st.booleans()):           # or a point in valid-command space, mutated
            e = g.mutate(g.io_valid())
        sqes.append(g.safe_io(e))
    assert target.run_io_batch(sqes)
    _assert_clean(target)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(sqe_fields(ADMIN_OPCODES), min_size=1, max_size=12))
def test_hypothesis_admin_sqes_always_complete_with_defined_status(target, batch):
    g: Gen = target.adm_gen
    sqes = [g.sqe(f.pop("opc"), f.pop("flags"), None, f.pop("nsid"), f.pop("cdw2"), f.pop("cdw3"),
                  f.pop("mptr"), f.pop("prp1"), f.pop("prp2"), **f) for f in batch]
    sqes = [g.dma_map_sqe(e) if e[0] == VendorAdminOpcode.DMA_MAP else g.safe_io(e) for e in sqes]
    assert target.run_admin_batch(sqes)
    _assert_clean(target)
    assert target.control_data_intact()


def test_ring_abuse_does_not_hurt_others(target):
    for _ in range(15):
        target.ring_abuse_round()
    assert target.stats.ring_failures == 0 and target.daemon_alive()
    assert target.control_data_intact()


@pytest.fixture(scope="module")
def ci_run():
    """The CI size of `make torture` (every part but the soak), once."""
    res = run_all("ci", seed=int(os.environ.get("TORTURE_SEED", "12345")), log=lambda m: None)
    write_results(res, "ci")
    return res


def test_ci_fuzz(ci_run):
    f = ci_run["fuzz"]
    assert f["commands"] >= 20_000
    assert (f["crashes"], f["hangs"], f["undefined_status"], f["bogus_completions"]) == (0, 0, 0, 0), f["examples"]
    assert f["isolation_violations"] == 0 and f["others_kv_data_intact"] and f["ring_abuse_failures"] == 0
    # A compile inside a command stalls every client for seconds (make install's
    # `python -m csdemu.cli.warmup` must have cached every path the daemon runs).
    assert f["daemon_jit_compiles"] == 0, (f["daemon_jit_seconds"], f["daemon_jit_recent"])


def test_ci_crash_recovery(ci_run):
    c = ci_run["crash"]
    assert c["trials"] == 3 and c["flushed_writes_checked"] > 0
    assert (c["lost"], c["corrupt"], c["cold_bad"], c["restart_failures"]) == (0, 0, 0, 0), c


def test_ci_client_death(ci_run):
    d = ci_run["client_death"]
    assert d["victims"] == 3 and d["not_reclaimed_1s"] == 0 and d["reclaim_ms_max"] < 1000
    assert d["bystander_errors"] == 0 and d["bystander_mismatches"] == 0, d["bystander_error_examples"]
    assert d["sessions_left"] == 0 and d["kv_namespaces_left"] == 0
    assert d["daemon_fds_after"] <= d["daemon_fds_before"]


def test_ci_isolation(ci_run):
    i = ci_run["isolation"]
    assert not i["same_user_failures"]
    if os.geteuid() != 0:
        pytest.skip("second-uid checks need root (to switch to uid 65534)")
    assert i["other_user_attempts"] >= 8 and not i["other_user_opened"], i["other_user"]


def test_ci_media_faults(ci_run):
    m = ci_run["faults"]
    assert m["reads_unrecovered"] > 0 and m["program_failures"] + m["bad_blocks"] > 0
    assert m["wrong_data"] == 0 and m["kv_wrong_data"] == 0 and m["final_mismatches"] == 0, m
    assert m["write_errors"] == 0 and m["reads_other_status"] == 0, m["statuses"]


def test_ci_all_criteria_and_json(ci_run):
    assert failures(ci_run) == []
    path = os.path.join(ROOT, "bench", "results", "torture", "ci.json")
    assert json.load(open(path))["summary"]["fuzz_commands"] >= 20_000


# ---------------------------------------------------------------- findings (bugs in other modules)

def test_recreated_queue_ignores_stale_cq_head_doorbell():
    """csdemu/drive/session.py add_cq does not reset the CQ head doorbell: after
    deleting a deep queue whose head had moved, a new shallower CQ with the
    same qid sees head >= depth, room() is 0 for ever and the queue hangs."""
    with small_daemon() as d, csdemu.connect(d.socket_path) as dev:
        q = dev.create_queue(128)
        for _ in range(100):
            assert q.execute(VendorIoOpcode.NOP).ok
        dev.delete_queue(q)
        q = dev.create_queue(16)                     # same qid, head doorbell still 100
        q.submit(VendorIoOpcode.NOP)
        got = q.reap_until(1, 5.0)
        assert len(got) == 1 and field_status(got[0][5]) == 0, "new queue never completes (stale CQ head doorbell)"


def test_kv_sequences_do_not_starve_the_block_namespace():
    """KV sequences fill whole lines of their own, but only within the
    profile's KV share (device.kv_pct): beyond it appends get Capacity
    Exceeded, and the block namespace keeps all of its capacity."""
    with small_daemon() as d, csdemu.connect(d.socket_path) as dev:
        kv = dev.create_kv_namespace(layers=2, q_heads=2, kv_heads=2, head_dim=64)
        k = np.ones((1, 40, 2, 64), np.float16)
        refused = 0
        for sid in range(15):
            try:
                kv.append(0, [sid], k, k)
            except csdemu.NVMeError as exc:
                assert exc.status == Status.CAPACITY_EXCEEDED
                refused += 1
        assert 0 < refused < 15
        n = dev.identify_ns(1)["nsze"]
        data = np.arange(4096, dtype=np.uint32).view(np.uint8)[:4096]
        for lba in (0, n // 2, n - 1):                 # the whole block namespace is writable
            dev.write(lba, data)
            assert np.array_equal(dev.read(lba, 1), data)


def test_status_codes_the_suite_counts_as_defined():
    assert 0 in DEFINED_STATUSES and 0x281 in DEFINED_STATUSES and 0x2FF not in DEFINED_STATUSES


def test_client_waits_work_with_fds_above_fd_setsize():
    """csdemu/host/queue.py Queue._block waits with select.select(), which raises
    ValueError for a descriptor >= FD_SETSIZE (1024): a client process with
    many open files cannot wait for a completion. (The crash part of the
    torture suite hit it after ~50 trials, when a leaked Device's fds pushed
    new vector fds past 1024.) poll() has no such limit."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    filler = []
    try:
        while len(filler) < 1100 and (not filler or filler[-1] < 1030):
            filler.append(os.open("/dev/null", os.O_RDONLY))
        with small_daemon() as d, csdemu.connect(d.socket_path) as dev:
            assert min(dev.vector_fds) >= 1024
            q = dev.create_queue(4)
            q.submit(VendorIoOpcode.NOP, ring=False)
            with pytest.raises(TimeoutError):       # not rung: blocks, then times out (ValueError today)
                q.wait(1, timeout=0.3)
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
