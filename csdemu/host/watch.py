"""Notice a dead daemon at once, whoever is waiting on it and however.

After the attach reply the daemon writes nothing to a client's control
socket, so the socket turns readable only when the daemon closes it: it
dropped the client, stopped, or died. One thread per process sleeps in
epoll on every attached Device's control socket. On EOF it marks the Device
gone and writes each of its interrupt-vector eventfds, so a waiter blocked
on its CQ's vector, in poll() or in a plain read(2) as the NBD plugin's
lanes are, wakes at once, sees the mark and raises DeviceGone, instead of
waiting out its timeout. The thread costs nothing while all is well: it
sleeps in the kernel without the GIL.
"""
from __future__ import annotations

import os
import select
import socket
import threading

_lock = threading.Lock()
_ep: select.epoll | None = None
_devices: dict[int, object] = {}         # control socket fd -> Device


def watch(dev) -> None:
    """Watch `dev.sock` until unwatch(dev); on EOF call dev.mark_gone(why)."""
    global _ep
    with _lock:
        if _ep is None:
            _ep = select.epoll()
            threading.Thread(target=_run, args=(_ep,), name="csdemu-watch", daemon=True).start()
        fd = dev.sock.fileno()
        _devices[fd] = dev
        _ep.register(fd, select.EPOLLIN | select.EPOLLRDHUP)


def unwatch(dev) -> None:
    """Stop watching `dev`; once this returns mark_gone is never called for
    it, so its fds may be closed."""
    with _lock:
        fd = dev.sock.fileno()
        if _devices.get(fd) is dev:
            del _devices[fd]
            try:
                _ep.unregister(fd)
            except OSError:
                pass


def _run(ep) -> None:
    while True:
        try:
            events = ep.poll()
        except OSError:            # closed by _forget in a forked child
            return
        for fd, _ in events:
            with _lock:
                dev = _devices.get(fd)
                if dev is None:
                    continue
                why = _closed(dev.sock)
                if why is None:
                    continue
                del _devices[fd]
                try:
                    ep.unregister(fd)
                except OSError:
                    pass
                dev.mark_gone(why)     # under the lock: unwatch() waits for it


def _closed(sock) -> str | None:
    """Why the daemon's end of `sock` is closed, or None if it is not."""
    while True:
        try:
            chunk = sock.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            return f"the control socket failed: {exc.strerror or exc}"
        if not chunk:
            return "the daemon closed the control socket (it stopped or died)"
        # Nothing is expected after the attach reply; whatever came is dropped.


def _forget() -> None:
    """In a forked child: the thread is not there, and the parent's Devices
    are not the child's to watch."""
    global _ep, _lock
    _lock = threading.Lock()
    if _ep is not None:
        _ep.close()
    _ep = None
    _devices.clear()


os.register_at_fork(after_in_child=_forget)
