"""The control socket protocol: one JSON object per line, fds over SCM_RIGHTS.

    → {"op": "attach", "arena_bytes": N}   ← {"ok": true, "client_id": .., ...} + fds
    → {"op": "status"}                      ← {"ok": true, "pid": .., ...}
    → {"op": "stop"}                        ← {"ok": true}
Errors come back as {"ok": false, "error": "one line"}.
The attach connection stays open: EOF tells the daemon the client is gone,
and, since the daemon sends nothing on it after the attach reply, EOF tells
the client the daemon is gone (csdemu.host.watch). A client talks only to a
server running as its own uid or root (peer_problem).
"""
import array
import json
import os
import socket
import stat
import struct

from csdemu.transport.errors import DaemonError

MAX_FDS = 64


def send_msg(sock: socket.socket, obj: dict, fds=()) -> None:
    data = (json.dumps(obj) + "\n").encode()
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.sendall(data)


def recv_msg(sock: socket.socket, want_fds: bool = False):
    """Blocking read of one line (-> dict, fds); a timeout set on `sock`
    applies to each read."""
    buf = b""
    fds: list[int] = []
    while not buf.endswith(b"\n"):
        if want_fds:
            chunk, more, _, _ = socket.recv_fds(sock, 65536, MAX_FDS)
            fds += more
        else:
            chunk = sock.recv(65536)
        if not chunk:
            for fd in fds:
                os.close(fd)
            raise ConnectionError("daemon closed the connection")
        buf += chunk
    return json.loads(buf), fds


def peer_problem(sock: socket.socket, path: str) -> str | None:
    """Why the process serving `sock` may not be trusted, or None. Whoever
    owns the socket's directory could have put their own listener at
    `path`; the kernel's record of who listens (SO_PEERCRED) cannot be
    forged, so only our own uid or root passes."""
    pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    me = os.getuid()
    if uid in (me, 0):
        return None
    return (f"refusing the daemon at {path}: it is served by uid {uid} (pid {pid}), "
            f"not by you (uid {me}) or root; another user may be impersonating csdemu")


def open_control(path: str, timeout: float | None) -> socket.socket:
    """A connected control socket whose server is trusted (peer_problem),
    reads on it bounded by `timeout`; DaemonError with a one-line reason."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except TimeoutError:
        s.close()
        raise DaemonError(_silent(path, timeout)) from None
    except OSError as exc:
        s.close()
        raise DaemonError(f"cannot reach the csdemu daemon at {path}: {exc.strerror or exc}; "
                          "start one with `csdemu start`") from None
    problem = peer_problem(s, path)
    if problem:
        s.close()
        raise DaemonError(problem)
    return s


def exchange(sock: socket.socket, path: str, obj: dict, want_fds: bool = False):
    """Send one request on an open_control() socket -> (reply, fds), or
    DaemonError when the daemon stays silent past the socket's timeout or
    hangs up."""
    try:
        send_msg(sock, obj)
        return recv_msg(sock, want_fds)
    except TimeoutError:
        raise DaemonError(_silent(path, sock.gettimeout())) from None
    except OSError as exc:
        raise DaemonError(f"the csdemu daemon at {path} closed the connection: "
                          f"{exc.strerror or exc}") from None
    except ValueError:
        raise DaemonError(f"the csdemu daemon at {path} sent a malformed reply") from None


def _silent(path, timeout) -> str:
    return (f"the csdemu daemon at {path} did not answer within {timeout:g} s "
            "(stopped, or busy with a long command?)")


def request(path: str, op: str, timeout: float | None = 10.0) -> dict:
    """One control-socket request (e.g. "status") -> the daemon's reply;
    DaemonError if it cannot be reached, is not ours, or stays silent for
    `timeout` s."""
    s = open_control(path, timeout)
    try:
        reply, _ = exchange(s, path, {"op": op})
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
