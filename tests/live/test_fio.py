"""fio through nbdkit into csdemu: data verified with GC running, and the NBD
plugin's operations (read, write, FUA, flush, trim, zero, unaligned I/O)."""
import importlib.util
import inspect
import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from tests import ROOT


def _have_nbdkit_python() -> bool:
    if not (shutil.which("fio") and shutil.which("nbdkit")):
        return False
    r = subprocess.run(["nbdkit", "python", "--dump-plugin"], capture_output=True)
    return r.returncode == 0


needs_fio = pytest.mark.skipif(not _have_nbdkit_python(),
                               reason="fio, nbdkit and nbdkit-plugin-python are needed (make apt)")

# 8 ch x 2 ways x 16 lines x 64 pages x 4 KiB = 64 MiB raw, 52 MiB user: the
# 90 % fill plus a random overwrite pass forces GC within seconds.
SMALL = ["--set", "geometry.ways=2", "--set", "geometry.blocks_per_plane=16",
         "--set", "geometry.pages_per_block=64", "--set", "device.kv_pct=0", "--poll-idle-us", "2000"]


@pytest.fixture(scope="module")
def small_daemon():
    from csdemu.host.spawn import DaemonProcess
    d = DaemonProcess(extra_args=SMALL).start()
    yield d
    d.cleanup()


@needs_fio
def test_fio_verify_at_90pct_fill_with_gc(small_daemon, tmp_path):
    from csdemu.bench.fio import runner as run_fio
    summary = run_fio.run_jobs(small_daemon.socket_path, ["verify"], str(tmp_path), runtime=5,
                               echo=lambda *a: None)
    job = summary["jobs"]["verify"]
    text = (tmp_path / "verify.json").read_text()
    fio = json.loads(text[text.index("{"):])       # fio may print a line before its JSON
    assert job["fio_rc"] == 0, job
    jobs = {j["jobname"]: j for j in fio["jobs"]}
    assert set(jobs) == {"fill", "overwrite"}
    for j in jobs.values():
        assert j["error"] == 0                    # verify_fatal=1: a mismatch sets error
        assert j["write"]["total_ios"] > 0
        assert j["read"]["total_ios"] > 0         # the verify pass read everything back
    # the verify pass read back as many bytes as the job wrote
    ow = jobs["overwrite"]
    assert ow["read"]["io_bytes"] == ow["write"]["io_bytes"]
    flash = job["deltas"]["flash"]
    assert flash["gc_runs"] > 0 and flash["gc_pages_copied"] > 0, flash
    assert flash["waf"] > 1.0
    assert job["ok"] and summary["ok"]


@needs_fio
def test_fio_two_connections_verify(small_daemon, tmp_path):
    """numjobs=2: two NBD connections writing disjoint regions at once, verified."""
    from csdemu.nbd.server import NbdServer
    job = tmp_path / "mc.fio"
    job.write_text("[global]\nioengine=nbd\nuri=${NBD_URI}\nbs=4k\niodepth=4\nsize=4m\n"
                   "offset_increment=8m\nverify=crc32c\nverify_fatal=1\nverify_state_save=0\n"
                   "[mc]\nrw=randwrite\nnumjobs=2\n")
    with NbdServer(small_daemon.socket_path) as srv:
        r = subprocess.run(["fio", "--output-format=json", str(job)], capture_output=True, text=True,
                           env=dict(os.environ, NBD_URI=srv.uri), timeout=120)
        assert r.returncode == 0, r.stderr + srv.log_text()[-2000:]
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert len(out["jobs"]) == 2
    for j in out["jobs"]:
        assert j["error"] == 0 and j["read"]["io_bytes"] == 4 << 20


# ------------------------------------------------------------ the plugin itself
class _FakeNbdkit(types.ModuleType):
    THREAD_MODEL_PARALLEL = 3
    FUA_NATIVE = 2
    CACHE_NONE = 0
    FLAG_MAY_TRIM, FLAG_FUA, FLAG_REQ_ONE, FLAG_FAST_ZERO = 1, 2, 4, 8

    def __init__(self):
        super().__init__("nbdkit")
        self.errors = []

    def set_error(self, err):
        self.errors.append(err)

    @staticmethod
    def parse_size(s):
        return int(s)


@pytest.fixture
def plugin(small_daemon, monkeypatch):
    """csdemu/nbd/plugin.py loaded as nbdkit would, with a stand-in nbdkit module."""
    fake = _FakeNbdkit()
    monkeypatch.setitem(sys.modules, "nbdkit", fake)
    spec = importlib.util.spec_from_file_location("csdemu_nbd_plugin_under_test",
                                                  os.path.join(ROOT, "csdemu", "nbd", "plugin.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.config("socket", small_daemon.socket_path)
    mod.config("root", ROOT)
    mod.config_complete()
    h = mod.open(False)
    yield mod, h, fake
    mod.close(h)


def test_plugin_capabilities(plugin):
    mod, h, fake = plugin
    assert mod.API_VERSION == 2
    assert mod.thread_model() == fake.THREAD_MODEL_PARALLEL
    assert mod.can_fua(h) == fake.FUA_NATIVE
    assert mod.can_flush(h) and mod.can_trim(h) and mod.can_zero(h) and mod.can_multi_conn(h)
    assert mod.get_size(h) > 0 and mod.get_size(h) % 4096 == 0


def test_plugin_read_write_fua_flush_trim_zero(plugin):
    mod, h, fake = plugin
    rng = np.random.default_rng(1)
    data = bytearray(rng.integers(0, 256, 3 * 4096, dtype=np.uint8).tobytes())
    mod.pwrite(h, data, 8192, 0)
    buf = bytearray(len(data))
    mod.pread(h, buf, 8192, 0)
    assert buf == data
    # FUA reaches the NVMe Write as CDW12 bit 30
    seen = []
    for lane in h.lanes:                           # whichever lane the request borrows
        def spy(*a, orig=lane.q.submit, **kw):     # fields by name, however they are passed
            args = inspect.signature(orig).bind(*a, **kw).arguments
            seen.append((args["opc"], args.get("cdw12", 0)))
            return orig(*a, **kw)
        lane.q.submit = spy
    mod.pwrite(h, bytearray(4096), 0, fake.FLAG_FUA)
    mod.flush(h, 0)
    for lane in h.lanes:
        del lane.q.submit
    assert seen[0][0] == 0x01 and seen[0][1] & (1 << 30)
    assert seen[1][0] == 0x00                      # Flush
    # unaligned write and read (read-modify-write of the edge blocks)
    mod.pwrite(h, bytearray(b"x" * 100), 8192 + 4000, 0)
    expect = bytearray(data)
    expect[4000:4100] = b"x" * 100
    mod.pread(h, buf, 8192, 0)
    assert buf == expect
    small = bytearray(10)
    mod.pread(h, small, 8192 + 4095, 0)
    assert small == expect[4095:4105]
    # zero: whole blocks by Write Zeroes, a partial head block by read-modify-write
    mod.zero(h, 4096 + 96, 8192 + 4000, 0)
    mod.pread(h, buf, 8192, 0)
    expect[4000:4000 + 4096 + 96] = bytes(4096 + 96)
    assert buf == expect
    # trim deallocates whole blocks: they read back as zeros
    mod.trim(h, 4096, 8192, 0)
    mod.pread(h, buf, 8192, 0)
    expect[0:4096] = bytes(4096)
    assert buf == expect
    # beyond the end: an error, not a crash
    with pytest.raises(RuntimeError, match="LBA_OUT_OF_RANGE"):
        mod.pread(h, bytearray(4096), mod.get_size(h), 0)
    assert fake.errors


def test_plugin_threads_share_few_lanes(plugin):
    """More threads than lanes: requests wait for a free lane; data stays right."""
    import threading
    mod, _, fake = plugin
    mod.config("lanes", "2")
    try:
        h = mod.open(False)
    finally:
        mod.config("lanes", "15")
    errors = []

    def worker(k):
        try:
            rng = np.random.default_rng(k)
            for i in range(40):
                off = (k * 64 + i % 16) * 4096
                data = bytearray(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
                mod.pwrite(h, data, off, 0)
                back = bytearray(4096)
                mod.pread(h, back, off, 0)
                assert back == data, (k, i)
        except BaseException as exc:             # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert not errors, errors
        assert len(h.lanes) == 2 and len(h.pool) == 2
    finally:
        mod.close(h)


@needs_fio
def test_nbdkit_runs_on_its_cpus(small_daemon, tmp_path):
    """`csdemu nbd --cpus` / NbdServer(cpus=): nbdkit and the workers it
    starts run only there, and it serves."""
    from csdemu.bench.fio import runner as run_fio
    from csdemu.nbd.server import NbdServer
    cpu = sorted(os.sched_getaffinity(0))[0]
    with NbdServer(small_daemon.socket_path, cpus={cpu}) as srv:
        from csdemu.drive.cpus import thread_affinities
        assert all(a == {cpu} for a in thread_affinities(srv.proc.pid))
        rc, data, err = run_fio.run_fio(os.path.join(ROOT, "csdemu", "bench", "fio", "randread.fio"),
                                        srv.uri, str(tmp_path / "r.json"), 1)
        assert rc == 0, err[-500:]
        assert data["jobs"][0]["read"]["total_ios"] > 0


@needs_fio
def test_fio_bench_reports_default_and_pinned_pairs():
    """csdemu/bench/fio.py at its smallest: both comparisons are measured and
    reported, and the pinned one keeps the daemon off nbdkit's CPUs."""
    from csdemu.bench.fio.bench import run_fio_bench
    res = run_fio_bench(seconds=1, rounds=1, read_only=True)
    pinned = len(os.sched_getaffinity(0)) >= 2      # the pinned pair needs two CPUs
    assert ("pinned_cpus" in res) == pinned
    for key in ("randread", "pinned_randread")[:1 + pinned]:
        assert res[f"{key}_4k_qd8_iops_csdemu"] > 0 and res[f"{key}_4k_qd8_iops_bytearray"] > 0
        assert res[f"{key}_cpu_csdemu"]["daemon_us_per_io"] > 0
    if pinned:
        from csdemu.drive.cpus import parse_cpu_list
        cpus = res["pinned_cpus"]
        assert not parse_cpu_list(cpus["daemon"]) & parse_cpu_list(cpus["nbdkit"])


# IOPS the stand-in fio reports per randread round, by server.
_CANNED_IOPS = {"csdemu": [30_000.0, 36_000.0], "bytearray": [40_000.0, 45_000.0]}


@needs_fio
def test_fio_bench_ratios_from_known_iops(monkeypatch):
    """The bench's figures from fio results known by hand: real daemon and
    nbdkit servers, fio replaced by a stand-in whose IOPS are fixed per server
    and round. Best csdemu 36 000 / best bytearray 45 000 = 0.8; rounds
    30/40 = 0.75 and 36/45 = 0.8, median 0.775; p50 25 us."""
    from csdemu.bench.fio import runner
    from csdemu.bench.fio.bench import run_fio_bench
    from csdemu.nbd.server import NbdServer
    kinds, calls = {}, {}
    init = NbdServer.__init__

    def spy_init(self, daemon_socket, *a, **kw):
        init(self, daemon_socket, *a, **kw)
        plugin = os.path.basename(str(kw.get("plugin", "")))
        kinds[self.uri] = ("csdemu" if daemon_socket else
                           "bytearray" if plugin == "bytearray_plugin.py" else "other")

    def fake_fio(jobfile, uri, out_json, runtime=10, *a, **kw):
        job = os.path.basename(jobfile)[:-4]
        n = calls[(uri, job)] = calls.get((uri, job), -1) + 1
        iops = _CANNED_IOPS.get(kinds[uri], [50_000.0] * 8)[n % 2] if job == "randread" else 1000.0
        side = {"iops": iops, "total_ios": int(iops * runtime),
                "clat_ns": {"percentile": {"50.000000": 25_000, "99.000000": 90_000}}}
        idle = {"iops": 0.0, "total_ios": 0, "clat_ns": {"percentile": {}}}
        rw = (side, idle) if job == "randread" else (idle, side)
        return 0, {"jobs": [{"jobname": job, "error": 0, "read": rw[0], "write": rw[1]}]}, ""

    monkeypatch.setattr(NbdServer, "__init__", spy_init)
    monkeypatch.setattr(runner, "run_fio", fake_fio)
    res = run_fio_bench(seconds=1, rounds=2, read_only=True)
    pinned = len(os.sched_getaffinity(0)) >= 2
    for key in ("randread", "pinned_randread")[:1 + pinned]:
        assert res[f"{key}_4k_qd8_iops_csdemu"] == 36_000.0
        assert res[f"{key}_4k_qd8_iops_bytearray"] == 45_000.0
        assert res[f"{key}_ratio_csdemu_over_bytearray"] == 0.8
        assert res[f"{key}_ratio_rounds"] == [0.75, 0.8]
        assert res[f"{key}_ratio_median"] == 0.775
        assert res[f"{key}_p50_us_csdemu"] == res[f"{key}_p50_us_bytearray"] == 25.0
    if pinned:
        assert res["pinned_gain_csdemu"] == res["pinned_gain_bytearray"] == 1.0
