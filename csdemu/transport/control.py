"""The control socket protocol: one JSON object per line, fds over SCM_RIGHTS.

    → {"op": "attach", "arena_bytes": N}   ← {"ok": true, "client_id": .., ...} + fds
    → {"op": "status"}                      ← {"ok": true, "pid": .., ...}
    → {"op": "stop"}                        ← {"ok": true}
Errors come back as {"ok": false, "error": "one line"}.
The attach connection stays open: EOF tells the daemon the client is gone.
"""
import array
import json
import os
import socket
import stat

MAX_FDS = 64


def send_msg(sock: socket.socket, obj: dict, fds=()) -> None:
    data = (json.dumps(obj) + "\n").encode()
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.sendall(data)


def recv_msg(sock: socket.socket, want_fds: bool = False):
    """Blocking read of one line (-> dict, fds)."""
    buf = b""
    fds: list[int] = []
    while not buf.endswith(b"\n"):
        if want_fds:
            chunk, more, _, _ = socket.recv_fds(sock, 65536, MAX_FDS)
            fds += more
        else:
            chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("daemon closed the connection")
        buf += chunk
    return json.loads(buf), fds


def request(path: str, op: str, timeout: float | None = 10.0) -> dict:
    """One control-socket request (e.g. "status") -> the daemon's reply."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        send_msg(s, {"op": op})
        reply, _ = recv_msg(s)
        return reply
    finally:
        s.close()


def socket_unusable(path: str) -> str | None:
    """Why a daemon may not listen at `path`, or None if it may: the path
    is something other than a socket (which binding would delete), or a
    live daemon answers there. A socket no one answers on was left by a
    daemon that died, and may be replaced."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(mode):
        return f"{path} exists and is not a socket; refusing to replace it"
    if reachable(path):
        return f"a csdemu daemon is already listening on {path}"
    return None


def reachable(path: str) -> bool:
    """True if a daemon accepts connections on the control socket at `path`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()
