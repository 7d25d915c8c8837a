"""The control socket is bounded: no line, reader or crowd of clients can
crash the daemon, hang it, or grow it without bound (issue 19, item 4), and
it listens only in a directory no other user controls (item 3)."""
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import csdemu
from csdemu.drive.conn_limits import FDS_PER_SESSION, MAX_UNATTACHED, RESERVE_FDS
from csdemu.drive.control_conn import MAX_LINE, MAX_UNSENT
from csdemu.transport.control import request
from csdemu.transport.errors import DaemonError
from tools.torture.common import rss_kib, small_daemon


@pytest.fixture
def daemon():
    d = small_daemon().start()
    yield d
    d.cleanup()


def _raw(d) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    for _ in range(1000):
        try:
            s.connect(d.socket_path)
            return s
        except BlockingIOError:       # the backlog is full until the daemon's next pass
            time.sleep(0.002)
    raise TimeoutError("the daemon never took the connection")


def _reply(s) -> dict:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return json.loads(buf.split(b"\n")[0])


def _closed(s) -> bool:
    try:
        return s.recv(10) == b""
    except ConnectionResetError:          # closed with our bytes unread
        return True


def _serves(d) -> bool:
    with csdemu.connect(d.socket_path) as dev:
        dev.write(0, np.full(dev.lba_size(), 7, np.uint8))
        return bool((dev.read(0, 1) == 7).all())


@pytest.mark.parametrize("line", [b"[" * 1000, b"{" * 60_000, b'{"op": {"op": "status"}}',
                                  b"\xff\xfe", b'"just a string"', b'{"op": 7}', b"[]"])
def test_malformed_lines_are_refused_and_the_daemon_serves_on(daemon, line):
    s = _raw(daemon)
    s.sendall(line + b"\n")
    r = _reply(s)
    assert r["ok"] is False and "malformed control message" in r["error"]
    s.sendall(b'{"op": "status"}\n')              # the connection itself still works
    assert _reply(s)["ok"] is True
    s.close()
    assert _serves(daemon)


def test_a_line_that_never_ends_is_cut_off_at_the_cap(daemon):
    s = _raw(daemon)
    rss0 = rss_kib(daemon.proc.pid)
    chunk = b"x" * 65536
    sent = 0
    try:
        while sent < 64 * MAX_LINE:
            s.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass                                       # dropped while sending: what we want
    r = _reply(s)
    assert r["ok"] is False and f"longer than {MAX_LINE} bytes" in r["error"]
    assert _closed(s)                                # and the connection is closed
    assert rss_kib(daemon.proc.pid) - rss0 < 8 * 1024
    assert _serves(daemon)


def test_a_client_that_never_reads_is_dropped_not_waited_for(daemon):
    hog = _raw(daemon)
    hog.setblocking(False)
    line = b'{"op": "status"}\n'
    one_reply = len(json.dumps(request(daemon.socket_path, "status"))) + 1
    dropped = False
    sent = 0
    deadline = time.monotonic() + 30
    # Far more replies than the socket buffer and MAX_UNSENT hold together.
    while not dropped and time.monotonic() < deadline:
        try:
            sent += hog.send(line * 64)
        except BlockingIOError:
            time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            dropped = True
        if sent // len(line) * one_reply > 8 * MAX_UNSENT + (4 << 20):
            break
    # Meanwhile everyone else is served ...
    assert _serves(daemon)
    # ... and the hog was dropped: its socket ends after what was sent
    hog.setblocking(True)
    hog.settimeout(10)
    got = 0
    try:
        while chunk := hog.recv(1 << 20):
            got += len(chunk)
    except ConnectionResetError:
        pass
    assert got < sent // len(line) * one_reply
    # and SIGTERM stops the daemon promptly
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(10) == 0
    assert not os.path.exists(daemon.socket_path)


def test_clients_beyond_the_fd_budget_are_refused_cleanly():
    limit = 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        d = small_daemon().start()                # inherits the lower limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    devs = []
    try:
        with pytest.raises(DaemonError, match="client limit reached"):
            for _ in range(limit // FDS_PER_SESSION + 1):
                devs.append(csdemu.connect(d.socket_path, arena_bytes=1 << 20))
        # refused before the fd limit, and not long before it
        assert (limit - RESERVE_FDS) // FDS_PER_SESSION - 2 <= len(devs) < limit // FDS_PER_SESSION
        assert d.proc.poll() is None
        devs[0].write(0, np.full(devs[0].lba_size(), 3, np.uint8))
        assert (devs[-1].read(0, 1) == 3).all()
        devs.pop().close()                          # one leaves: one more may come
        devs.append(csdemu.connect(d.socket_path, arena_bytes=1 << 20))
        # a crowd of raw connections: those beyond the budget get a refusal line
        crowd = [_raw(d) for _ in range(200)]
        time.sleep(0.5)
        refusals = 0
        for s in crowd:
            s.setblocking(False)
            try:
                refusals += b'"ok": false' in s.recv(4096)
            except BlockingIOError:
                pass                                # accepted and waiting for a request
        for s in crowd:
            s.close()
        assert refusals >= 200 - MAX_UNATTACHED
        assert d.proc.poll() is None
        assert (devs[0].read(0, 1) == 3).all()
    finally:
        for dev in devs:
            dev.close()
        d.cleanup()


@pytest.mark.parametrize("mode,owner", [(0o755, None), (0o700, 65534)])
def test_a_socket_dir_others_control_is_refused(tmp_path, mode, owner):
    d = tmp_path / "sockdir"
    d.mkdir()
    os.chmod(d, mode)
    if owner is not None:
        os.chown(d, owner, owner)
    sock = str(d / "csdemu.sock")
    r = subprocess.run([sys.executable, "-m", "csdemu", "start", "--socket", sock,
                        "--data-dir", str(tmp_path / "data")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and str(d) in r.stderr
    assert ("0700" in r.stderr) if owner is None else ("uid 65534" in r.stderr)
    assert not os.path.exists(sock) and not os.path.exists(tmp_path / "data" / "device.json")
    # the foreground daemon checks it too (a caller that skips the CLI's check)
    r = subprocess.run([sys.executable, "-m", "csdemu", "start", "--foreground", "--socket", sock,
                        "--data-dir", str(tmp_path / "data")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and str(d) in r.stderr


def test_sigterm_with_clients_attached_exits_cleanly(daemon):
    dev = csdemu.connect(daemon.socket_path)
    q = dev.create_queue(32)
    buf = np.full(dev.lba_size(), 5, np.uint8)
    for lba in range(16):
        dev.write(lba, buf)
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0, daemon.log_text()[-2000:]
    assert not os.path.exists(daemon.socket_path)
    assert "Traceback" not in daemon.log_text()
    del q
    dev.close()
