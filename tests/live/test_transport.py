"""The transport against a real daemon process and real shared memory."""
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import csdemu
from csdemu.transport.control import request
from csdemu.host.spawn import DaemonProcess
from nvme_cmds.opcodes import AdminOpcode, NvmOpcode, VendorIoOpcode
from nvme_cmds.status import Status


def status_of(socket_path):
    return request(socket_path, "status")


def test_identify_and_block_roundtrip(dev):
    ident = dev.identify()
    assert ident["sqes"] == 0x66 and ident["cqes"] == 0x44 and ident["vs"]["magic"] == "CSDE"
    assert dev.namespaces() == [1]
    bs = dev.lba_size()
    data = np.random.default_rng(0).integers(0, 256, 5 * bs, dtype=np.uint8)
    dev.write(10, data)
    assert np.array_equal(dev.read(10, 5), data)
    dev.trim(11, 2)
    back = dev.read(10, 5)
    assert np.array_equal(back[:bs], data[:bs]) and not back[bs:3 * bs].any()
    dev.write_zeroes(13, 1)
    assert not dev.read(13, 1).any()
    dev.flush()


def test_transfer_larger_than_staging_is_split(dev):
    bs = dev.lba_size()
    n = dev.staging_bytes // bs * 2 + 3
    data = np.random.default_rng(1).integers(0, 256, n * bs, dtype=np.uint8)
    dev.write(100, data)
    assert np.array_equal(dev.read(100, n), data)


def test_block_io_larger_than_the_clients_arena(daemon):
    """Issue 20 item 6: a block read or write of many times the client's
    whole shared arena goes through, split into staging-sized commands."""
    with csdemu.connect(daemon.socket_path, arena_bytes=1 << 20) as small:
        bs = small.lba_size()
        n = 6 * small.arena.size // bs + 5
        data = np.random.default_rng(2).integers(0, 256, n * bs, dtype=np.uint8)
        small.write(2000, data)
        small.flush()
        got = small.read(2000, n)
        assert got.nbytes == n * bs > 6 * small.arena.size
        assert np.array_equal(got, data)


def test_completion_reports_sq_head_and_phase_wraps(dev):
    q = dev.create_queue(4)          # 3 usable slots: the phase flips every 4 entries
    try:
        for i in range(25):
            c = q.execute(VendorIoOpcode.NOP)
            assert c.ok and c.sqid == q.qid
            assert c.sqhd == (i + 1) % 4
    finally:
        dev.delete_queue(q)


def test_many_queues_and_depth_1024(dev):
    qs = [dev.create_queue(1024)] + [dev.create_queue(64) for _ in range(6)]
    try:
        big = qs[0]
        for _ in range(1023):
            big.submit(VendorIoOpcode.NOP, ring=False)
        big.ring()
        got = big.wait(1023)
        assert len(got) == 1023 and all(c.ok for c in got)
        assert len({c.cid for c in got}) == 1023
        for q in qs[1:]:
            q.submit(VendorIoOpcode.NOP)
        for q in qs[1:]:
            assert q.wait(1)[0].ok
    finally:
        for q in qs:
            dev.delete_queue(q)


def test_several_clients_share_the_drive(daemon):
    devs = [csdemu.connect(daemon.socket_path) for _ in range(3)]
    try:
        bs = devs[0].lba_size()
        for i, d in enumerate(devs):
            d.write(1000 + i, np.full(bs, i + 1, np.uint8))
        for i, d in enumerate(devs):
            assert (devs[(i + 1) % 3].read(1000 + i, 1) == i + 1).all()
        st = status_of(daemon.socket_path)
        ids = {c["id"] for c in st["clients"]}
        assert {d.client_id for d in devs} <= ids
    finally:
        for d in devs:
            d.close()


def test_prp_dma_into_registered_memory(dev):
    bs = dev.lba_size()
    src = np.random.default_rng(2).integers(0, 256, 4 * bs, dtype=np.uint8)
    dst = np.zeros_like(src)
    dev.register(src)
    dev.register(dst)
    try:
        c = dev.io.execute(NvmOpcode.WRITE, nsid=1, prp1=src.ctypes.data, cdw10=200, cdw12=3)
        assert c.ok, c
        c = dev.io.execute(NvmOpcode.READ, nsid=1, prp1=dst.ctypes.data, cdw10=200, cdw12=3)
        assert c.ok, c
        assert np.array_equal(src, dst)
    finally:
        dev.unregister(src)
        dev.unregister(dst)
    c = dev.io.execute(NvmOpcode.READ, nsid=1, prp1=dst.ctypes.data, cdw10=200, cdw12=3)
    assert c.status == Status.DATA_TRANSFER_ERROR


def test_arena_and_prp_reads_agree(dev):
    """A Read into the arena takes the controller's one-call path, a PRP Read
    the general one: same data, and both counted as host reads of NAND pages."""
    bs = dev.lba_size()
    src = np.random.default_rng(3).integers(0, 256, 6 * bs, dtype=np.uint8)
    dev.write(300, src)
    dst = np.zeros(6 * bs, np.uint8)
    s0, f0 = dev.smart(), dev.flash_log()
    assert np.array_equal(dev.read(300, 6), src)
    dev.register(dst)
    try:
        assert dev.io.execute(NvmOpcode.READ, nsid=1, prp1=dst.ctypes.data, cdw10=300, cdw12=5).ok
    finally:
        dev.unregister(dst)
    assert np.array_equal(dst, src)
    s1, f1 = dev.smart(), dev.flash_log()
    assert s1["host_read_commands"] - s0["host_read_commands"] == 2
    assert f1["nand_pages_read"] - f0["nand_pages_read"] == 2 * 6 * bs // 4096


def test_idle_daemon_sleeps_and_wakes_on_doorbell(daemon):
    with csdemu.connect(daemon.socket_path) as d:
        before = status_of(daemon.socket_path)["sleeps"]
        time.sleep(0.2)               # far beyond --poll-idle-us
        c = d.nop()                   # needs a kick: the daemon is asleep
        assert c.ok
        after = status_of(daemon.socket_path)
        assert after["sleeps"] > before
        # An idle daemon does not spin: polls barely grow while nothing happens.
        p0 = after["polls"]
        time.sleep(0.3)
        assert status_of(daemon.socket_path)["polls"] - p0 < 10_000


def test_completion_wait_blocks_on_interrupt_fd(dev):
    q = dev.io
    q.submit(VendorIoOpcode.NOP)
    time.sleep(0.05)
    assert q.wait(1, timeout=5)[0].ok
    # A wait with nothing outstanding times out instead of hanging.
    with pytest.raises(TimeoutError):
        q.wait(1, timeout=0.2)


def test_client_death_reclaims_everything(daemon):
    code = textwrap.dedent(f"""
        import os, numpy as np, csdemu
        d = csdemu.connect({daemon.socket_path!r})
        qs = [d.create_queue(64) for _ in range(3)]
        buf = np.zeros(1 << 20, np.uint8); d.register(buf)
        for q in qs:
            for _ in range(10): q.submit(0x80, ring=False)
            q.ring()
        print(d.client_id, flush=True)
        os.kill(os.getpid(), 9)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    cid = int(p.stdout.split()[0])
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if cid not in {c["id"] for c in status_of(daemon.socket_path)["clients"]}:
            break
        time.sleep(0.02)
    else:
        pytest.fail("dead client's session was not reclaimed within 1 s")
    with csdemu.connect(daemon.socket_path) as d:
        assert d.nop().ok


def test_socket_and_shared_memory_are_private(daemon):
    assert stat.S_IMODE(os.stat(daemon.socket_path).st_mode) == 0o600
    with csdemu.connect(daemon.socket_path):
        # The arena is a memfd passed over SCM_RIGHTS: no name anyone could open.
        pid = daemon.proc.pid
        maps = open(f"/proc/{pid}/maps").read().splitlines()
        assert any("memfd:csdemu-arena" in m for m in maps)
        # Nothing mapped from /dev/shm may still have a name there (libraries'
        # semaphores are unlinked at once; csdemu itself puts nothing there).
        assert all(m.endswith("(deleted)") for m in maps if "/dev/shm/" in m)


def test_status_json_via_cli(daemon):
    out = subprocess.run([sys.executable, "-m", "csdemu", "status", "--json", "--socket",
                          daemon.socket_path], capture_output=True, text=True, timeout=60)
    st = json.loads(out.stdout)
    assert st["pid"] == daemon.proc.pid and st["namespaces"][0]["nsid"] == 1


def test_sigterm_drains_and_exits_cleanly():
    with DaemonProcess() as d:
        with csdemu.connect(d.socket_path) as dev:
            assert dev.nop().ok
            d.proc.send_signal(signal.SIGTERM)
            assert d.proc.wait(30) == 0
        assert not os.path.exists(d.socket_path)


def test_start_stop_in_background(tmp_path):
    sock = str(tmp_path / "bg.sock")
    cmd = [sys.executable, "-m", "csdemu"]
    r = subprocess.run(cmd + ["start", "--data-dir", str(tmp_path / "data"), "--socket", sock],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "listening on" in r.stdout
    with csdemu.connect(sock) as d:
        assert d.nop().ok
    r = subprocess.run(cmd + ["stop", "--socket", sock], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "stopped" in r.stdout
    assert not os.path.exists(sock)


def test_create_and_delete_queue_errors(dev):
    adm = dev.admin
    off = dev.alloc.alloc(4096)
    # CQ id in use, queue size too large, SQ for a missing CQ, deleting queue 0.
    assert adm.execute(AdminOpcode.CREATE_IO_CQ, cdw10=(3 << 16) | dev.io.qid, cdw11=1, prp1=off).status == Status.INVALID_QID
    assert adm.execute(AdminOpcode.CREATE_IO_CQ, cdw10=(2048 << 16) | 50, cdw11=1, prp1=off).status == Status.INVALID_QUEUE_SIZE
    assert adm.execute(AdminOpcode.CREATE_IO_SQ, cdw10=(3 << 16) | 50, cdw11=(49 << 16) | 1, prp1=off).status == Status.INVALID_CQ
    assert adm.execute(AdminOpcode.DELETE_IO_SQ, cdw10=0).status == Status.INVALID_QID
    assert adm.execute(AdminOpcode.DELETE_IO_CQ, cdw10=dev.io.qid).status == Status.INVALID_QUEUE_DELETION
    # A queue placed over the control region or outside the arena.
    assert adm.execute(AdminOpcode.CREATE_IO_CQ, cdw10=(3 << 16) | 50, cdw11=1, prp1=0).status == Status.INVALID_FIELD
    assert adm.execute(AdminOpcode.CREATE_IO_CQ, cdw10=(3 << 16) | 50, cdw11=1, prp1=dev.arena.size).status == Status.INVALID_FIELD
    # Interrupt vector beyond the table.
    assert adm.execute(AdminOpcode.CREATE_IO_CQ, cdw10=(3 << 16) | 50, cdw11=(999 << 16) | 3, prp1=off).status == Status.INVALID_INTERRUPT_VECTOR
    dev.alloc.release(off, 4096)
