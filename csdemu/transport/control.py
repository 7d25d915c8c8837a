"""The control socket protocol: one JSON object per line, fds over SCM_RIGHTS.

    → {"op": "attach", "arena_bytes": N}   ← {"ok": true, "client_id": .., ...} + fds
    → {"op": "status"}                      ← {"ok": true, "pid": .., ...}
    → {"op": "stop"}                        ← {"ok": true}
Errors come back as {"ok": false, "error": "one line"}.
The attach connection stays open: EOF tells the daemon the client is gone.
"""
import array
import json
import socket

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
