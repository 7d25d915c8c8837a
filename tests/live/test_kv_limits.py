"""KV limits against a real daemon: no field truncated, device DRAM and
namespaces per client bounded, empty layers are errors, errors name the
field, and shutdown closes KV namespaces cleanly."""
import os
import signal

import numpy as np
import pytest

import csdemu
from csdemu.host.spawn import DaemonProcess
from nvme_cmds import errlog
from nvme_cmds.kv import MAX_KV_NS_PER_CLIENT, AttendMode, attend_cdws
from nvme_cmds.logs import LogPage
from nvme_cmds.opcodes import VendorIoOpcode
from nvme_cmds.status import Status

SMALL = ["--profile", "femu-bbssd", "--set", "geometry.blocks_per_plane=16",
         "--set", "geometry.pages_per_block=64", "--poll-idle-us", "2000"]
BUDGET = 64 << 20                  # device DRAM for group buffers on the test drive
# A sparse namespace whose every sequence needs ~16 MiB of group buffers:
# layers x kv heads x head dim one-dim K-copy pages of 4 KiB, plus K and V tails.
BIG = dict(layers=4, q_heads=8, kv_heads=8, head_dim=128, sparse_layout=True)


@pytest.fixture(scope="module")
def drive():
    d = DaemonProcess(extra_args=SMALL + ["--set", f"engine.kv_dram_bytes={BUDGET}"]).start()
    yield d
    d.cleanup()


@pytest.fixture
def dev(drive):
    with csdemu.connect(drive.socket_path) as device:
        yield device


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024


def one_token(kv, batch=1):
    return np.ones((batch, 1, kv.kv_heads, kv.head_dim), np.float32)


def test_an_append_longer_than_its_field_is_split_not_truncated(dev):
    kv = dev.create_kv_namespace(layers=1, q_heads=1, kv_heads=1, head_dim=1)
    try:
        n = 65_541                      # 65,541 & 0xFFFF = 5
        k = np.arange(n, dtype=np.float32).reshape(1, n, 1, 1) % 2048
        kv.append(0, [1], k, -k)
        rk, rv = kv.read(0, 1, 0, n)
        assert np.array_equal(rk.reshape(-1), k.reshape(-1)) and np.array_equal(rv, -rk)
    finally:
        kv.delete()


def test_out_of_range_layers_and_sparf_fields_are_refused(dev):
    kv = dev.create_kv_namespace(layers=2, q_heads=2, kv_heads=1, head_dim=64, sparse_layout=True)
    try:
        rng = np.random.default_rng(1)
        x = rng.standard_normal((1, 100, 1, 64))
        kv.append(0, [1], x, x)
        q = rng.standard_normal((1, 2, 64)).astype(np.float32)
        for call, field in [(lambda: kv.append(65_537, [1], x, x), "layer 65537"),
                            (lambda: kv.attend(65_536, [1], q), "layer 65536"),
                            (lambda: kv.attend(0, [1], q, sparse=csdemu.SparF(65_544, 8)), "r 65544"),
                            (lambda: kv.attend(0, [1], q, sparse=csdemu.SparF(8, 1 << 32)), "k 4294967296"),
                            (lambda: kv.read(2, 1, 0, 1), "layer 2")]:
            with pytest.raises(ValueError, match=field):
                call()
        # A window past 65,535 is a window, not its low 16 bits: it holds every token.
        dense = kv.attend(0, [1], q).copy()
        wide = kv.attend(0, [1], q, sparse=csdemu.SparF(64, 0, 65_540)).copy()
        assert np.abs(wide - dense).max() < 1e-5
        # The drive refuses the same on the wire and logs which field.
        io = dev.io

        def wire(**cdws):
            c = io.execute(VendorIoOpcode.ATTEND, nsid=kv.nsid, mptr=kv.meta_off, **cdws)
            raw = dev.log_page(LogPage.ERROR_INFO, 256)
            e = errlog.entries(raw)[0]
            assert (int(e["sqid"]), int(e["cid"])) == (c.sqid, c.cid)
            return c.status, errlog.split_location(int(e["param_loc"]))
        assert wire(**attend_cdws(5, 1)) == (Status.INVALID_FIELD, (40, 0))                  # layer
        assert wire(cdw10=1 << 16, cdw11=1, cdw12=65_544, cdw13=8) == (Status.INVALID_FIELD, (50, 0))
        assert wire(**attend_cdws(0, 1, AttendMode.SPARF, 65, 8)) == (Status.INVALID_FIELD, (48, 0))
    finally:
        kv.delete()


def test_errors_name_the_command_and_field(drive, dev):
    kv = dev.create_kv_namespace(layers=2, q_heads=2, kv_heads=2, head_dim=64)
    try:
        kv.append(0, [5], np.ones((1, 3, 2, 64)), np.ones((1, 3, 2, 64)))
        q = np.ones((1, 2, 64), np.float32)
        # A layer the sequence never wrote is an error, not zeros.
        with pytest.raises(csdemu.NVMeError) as e:
            kv.attend(1, [5], q)
        assert e.value.status == Status.DEALLOCATED_OR_UNWRITTEN
        assert (e.value.command, e.value.field) == ("attend", "layer (CDW10[15:0]), sequence #0: "
                                                               "no tokens in this layer")
        with pytest.raises(csdemu.NVMeError) as e:
            kv.attend(0, [5, 6], np.ones((2, 2, 64), np.float32))
        assert e.value.status == Status.INVALID_FIELD
        assert e.value.field == "sequence id #1 (MPTR): no such sequence"
        assert "[sequence id #1 (MPTR): no such sequence]" in str(e.value)
        with pytest.raises(csdemu.NVMeError) as e:
            kv.read(0, 5, 2, 10)
        assert e.value.status == Status.LBA_OUT_OF_RANGE and e.value.field.startswith("count (CDW14)")
        with pytest.raises(csdemu.NVMeError) as e:
            dev.create_kv_namespace(layers=1, q_heads=2, kv_heads=2, head_dim=48)
        assert (e.value.command, e.value.field) == ("create kv namespace",
                                                     "KV_NS_DESC.head_dim: out of range")
        with csdemu.connect(drive.socket_path) as other:
            with pytest.raises(csdemu.NVMeError) as e:
                type(kv)(other, kv.nsid, 2, 2, 2, 64, kv.dtype, False).delete()
            assert (e.value.status, e.value.field) == (Status.ACCESS_DENIED, "NSID")
        # Values beyond float16 are refused before anything is sent.
        with pytest.raises(ValueError, match="k: 128 values overflow float16"):
            kv.append(0, [5], np.full((1, 1, 2, 64), 1e6), np.ones((1, 1, 2, 64)))
        assert np.isfinite(kv.attend(0, [5], q)).all()
    finally:
        kv.delete()


def test_device_dram_is_bounded_by_the_profile(drive, dev):
    warm = dev.create_kv_namespace(**dict(BIG, layers=1))     # the append path's first use
    warm.append(0, [1], one_token(warm), one_token(warm))
    warm.delete()
    kv = dev.create_kv_namespace(**BIG)
    try:
        rss0 = rss_bytes(drive.proc.pid)
        made = []
        with pytest.raises(csdemu.NVMeError) as e:
            for sid in range(1, 10):
                kv.append(0, [sid], one_token(kv), one_token(kv))
                made.append(sid)
        assert e.value.status == Status.CAPACITY_EXCEEDED
        assert "device DRAM budget" in e.value.field
        assert len(made) == 3                              # 3 x ~16 MiB of 64 MiB
        assert rss_bytes(drive.proc.pid) - rss0 < BUDGET + (16 << 20)
        q = np.ones((1, 8, 128), np.float32)
        assert np.isfinite(kv.attend(0, [made[0]], q)).all()              # still serving
        assert kv.reclaim([made[0]]) == 1
        kv.append(0, [99], one_token(kv), one_token(kv))                  # room again
        # A namespace whose one sequence could never fit is refused up front.
        with pytest.raises(csdemu.NVMeError) as e:
            dev.create_kv_namespace(**dict(BIG, layers=32))
        assert e.value.status == Status.NS_INSUFFICIENT_CAPACITY
    finally:
        kv.delete()


def test_kv_namespaces_per_client_are_limited(drive, dev):
    mine = [dev.create_kv_namespace(layers=1, q_heads=1, kv_heads=1, head_dim=64)
            for _ in range(MAX_KV_NS_PER_CLIENT)]
    try:
        with pytest.raises(csdemu.NVMeError) as e:
            dev.create_kv_namespace(layers=1, q_heads=1, kv_heads=1, head_dim=64)
        assert e.value.status == Status.NS_ID_UNAVAILABLE
        assert "most KV namespaces one client may" in e.value.field
        with csdemu.connect(drive.socket_path) as other:                # others still can
            other.create_kv_namespace(layers=1, q_heads=1, kv_heads=1, head_dim=64).delete()
    finally:
        for kv in mine:
            kv.delete()


def test_sigterm_closes_kv_namespaces_cleanly():
    d = DaemonProcess(extra_args=SMALL).start()
    try:
        dev = csdemu.connect(d.socket_path)
        kv = dev.create_kv_namespace(layers=2, q_heads=2, kv_heads=2, head_dim=64)
        x = np.random.default_rng(2).standard_normal((2, 300, 2, 64))
        kv.append(0, [1, 2], x, x)
        os.kill(d.proc.pid, signal.SIGTERM)
        assert d.proc.wait(60) == 0
        assert "closing namespace" not in d.log_text(), d.log_text()[-2000:]
        dev.close()
    finally:
        d.cleanup()
