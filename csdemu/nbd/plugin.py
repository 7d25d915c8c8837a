"""nbdkit Python plugin: serve a csdemu namespace (nsid 1 by default) over NBD.

    nbdkit python csdemu/nbd/plugin.py socket=/path/csdemu.sock \
        root=/path/to/repo site=/path/to/.venv/lib/python3.11/site-packages

`csdemu nbd` builds that command line. nbdkit runs this file in its own
embedded python3, not the venv, so `root=` and `site=` put the repository and
the venv's site-packages on sys.path before csdemu is imported.

The plugin is an ordinary csdemu client: every NBD connection attaches to the
daemon as its own client (its own arena and queue pairs). nbdkit runs the
plugin with THREAD_MODEL_PARALLEL. A request borrows a lane (an I/O queue
pair and a staging buffer) from the connection's pool and gives it back, so
fio at iodepth 8 keeps 8 commands in the drive while the daemon polls only as
many queues as requests were ever in flight at once, not one per worker
thread (each queue costs its poll loop a look per pass). A waiting thread
polls its CQ spin=N times (default 8) with sched_yield between, then arms
the CQ and sleeps in one read(2) of its lane's interrupt eventfd, GIL
released: a 4 KiB read is served sooner than a sleep and wake-up cost
(figures in docs/fio-and-stress.md).

nbdkit takes the GIL per callback with PyGILState_Ensure, which in a worker
thread without a Python thread state creates one and frees it on return (an
mmap, munmap and gettid per request). The first callback in each worker
takes one extra reference so the state lives as long as the thread; close()
frees those of the finished workers.

NBD -> NVMe: pread -> Read, pwrite -> Write (FUA flag -> FUA bit), flush ->
Flush, trim -> Dataset Management (deallocate), zero -> Write Zeroes.
Reads and writes move through the lane's staging buffer (SGL into the arena,
one copy to or from nbdkit's buffer). Unaligned requests are handled by
read-modify-write of the edge blocks.
Parameters: socket= (required), nsid= (default 1), root=, site=,
arena= (bytes per connection, default 32M), staging= (bytes per lane,
default 1M), spin= (polls before blocking, default 8), lanes= (most queue
pairs per connection, default 15: one interrupt vector each).
"""
from __future__ import annotations

import ctypes
import errno
import os
import sys
import threading

import nbdkit

API_VERSION = 2

_cfg = {"socket": None, "nsid": 1, "root": None, "site": None,
        "arena": 32 << 20, "staging": 1 << 20, "spin": 8, "lanes": 15}
LANE_DEPTH = 2           # one command outstanding per lane (depth - 1)

# filled by config_complete() once sys.path is set up
_mods = {}
CQ_STATUS = None            # a raw completion's status field: csdemu.transport.qpair
_api = ctypes.pythonapi
_api.PyGILState_GetThisThreadState.restype = ctypes.c_void_p
_api.PyThreadState_Clear.argtypes = [ctypes.c_void_p]
_api.PyThreadState_Delete.argtypes = [ctypes.c_void_p]


def config(key, value):
    if key in ("socket", "root", "site"):
        _cfg[key] = value
    elif key in ("nsid", "spin", "lanes"):
        _cfg[key] = int(value, 0)
    elif key in ("arena", "staging"):
        _cfg[key] = nbdkit.parse_size(value)
    else:
        raise RuntimeError(f"unknown parameter {key!r} (socket, nsid, root, site, arena, "
                           "staging, spin, lanes)")


def config_complete():
    global CQ_STATUS
    if not _cfg["socket"]:
        raise RuntimeError("socket=PATH (the csdemu daemon's control socket) is required")
    if _cfg["lanes"] < 1:
        raise RuntimeError("lanes must be at least 1")
    for p in (_cfg["site"], _cfg["root"]):
        if p and p not in sys.path:
            sys.path.insert(0, p)
    from csdemu.host.device import SGL_FLAGS, Device
    from csdemu.transport.errors import NVMeError
    from nvme_cmds.nvm import CDW11_DSM_AD, CDW12_FUA, DSM_RANGE, lba_cdws
    from nvme_cmds.opcodes import NvmOpcode
    from csdemu.transport import qpair
    from nvme_cmds.status import decode_status_field
    CQ_STATUS = qpair.CQ_STATUS
    _mods.update(Device=Device, NVMeError=NVMeError, SGL=SGL_FLAGS, FUA=CDW12_FUA,
                 DSM_RANGE=DSM_RANGE, DSM_AD=CDW11_DSM_AD, lba_cdws=lba_cdws, op=NvmOpcode,
                 decode=decode_status_field)


def thread_model():
    return nbdkit.THREAD_MODEL_PARALLEL


def _pin() -> int:
    """Keep this nbdkit thread's Python thread state alive; -> its address, or
    0 for a thread Python started itself (its state is Python's to free)."""
    if not isinstance(threading.current_thread(), threading._DummyThread):
        return 0
    _api.PyGILState_Ensure()
    return _api.PyGILState_GetThisThreadState()


class Lane:
    """A queue pair and its staging buffer, used by one request at a time."""
    __slots__ = ("q", "off", "view")

    def __init__(self, q, off, view):
        self.q, self.off, self.view = q, off, view


class Handle:
    def __init__(self, readonly):
        D = _mods["Device"]
        self.dev = D(_cfg["socket"], arena_bytes=_cfg["arena"], io_depth=LANE_DEPTH)
        self.nsid = _cfg["nsid"]
        ns = self.dev.identify_ns(self.nsid)
        self.bs = 1 << ns["lbaf0_lbads"]
        self.size = ns["nsze"] * self.bs
        self.max_bytes = min(_cfg["staging"], self.dev.mdts_bytes())
        self.max_bytes -= self.max_bytes % self.bs
        self.readonly = readonly
        self.read_op, self.sgl = int(_mods["op"].READ), _mods["SGL"]
        self.mv = memoryview(self.dev.mm)
        self.cond = threading.Condition()
        self.waiters = 0
        self.pool: list[Lane] = []
        self.lanes: list[Lane] = []
        self.pinned: dict[int, int] = {}       # worker thread -> its kept PyThreadState
        # A blocked lane reads its own vector: lanes may not share one.
        self.max_lanes = min(_cfg["lanes"], len(self.dev.vector_fds) - 1)
        self._add_lane(self.dev.io)             # the Device's own I/O queue is lane 1

    def _add_lane(self, q) -> Lane:
        os.set_blocking(q.vector_fd, True)      # one read(2) per wait (Queue.wait_blocking)
        off = self.dev.alloc.alloc(self.max_bytes)
        ln = Lane(q, off, self.mv[off:off + self.max_bytes])
        self.lanes.append(ln)
        self.pool.append(ln)
        return ln

    def take(self) -> Lane:
        tid = threading.get_ident()
        if tid not in self.pinned:
            self.pinned[tid] = _pin()
        try:
            return self.pool.pop()
        except IndexError:
            return self._wait_lane()

    def _wait_lane(self) -> Lane:
        with self.cond:
            self.waiters += 1
            try:
                while True:
                    try:
                        return self.pool.pop()
                    except IndexError:
                        pass
                    if len(self.lanes) < self.max_lanes:
                        self._add_lane(self.dev.create_queue(LANE_DEPTH))
                        continue
                    self.cond.wait(0.05)
            finally:
                self.waiters -= 1

    def give(self, ln: Lane) -> None:
        self.pool.append(ln)
        if self.waiters:
            with self.cond:
                self.cond.notify()

    def close(self):
        # nbdkit joins a connection's workers before it calls close().
        me = threading.get_ident()
        for tid, ts in self.pinned.items():
            if not ts:
                continue
            if tid == me:
                _api.PyGILState_Release(0)      # PyGILState_LOCKED: drop our extra count
            else:
                _api.PyThreadState_Clear(ts)
                _api.PyThreadState_Delete(ts)
        self.pinned.clear()
        for ln in self.lanes:
            ln.view.release()
        self.lanes = self.pool = []
        self.mv.release()
        self.dev.close()


def _cmd(h, ln, opc, what, flags=0, prp1=0, prp2=0, cdw10=0, cdw11=0, cdw12=0):
    q = ln.q
    q.submit(opc, h.nsid, cdw10, cdw11, cdw12, 0, 0, 0, prp1, prp2, flags)  # positional: hot path
    e = q.wait_blocking(_cfg["spin"])[0]
    if e[CQ_STATUS] & 0xFFFE:                # status field without the phase tag
        st = _mods["decode"](e[CQ_STATUS])[0]
        err = _mods["NVMeError"](st, what)
        nbdkit.set_error(errno.ENOSPC if "CAPACITY" in str(err) else errno.EIO)
        raise RuntimeError(str(err))
    return e


def _rw(h, ln, opc, what, lba, nbytes, fua=False):
    """One Read/Write of whole blocks through the lane's staging buffer."""
    c = _mods["lba_cdws"](lba, nbytes // h.bs, fua)
    _cmd(h, ln, opc, what, h.sgl, ln.off, nbytes, c["cdw10"], c["cdw11"], c["cdw12"])


# ------------------------------------------------------------------ callbacks
def open(readonly):  # noqa: A001  (nbdkit's required name)
    return Handle(readonly)


def close(h):
    h.close()


def get_size(h):
    return h.size


def block_size(h):
    return (1, h.bs, 0xFFFFFFFF)


def can_write(h):
    return not h.readonly


def can_flush(h):
    return True


def can_trim(h):
    return True


def can_zero(h):
    return True


def can_fast_zero(h):
    return True                             # Write Zeroes deallocates whole pages


def can_fua(h):
    return nbdkit.FUA_NATIVE


def can_multi_conn(h):
    # Every connection talks to the same controller and FTL; a Flush on one
    # connection makes the writes completed on every connection durable.
    return True


def is_rotational(h):
    return False


def can_cache(h):
    return nbdkit.CACHE_NONE


def _read_blocks(h, ln, lba, out: memoryview):
    """Read len(out) bytes (a whole number of blocks) at `lba` into `out`."""
    bs, step, rd, view = h.bs, h.max_bytes, _mods["op"].READ, ln.view
    for pos in range(0, len(out), step):
        n = min(step, len(out) - pos)
        _rw(h, ln, rd, "read", lba + pos // bs, n)
        out[pos:pos + n] = view[:n]


def _write_blocks(h, ln, lba, data: memoryview, fua: bool):
    bs, step, wr, view = h.bs, h.max_bytes, _mods["op"].WRITE, ln.view
    for pos in range(0, len(data), step):
        n = min(step, len(data) - pos)
        view[:n] = data[pos:pos + n]
        _rw(h, ln, wr, "write", lba + pos // bs, n, fua)


def pread(h, buf, offset, flags):
    ln = h.take()
    try:
        bs = h.bs
        n = len(buf)
        if offset % bs == 0 and n % bs == 0:
            if n <= h.max_bytes:              # the common case: one command
                _rw(h, ln, h.read_op, "read", offset // bs, n)
                buf[:] = ln.view[:n]
            else:
                _read_blocks(h, ln, offset // bs, memoryview(buf).cast("B"))
            return
        lo = offset - offset % bs
        hi = -(-(offset + n) // bs) * bs
        tmp = bytearray(hi - lo)
        _read_blocks(h, ln, lo // bs, memoryview(tmp))
        buf[:] = tmp[offset - lo:offset - lo + n]
    finally:
        h.give(ln)


def _rmw(h, ln, offset, data: memoryview, fua: bool):
    bs = h.bs
    lo = offset - offset % bs
    hi = -(-(offset + len(data)) // bs) * bs
    tmp = bytearray(hi - lo)
    tv = memoryview(tmp)
    _read_blocks(h, ln, lo // bs, tv[:bs])
    if hi - lo > bs:
        _read_blocks(h, ln, (hi - bs) // bs, tv[hi - lo - bs:])
    tv[offset - lo:offset - lo + len(data)] = data
    _write_blocks(h, ln, lo // bs, tv, fua)


def pwrite(h, buf, offset, flags):
    ln = h.take()
    try:
        bs = h.bs
        fua = bool(flags & nbdkit.FLAG_FUA)
        mv = memoryview(buf).cast("B")
        if offset % bs == 0 and len(mv) % bs == 0:
            _write_blocks(h, ln, offset // bs, mv, fua)
        else:
            _rmw(h, ln, offset, mv, fua)
    finally:
        h.give(ln)


def flush(h, flags):
    ln = h.take()
    try:
        _cmd(h, ln, _mods["op"].FLUSH, "flush")
    finally:
        h.give(ln)


def _edges(h, count, offset):
    """Split [offset, offset+count) into (head bytes, whole blocks lba/n, tail bytes)."""
    bs = h.bs
    first = -(-offset // bs)
    last = (offset + count) // bs
    if last <= first:
        return (offset, count), None, None
    head = (offset, first * bs - offset) if first * bs > offset else None
    tail = (last * bs, offset + count - last * bs) if offset + count > last * bs else None
    return head, (first, last - first), tail


def zero(h, count, offset, flags):
    ln = h.take()
    try:
        fua = bool(flags & nbdkit.FLAG_FUA)
        head, whole, tail = _edges(h, count, offset)
        for part in (head, tail):
            if part and part[1]:
                _rmw(h, ln, part[0], memoryview(bytes(part[1])), fua)
        if whole:
            lba, n = whole
            for i in range(0, n, 65536):
                k = min(65536, n - i)
                c = _mods["lba_cdws"](lba + i, k, fua)
                _cmd(h, ln, _mods["op"].WRITE_ZEROES, "write zeroes", 0, 0, 0,
                     c["cdw10"], c["cdw11"], c["cdw12"])
    finally:
        h.give(ln)


def trim(h, count, offset, flags):
    # Trim is advisory in NBD: deallocate the whole blocks, leave partial ones.
    _, whole, _ = _edges(h, count, offset)
    ln = h.take()
    try:
        if whole:
            import numpy as np
            lba, n = whole
            ranges = []
            while n > 0:
                k = min(n, 0xFFFFFFFF)
                ranges.append((0, k, lba))
                lba, n = lba + k, n - k
            part = np.array(ranges[:256], _mods["DSM_RANGE"])
            raw = part.tobytes()
            ln.view[:len(raw)] = raw
            _cmd(h, ln, _mods["op"].DATASET_MANAGEMENT, "trim", _mods["SGL"], ln.off,
                 len(raw), len(part) - 1, _mods["DSM_AD"])
        if flags & nbdkit.FLAG_FUA:
            _cmd(h, ln, _mods["op"].FLUSH, "flush")
    finally:
        h.give(ln)
