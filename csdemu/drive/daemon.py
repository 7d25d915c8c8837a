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
from csdemu.transport.control import socket_unusable  # noqa: E402
from csdemu.transport.paths import socket_dir_problem  # noqa: E402
from csdemu.drive.cpus import format_cpu_list  # noqa: E402
from csdemu.transport.qpair import CONTROL_BYTES, fence  # noqa: E402
from csdemu.drive.session import Session  # noqa: E402
from csdemu.drive.control_conn import ControlConn, Refused, parse_request  # noqa: E402
from csdemu.drive.conn_limits import ConnLimits  # noqa: E402

MIN_ARENA = 1 << 20
MAX_ARENA = 1 << 30
DEFAULT_ARENA = 16 << 20
LISTEN_BACKLOG = 64
IDLE_GUARD_S = 0.5     # longest sleep without a wake-up (belt and braces)
SELECT_EVERY_NS = 1_000_000
# Spinning yields the core after every empty pass; back on it only this long
# later means other tasks kept it (a loaded machine), so sleep instead.
CROWDED_NS = 500_000
# A held completion is due at its modeled time; no command models seconds,
# so one still held this long after stop is a bug, not work to wait for.
SHUTDOWN_DRAIN_NS = 10_000_000_000


class Daemon:
    def __init__(self, socket_path: str, controller, poll_idle_us: int = 2000, info: dict | None = None):
        self.socket_path = socket_path
        self.ctrl = controller
        self.poll_idle_ns = poll_idle_us * 1000
        self.info = info or {}
        self.sessions: dict[int, Session] = {}
        self.conns: dict[socket.socket, ControlConn] = {}    # attached or not
        self.limits = ConnLimits()
        self.spare_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
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
        unusable = socket_dir_problem(self.socket_path, self.uid) or socket_unusable(self.socket_path)
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
        self.lsock.listen(LISTEN_BACKLOG)
        self.lsock.setblocking(False)
        self.sel.register(self.lsock, selectors.EVENT_READ, ("listen", None))

    def _accept_all(self):
        """Take the whole backlog (up to its size) on one wake-up: a burst
        of clients would otherwise find it full while the loop polls."""
        for _ in range(LISTEN_BACKLOG):
            if not self._accept():
                return

    def _accept(self) -> bool:
        try:
            sock, _ = self.lsock.accept()
        except BlockingIOError:
            return False
        except OSError:                 # EMFILE/ENFILE: free the spare fd to say no
            sock = self._accept_with_spare()
            if sock is None:
                return False
            self._refuse(sock, "the daemon is out of file descriptors")
            return True
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid not in (self.uid, 0):
            sock.close()
            return True
        full = self.limits.connection_refusal(len(self.conns), len(self.sessions))
        if full:
            self._refuse(sock, full)
            return True
        sock.setblocking(False)
        conn = ControlConn(sock, (pid, uid))
        self.conns[sock] = conn
        self.sel.register(sock, selectors.EVENT_READ, ("conn", conn))
        return True

    def _accept_with_spare(self):
        """Without a free fd the listening socket stays readable and the loop
        would spin; the spare fd kept for this lets one connection in to be
        told why, and the backlog drains."""
        os.close(self.spare_fd)
        try:
            sock, _ = self.lsock.accept()
        except OSError:
            sock = None
        finally:
            self.spare_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        return sock

    def _refuse(self, sock, why):
        try:
            sock.send((json.dumps({"ok": False, "error": why}) + "\n").encode(), socket.MSG_DONTWAIT)
        except OSError:
            pass
        sock.close()

    def _readable(self, conn: ControlConn):
        try:
            chunk = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            return self._disconnect(conn)
        try:
            lines = conn.feed(chunk)
        except Refused as exc:
            conn.send({"ok": False, "error": str(exc)})
            return self._disconnect(conn)
        for line in lines:
            if conn.sock not in self.conns:
                return
            self._request(conn, line)

    def _request(self, conn: ControlConn, line: bytes):
        try:
            msg = parse_request(line)
        except Refused as exc:
            return self._reply(conn, {"ok": False, "error": str(exc)})
        op = msg["op"]
        try:
            if op == "status":
                return self._reply(conn, self.status())
            if op == "stop":
                self.stopping = True
                return self._reply(conn, {"ok": True})
            if op == "attach" and conn.session is None:
                return self._attach(conn, msg)
        except Exception as exc:        # noqa: BLE001 - no request may end the loop
            print(f"csdemu: control request {op!r} failed: {exc!r}", file=sys.stderr)
            return self._reply(conn, {"ok": False, "error": f"internal error: {exc}"})
        self._reply(conn, {"ok": False, "error": f"unknown or misplaced op {op!r}"})

    def _reply(self, conn: ControlConn, obj, fds=()):
        if not conn.send(obj, fds):
            return self._disconnect(conn)
        self._want_write(conn)

    def _want_write(self, conn: ControlConn):
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
        if conn.sock in self.conns and self.sel.get_key(conn.sock).events != events:
            self.sel.modify(conn.sock, events, ("conn", conn))

    def _attach(self, conn: ControlConn, msg):
        size = msg.get("arena_bytes", DEFAULT_ARENA)
        if not isinstance(size, int) or not MIN_ARENA <= size <= MAX_ARENA or size % 4096:
            return self._reply(conn, {"ok": False, "error":
                                      f"arena_bytes must be a multiple of 4096 in [{MIN_ARENA}, {MAX_ARENA}]"})
        full = self.limits.session_refusal(len(self.sessions))
        if full:
            return self._reply(conn, {"ok": False, "error": full})
        pid, uid = conn.cred
        s = Session(self.next_client, conn.sock, pid, uid, size)
        self.next_client += 1
        self.sessions[s.id] = s
        conn.session = s
        self.sel.register(s.kick_fd, selectors.EVENT_READ, ("kick", s))
        self._reply(conn, {"ok": True, "client_id": s.id, "arena_bytes": size,
                           "control_bytes": CONTROL_BYTES, "vectors": len(s.vector_fds)},
                    s.fds_to_send())

    def _disconnect(self, conn: ControlConn):
        if self.conns.pop(conn.sock, None) is None:
            return
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        session = conn.session
        if session is not None:
            try:
                self.sel.unregister(session.kick_fd)
            except (KeyError, ValueError):
                pass
            self.ctrl.drop_session(session)
            self.sessions.pop(session.id, None)
            session.close()
        else:
            conn.sock.close()

    # ------------------------------------------------------------ loop
    def _events(self, timeout):
        for key, mask in self.sel.select(timeout):
            kind, obj = key.data
            if kind == "listen":
                self._accept_all()
            elif kind == "conn":
                if mask & selectors.EVENT_WRITE:
                    if not obj.flush():
                        self._disconnect(obj)
                        continue
                    self._want_write(obj)
                if mask & selectors.EVENT_READ:
                    self._readable(obj)
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
        try:
            self._loop()
        finally:
            self.shutdown()

    def _loop(self):
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
        """Drain: post every held completion (at its time), then close. Every
        step runs whatever an earlier one raised (on a full disk the
        checkpoint fails), and the socket is removed last, always; the
        failures are one line each and make the exit status 1."""
        ctrl, failed = self.ctrl, []

        def step(what, fn, *args):
            try:
                fn(*args)
            except Exception as exc:       # noqa: BLE001 - keep closing the rest
                failed.append(f"{what}: {exc}")

        try:
            for s in self.sessions.values():
                step("posting completions", ctrl.flush_pending, s)
            step("posting held completions", self._release_held)
            # KV namespaces keep their pages in the flash namespace's FTL:
            # they close first, the flash namespace (nsid 1) last
            for nsid, ns in sorted(ctrl.namespaces.items(), reverse=True):
                step(f"closing namespace {nsid}", ns.close)
            for s in list(self.sessions.values()):
                step(f"closing client {s.id}", s.close)
            if ctrl.lifetime is not None:
                step("saving lifetime counters", ctrl.lifetime.save, True)
            if ctrl.tracer is not None:
                step("writing the trace", ctrl.tracer.close)
        finally:
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass
            self.lsock.close()
        for line in failed:
            print(f"csdemu: shutdown: {line}", file=sys.stderr)
        if failed:
            raise SystemExit(1)

    def _release_held(self):
        ctrl = self.ctrl
        deadline = time.monotonic_ns() + SHUTDOWN_DRAIN_NS
        while ctrl.held and time.monotonic_ns() < deadline:
            due = ctrl.release_due(time.monotonic_ns())
            if due is not None:
                time.sleep(min(max(0.0, (due - time.monotonic_ns()) / 1e9), 0.1))
        if ctrl.held:
            raise RuntimeError(f"{len(ctrl.held)} completions still held after "
                               f"{SHUTDOWN_DRAIN_NS / 1e9:.0f} s")

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
