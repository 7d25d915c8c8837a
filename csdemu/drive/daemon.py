"""The daemon: control socket, attach/detach, and the polling loop.

One thread polls every client's submission queues, SQPOLL style: while work
arrives it spins; after `poll_idle_us` without work it sets each client's
need-wakeup flag, looks once more, and sleeps in select() on the clients'
kick eventfds, their control sockets and the listening socket.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import struct
import sys
import time

# The engine's Numba kernels run on GNU OpenMP, whose workers by default spin
# for milliseconds after every parallel region: on a small machine that takes
# a core from the host process between attends (a decode step's other layer
# work) and from the daemon's own loop. Passive workers sleep at once; waking
# them costs microseconds per attend. Set before Numba first loads libgomp.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from csdemu.drive import jit_watch  # noqa: E402
from csdemu.transport.control import send_msg, socket_unusable  # noqa: E402
from csdemu.drive.cpus import format_cpu_list  # noqa: E402
from csdemu.transport.qpair import CONTROL_BYTES, fence  # noqa: E402
from csdemu.drive.session import Session  # noqa: E402

MIN_ARENA = 1 << 20
MAX_ARENA = 1 << 30
DEFAULT_ARENA = 16 << 20
IDLE_GUARD_S = 0.5     # longest sleep without a wake-up (belt and braces)
SELECT_EVERY_NS = 1_000_000
# Spinning yields the core after every empty pass; back on it only this long
# later means other tasks kept it (a loaded machine), so sleep instead.
CROWDED_NS = 500_000


class Daemon:
    def __init__(self, socket_path: str, controller, poll_idle_us: int = 2000, info: dict | None = None):
        self.socket_path = socket_path
        self.ctrl = controller
        self.poll_idle_ns = poll_idle_us * 1000
        self.info = info or {}
        self.sessions: dict[int, Session] = {}
        self.conns: dict[socket.socket, bytes] = {}     # unattached control connections
        self.sel = selectors.DefaultSelector()
        self.started = time.time()
        self.stopping = False
        self.next_client = 1
        self.uid = os.getuid()
        self.polls = self.idle_polls = self.sleeps = 0
        self.jit = jit_watch.install()        # compiles after start-up = warm-up gaps

    # ------------------------------------------------------------ socket
    def listen(self):
        d = os.path.dirname(self.socket_path) or "."
        os.makedirs(d, mode=0o700, exist_ok=True)
        unusable = socket_unusable(self.socket_path)
        if unusable:
            raise SystemExit(f"csdemu: {unusable}")
        if os.path.lexists(self.socket_path):
            os.unlink(self.socket_path)            # left behind by a daemon that died
        self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.lsock.bind(self.socket_path)
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)
        self.lsock.listen(64)
        self.lsock.setblocking(False)
        self.sel.register(self.lsock, selectors.EVENT_READ, ("listen", None))

    def _accept(self):
        try:
            conn, _ = self.lsock.accept()
        except BlockingIOError:
            return
        pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid not in (self.uid, 0):
            conn.close()
            return
        conn.setblocking(False)
        self.conns[conn] = b""
        self.sel.register(conn, selectors.EVENT_READ, ("conn", (pid, uid)))

    def _readable(self, conn, cred, session=None):
        try:
            chunk = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._disconnect(conn, session)
            return
        buf = self.conns.get(conn, b"") + chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            self._request(conn, cred, line, session)
        if conn in self.conns:
            self.conns[conn] = buf

    def _request(self, conn, cred, line, session):
        try:
            msg = json.loads(line)
            op = msg["op"]
        except (ValueError, KeyError, TypeError):
            return self._reply(conn, {"ok": False, "error": "malformed control message"})
        if op == "status":
            return self._reply(conn, self.status())
        if op == "stop":
            self.stopping = True
            return self._reply(conn, {"ok": True})
        if op == "attach" and session is None:
            return self._attach(conn, cred, msg)
        self._reply(conn, {"ok": False, "error": f"unknown or misplaced op {op!r}"})

    def _reply(self, conn, obj, fds=()):
        try:
            conn.setblocking(True)
            send_msg(conn, obj, fds)
            conn.setblocking(False)
        except OSError:
            pass

    def _attach(self, conn, cred, msg):
        size = msg.get("arena_bytes", DEFAULT_ARENA)
        if not isinstance(size, int) or not MIN_ARENA <= size <= MAX_ARENA or size % 4096:
            return self._reply(conn, {"ok": False, "error":
                                      f"arena_bytes must be a multiple of 4096 in [{MIN_ARENA}, {MAX_ARENA}]"})
        pid, uid = cred
        s = Session(self.next_client, conn, pid, uid, size)
        self.next_client += 1
        self.sessions[s.id] = s
        self.sel.modify(conn, selectors.EVENT_READ, ("session", s))
        self.sel.register(s.kick_fd, selectors.EVENT_READ, ("kick", s))
        self._reply(conn, {"ok": True, "client_id": s.id, "arena_bytes": size,
                           "control_bytes": CONTROL_BYTES, "vectors": len(s.vector_fds)},
                    s.fds_to_send())

    def _disconnect(self, conn, session):
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        self.conns.pop(conn, None)
        if session is not None:
            try:
                self.sel.unregister(session.kick_fd)
            except (KeyError, ValueError):
                pass
            self.ctrl.drop_session(session)
            self.sessions.pop(session.id, None)
            session.close()
        else:
            conn.close()

    # ------------------------------------------------------------ loop
    def _events(self, timeout):
        for key, _ in self.sel.select(timeout):
            kind, obj = key.data
            if kind == "listen":
                self._accept()
            elif kind == "conn":
                self._readable(key.fileobj, obj)
            elif kind == "session":
                self._readable(key.fileobj, (obj.pid, obj.uid), obj)
            elif kind == "kick":
                try:
                    os.eventfd_read(obj.kick_fd)
                except (BlockingIOError, OSError):
                    pass

    def _poll_all(self) -> int:
        n = 0
        for s in list(self.sessions.values()):
            n += self.ctrl.poll(s)
        return n

    def serve(self):
        self.listen()
        signal.signal(signal.SIGTERM, lambda *a: setattr(self, "stopping", True))
        signal.signal(signal.SIGINT, lambda *a: setattr(self, "stopping", True))
        ctrl = self.ctrl
        mono = time.monotonic_ns
        last_work = last_select = mark = mono()
        while not self.stopping:
            t0 = mono()
            # Off the CPU for long since the last yield: the core is wanted by
            # others, and spinning on would only delay the commands this loop
            # serves until its next turn; sleeping gets it woken promptly.
            crowded = t0 - mark > CROWDED_NS
            n = self._poll_all()
            now = mono()
            self.polls += 1
            next_due = ctrl.release_due(now) if ctrl.held else None
            if n:
                last_work = now
                ctrl.counters.busy_ns += now - t0
            else:
                self.idle_polls += 1
            if now - last_select > SELECT_EVERY_NS:
                last_select = now
                self._events(0)
            if n:
                mark = now
                continue
            if not crowded and (now - last_work < self.poll_idle_ns or (
                    next_due is not None and next_due - now < self.poll_idle_ns)):
                # Spinning, but give way: on a machine with few cores the
                # client's threads (and fio) wait for this core otherwise.
                mark = now
                os.sched_yield()
                continue
            self._sleep(next_due, now)
            last_work = last_select = mark = mono()
        self.shutdown()

    def _sleep(self, next_due, now):
        for s in self.sessions.values():
            s.set_need_wakeup(True)
        fence()
        if self._poll_all() == 0:
            timeout = IDLE_GUARD_S
            if next_due is not None:
                timeout = min(timeout, max(0.0, (next_due - now) / 1e9))
            self.sleeps += 1
            self._events(timeout)
        for s in self.sessions.values():
            s.set_need_wakeup(False)

    def shutdown(self):
        """Drain: post every held completion (at its time), then close."""
        ctrl = self.ctrl
        for s in self.sessions.values():
            ctrl.flush_pending(s)
        while ctrl.held:
            due = ctrl.release_due(time.monotonic_ns())
            if due is not None:
                time.sleep(max(0.0, (due - time.monotonic_ns()) / 1e9))
        for ns in list(ctrl.namespaces.values()):
            try:
                ns.close()
            except Exception as exc:       # keep closing the others
                print(f"csdemu: closing namespace failed: {exc}", file=sys.stderr)
        for s in list(self.sessions.values()):
            s.close()
        if ctrl.lifetime is not None:
            ctrl.lifetime.save(closing=True)
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass
        self.lsock.close()

    def status(self) -> dict:
        ctrl = self.ctrl
        return {
            "ok": True, "pid": os.getpid(), "uptime_s": round(time.time() - self.started, 3),
            "socket": self.socket_path, "timing_mode": int(ctrl.config.timing_mode),
            "cpus": format_cpu_list(os.sched_getaffinity(0)),
            **self.info,
            "clients": [{"id": s.id, "pid": s.pid, "uid": s.uid, "arena_bytes": s.size,
                         "iommu_regions": len(s.iommu),
                         "queues": [{"sqid": q.qid, "cqid": q.cqid, "depth": q.depth}
                                    for q in s.sqs.values()]}
                        for s in self.sessions.values()],
            "namespaces": [{"nsid": nsid, "kind": getattr(ns, "kind", type(ns).__name__),
                            "nlbas": getattr(ns, "nlbas", 0), "lba_size": getattr(ns, "lba_size", 0),
                            "owner": ctrl.owners.get(nsid)}
                           for nsid, ns in sorted(ctrl.namespaces.items())],
            "commands": ctrl.counters.commands,
            "polls": self.polls, "idle_polls": self.idle_polls, "sleeps": self.sleeps,
            **self.jit.as_dict(),
        }
