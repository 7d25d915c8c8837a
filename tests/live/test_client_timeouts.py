"""Clients never hang and never get another command's completion (issue 19,
item 10): every wait has a timeout, a timed-out command is aborted and its
late completion dropped, and a dead daemon is noticed at once."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import csdemu
from csdemu.host.queue import ADMIN_TIMEOUT_S, IO_TIMEOUT_S
from csdemu.transport.errors import DaemonError, DeviceGone
from nvme_cmds.nvm import lba_cdws
from nvme_cmds.opcodes import AdminOpcode, NvmOpcode, VendorIoOpcode
from nvme_cmds.status import Status
from tools.torture.common import small_daemon

GONE_WITHIN_S = 0.1       # the bound: a dead daemon is reported within 100 ms
SHORT_S = 0.5             # a timeout a test can afford to wait out
AER_LIMIT = 4             # csdemu.drive.admin.AER_LIMIT (the host may not import the drive)


@pytest.fixture
def daemon():
    d = small_daemon().start()
    yield d
    if d.proc.poll() is None:
        os.kill(d.proc.pid, signal.SIGCONT)
    d.cleanup()


def _out_of_range_read(dev):
    nlbas = dev.identify_ns(1)["nsze"]
    return dict(nsid=1, **lba_cdws(nlbas + 5, 1))


def test_defaults_are_linux_nvme_core():
    # drivers/nvme/host/core.c: admin_timeout = 60, io_timeout = 30 (seconds)
    assert (ADMIN_TIMEOUT_S, IO_TIMEOUT_S) == (60.0, 30.0)


def test_timed_out_wait_never_hands_its_completion_to_the_next_command(daemon):
    with csdemu.connect(daemon.socket_path) as dev:
        q = dev.io
        oor = _out_of_range_read(dev)
        q.submit(VendorIoOpcode.NOP, ring=False)        # lands only when the next one rings
        with pytest.raises(TimeoutError):
            q.wait(1, timeout=SHORT_S)
        c = q.execute(NvmOpcode.READ, **oor)
        assert c.status == Status.LBA_OUT_OF_RANGE, c     # was the NOP's SUCCESS
        assert dev.nop().ok
        assert q.outstanding == 0 and len(q.free_cids) == q.depth


def test_stopped_daemon_times_out_then_answers_the_right_command(daemon):
    with csdemu.connect(daemon.socket_path) as dev:
        oor = _out_of_range_read(dev)
        os.kill(daemon.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(DaemonError, match="did not answer"):
                csdemu.connect(daemon.socket_path, timeout=SHORT_S)
            assert time.monotonic() - t0 < SHORT_S + 1.0
            r = subprocess.run([sys.executable, "-m", "csdemu", "status", "--socket",
                                daemon.socket_path, "--timeout", str(SHORT_S)],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode != 0 and "did not answer" in r.stderr, r.stderr
            t0 = time.monotonic()
            with pytest.raises(TimeoutError, match="nop"):
                dev.nop(timeout=SHORT_S)
            assert time.monotonic() - t0 < SHORT_S + 1.0
        finally:
            os.kill(daemon.proc.pid, signal.SIGCONT)
        # The NOP completes late; its CID stays taken until then and its
        # completion goes to no one.
        c = dev.passthru(NvmOpcode.READ, read_len=dev.lba_size(), **oor)
        assert c.status == Status.LBA_OUT_OF_RANGE
        assert dev.nop().ok
        assert dev.io.outstanding == 0 and len(dev.io.free_cids) == dev.io.depth


def test_async_event_request_times_out_and_is_aborted(daemon):
    with csdemu.connect(daemon.socket_path) as dev:
        # More than the drive holds at once: each must have been aborted, or
        # the fifth would complete at once with Async Event Limit Exceeded.
        for _ in range(AER_LIMIT + 1):
            with pytest.raises(TimeoutError, match="async event request"):
                dev.passthru(AdminOpcode.ASYNC_EVENT_REQUEST, admin=True, timeout=0.2)
        dev.identify()
        assert dev.admin.outstanding == 0 and len(dev.admin.free_cids) == dev.admin.depth
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "csdemu", "passthru", "--socket", daemon.socket_path,
                        "--admin", "-o", "0x0c", "--timeout", str(SHORT_S)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "timed out" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 30


def test_abort_reaches_a_command_held_in_realtime():
    # A 5 s program in realtime mode: the completion is held that long.
    with small_daemon(["--timing", "realtime", "--set", "timing.tPROG_ns=5000000000"]) as d, \
            csdemu.connect(d.socket_path) as dev:
        oor = _out_of_range_read(dev)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="write"):
            dev.write(0, np.ones(dev.lba_size(), np.uint8), timeout=SHORT_S)
        # Aborted: its completion (Abort Requested) comes long before 5 s,
        # and is dropped, not given to the read.
        assert dev.passthru(NvmOpcode.READ, read_len=dev.lba_size(), **oor).status == \
            Status.LBA_OUT_OF_RANGE
        deadline = time.monotonic() + 2.0
        while dev.io.outstanding and time.monotonic() < deadline:
            dev.io.reap()
            time.sleep(0.01)
        assert dev.io.outstanding == 0
        assert time.monotonic() - t0 < 3.0


def _killed_while_waiting(d, call):
    """SIGSTOP the daemon so `call` waits, SIGKILL it 0.3 s later: -> the
    exception `call` raised and seconds from the kill to it."""
    os.kill(d.proc.pid, signal.SIGSTOP)
    killed = []

    def kill():
        time.sleep(0.3)
        killed.append(time.monotonic())
        os.kill(d.proc.pid, signal.SIGKILL)

    t = threading.Thread(target=kill)
    t.start()
    try:
        call()
    except Exception as exc:            # noqa: BLE001 - returned for the test to judge
        raised = (exc, time.monotonic())
    else:
        raised = (None, time.monotonic())
    t.join()
    d.proc.wait(10)
    return raised[0], raised[1] - killed[0]


@pytest.mark.parametrize("how", ["wait", "execute", "attend"])
def test_dead_daemon_is_device_gone_within_100ms(how):
    with small_daemon() as d, csdemu.connect(d.socket_path) as dev:
        if how == "wait":
            dev.io.submit(VendorIoOpcode.NOP, ring=False)
            call = lambda: dev.io.wait(1, timeout=30)            # noqa: E731
        elif how == "execute":
            call = lambda: dev.admin.execute(AdminOpcode.ASYNC_EVENT_REQUEST)    # noqa: E731
        else:
            kv = dev.create_kv_namespace(layers=1, q_heads=2, kv_heads=2, head_dim=64)
            kv.append(0, [1], np.ones((1, 8, 2, 64), np.float32), np.ones((1, 8, 2, 64), np.float32))
            q = np.ones((1, 2, 64), np.float32)
            kv.attend(0, [1], q)                                   # registers q and out first
            call = lambda: kv.attend(0, [1], q)                    # noqa: E731
        exc, after = _killed_while_waiting(d, call)
        assert isinstance(exc, DeviceGone), repr(exc)
        assert isinstance(exc, csdemu.NVMeError) and exc.status == Status.HOST_PATH_ERROR
        assert after < GONE_WITHIN_S, f"DeviceGone {after * 1e3:.0f} ms after the kill"
        # Every later call too, at once.
        for later in (dev.nop, lambda: dev.read(0, 1), dev.identify):
            t0 = time.monotonic()
            with pytest.raises(DeviceGone):
                later()
            assert time.monotonic() - t0 < GONE_WITHIN_S


def test_blocking_waiter_is_woken_when_the_daemon_dies():
    # The NBD plugin's lanes sleep in read(2) of their vector: no poll
    # timeout to notice a dead daemon with.
    with small_daemon() as d, csdemu.connect(d.socket_path) as dev:
        q = dev.create_queue(8)
        os.set_blocking(q.vector_fd, True)
        q.submit(VendorIoOpcode.NOP, ring=False)
        exc, after = _killed_while_waiting(d, lambda: q.wait_blocking())
        assert isinstance(exc, DeviceGone), repr(exc)
        assert after < GONE_WITHIN_S
