"""A client talks only to a daemon run by its own user or root (issue 19,
item 3): whoever controls the socket's directory could otherwise put a fake
daemon in its place, take the client's writes and forge its reads."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import pytest

import csdemu
from csdemu.transport.control import request
from csdemu.transport.errors import DaemonError

NOBODY = 65534

def _fake_daemon(path: str, report: int) -> None:
    """In a forked child: become uid 65534 and listen at `path` as a fake
    daemon would, answering an attach as the real one does (minus the fds)
    and writing to `report` how many bytes each client sent."""
    try:
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.listen(8)
        os.write(report, b"ready\n")
        while True:
            c, _ = s.accept()
            c.settimeout(2)
            try:
                got = c.recv(65536)
            except OSError:
                got = b""
            os.write(report, f"received {len(got)} bytes\n".encode())
            try:
                c.sendall(json.dumps({"ok": True, "client_id": 1, "arena_bytes": 1 << 20,
                                      "pid": 1}).encode() + b"\n")
            except OSError:
                pass
            c.close()
    finally:
        os._exit(0)


@pytest.fixture
def impostor():
    """A listener run by uid 65534 in a directory that user owns -> (its
    socket path, a file of what it received)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a server as another user")
    top = tempfile.mkdtemp(prefix="csdemu-peer-")
    os.chmod(top, 0o755)
    d = os.path.join(top, "sockdir")
    os.mkdir(d, 0o700)
    os.chown(d, NOBODY, NOBODY)
    path = os.path.join(d, "csdemu.sock")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _fake_daemon(path, w)
    os.close(w)
    log = os.fdopen(r)
    try:
        assert log.readline().strip() == "ready"
        yield path, (pid, log)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        log.close()
        shutil.rmtree(top, ignore_errors=True)


def _received(p) -> list[str]:
    pid, log = p
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return [line.strip() for line in log]


def test_client_refuses_a_daemon_run_by_another_user(impostor):
    path, p = impostor
    with pytest.raises(DaemonError) as err:
        csdemu.connect(path)
    msg = str(err.value)
    assert path in msg and f"uid {NOBODY}" in msg and "\n" not in msg
    with pytest.raises(DaemonError, match=f"uid {NOBODY}"):
        request(path, "status", timeout=5)
    r = subprocess.run([sys.executable, "-m", "csdemu", "status", "--socket", path],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and f"uid {NOBODY}" in r.stderr, r.stderr
    # Refused before a byte went out: nothing to take, nothing to answer.
    assert _received(p) == ["received 0 bytes"] * 3
