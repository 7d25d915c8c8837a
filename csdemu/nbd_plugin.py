"""nbdkit Python plugin: serve a csdemu namespace (nsid 1 by default) over NBD.

    nbdkit python csdemu/nbd_plugin.py socket=/path/csdemu.sock \
        root=/path/to/repo site=/path/to/.venv/lib/python3.11/site-packages

`csdemu nbd` builds that command line. nbdkit runs this file in its own
embedded python3, not the venv, so `root=` and `site=` put the repository and
the venv's site-packages on sys.path before csdemu is imported.

The plugin is an ordinary csdemu client: every NBD connection attaches to the
daemon as its own client (its own arena and queue pairs). nbdkit runs the
plugin with THREAD_MODEL_PARALLEL, so several requests of one connection can
be in flight at once; each nbdkit worker thread that serves a connection gets
its own I/O queue pair and staging buffer in that connection's arena (a
Queue is single-threaded; different queues of one client are independent),
so a client at iodepth 8 keeps up to 8 commands outstanding in the drive.
Waiting for a completion releases the GIL: the thread blocks on its queue's
interrupt eventfd at once (spin=N first polls N times with sched_yield; on a
2-core machine shared with the daemon and fio, blocking at once measured
about twice the 4 KiB QD8 IOPS of polling), so other threads submit meanwhile.

NBD -> NVMe: pread -> Read, pwrite -> Write (FUA flag -> FUA bit), flush ->
Flush, trim -> Dataset Management (deallocate), zero -> Write Zeroes.
Unaligned requests are handled by read-modify-write of the edge blocks.
Parameters: socket= (required), nsid= (default 1), root=, site=,
arena= (bytes per connection, default 32M), staging= (bytes per thread,
default 1M), spin= (polls before blocking, default 0).
"""
from __future__ import annotations

import errno
import sys
import threading

import nbdkit

API_VERSION = 2

_cfg = {"socket": None, "nsid": 1, "root": None, "site": None,
        "arena": 32 << 20, "staging": 1 << 20, "spin": 0}

# filled by config_complete() once sys.path is set up
_mods = {}


def config(key, value):
    if key in ("socket", "root", "site"):
        _cfg[key] = value
    elif key in ("nsid", "spin"):
        _cfg[key] = int(value, 0)
    elif key in ("arena", "staging"):
        _cfg[key] = nbdkit.parse_size(value)
    else:
        raise RuntimeError(f"unknown parameter {key!r} (socket, nsid, root, site, arena, "
                           "staging, spin)")


def config_complete():
    if not _cfg["socket"]:
        raise RuntimeError("socket=PATH (the csdemu daemon's control socket) is required")
    for p in (_cfg["site"], _cfg["root"]):
        if p and p not in sys.path:
            sys.path.insert(0, p)
    from csdemu.client import SGL_FLAGS, Device
    from csdemu.errors import NVMeError
    from nvme_cmds.nvm import CDW11_DSM_AD, DSM_RANGE, lba_cdws
    from nvme_cmds.opcodes import NvmOpcode
    from nvme_cmds.spec import CQE_STRUCT  # noqa: F401  (fail early if the tree is broken)
    from nvme_cmds.status import decode_status_field
    _mods.update(Device=Device, NVMeError=NVMeError, SGL=SGL_FLAGS, lba_cdws=lba_cdws,
                 DSM_RANGE=DSM_RANGE, DSM_AD=CDW11_DSM_AD, op=NvmOpcode,
                 decode=decode_status_field)


def thread_model():
    return nbdkit.THREAD_MODEL_PARALLEL


class Lane:
    """One worker thread's queue pair and staging buffer inside a connection."""
    __slots__ = ("q", "off", "nbytes")

    def __init__(self, q, off, nbytes):
        self.q, self.off, self.nbytes = q, off, nbytes


class Handle:
    def __init__(self, readonly):
        D = _mods["Device"]
        self.dev = D(_cfg["socket"], arena_bytes=_cfg["arena"], io_depth=4)
        self.nsid = _cfg["nsid"]
        ns = self.dev.identify_ns(self.nsid)
        self.bs = 1 << ns["lbaf0_lbads"]
        self.size = ns["nsze"] * self.bs
        self.max_bytes = min(_cfg["staging"], self.dev.mdts_bytes())
        self.max_bytes -= self.max_bytes % self.bs
        self.readonly = readonly
        self.lock = threading.Lock()
        self.lanes: dict[int, Lane] = {}

    # One lane per nbdkit worker thread; the threads live as long as the connection.
    def lane(self) -> Lane:
        tid = threading.get_ident()
        ln = self.lanes.get(tid)
        if ln is not None:
            return ln
        with self.lock:
            q = self.dev.create_queue(4)
            ln = Lane(q, self.dev.alloc.alloc(_cfg["staging"]), _cfg["staging"])
            self.lanes[tid] = ln
        return ln

    def close(self):
        with self.lock:
            self.dev.close()


def _wait(q):
    """Reap one completion: poll, yield the CPU (GIL released), then block."""
    return q.wait_some(1, _cfg["spin"])[0]


def _cmd(h, ln, opc, what, **kw):
    q = ln.q
    q.submit(opc, nsid=h.nsid, **kw)
    e = _wait(q)
    if e[5] & 0xFFFE:                        # status field without the phase tag
        st = _mods["decode"](e[5])[0]
        err = _mods["NVMeError"](st, what)
        nbdkit.set_error(errno.ENOSPC if "CAPACITY" in str(err) else errno.EIO)
        raise RuntimeError(str(err))
    return e


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
    mm, bs, step = h.dev.mm, h.bs, h.max_bytes
    rd, lba_cdws = _mods["op"].READ, _mods["lba_cdws"]
    for pos in range(0, len(out), step):
        n = min(step, len(out) - pos)
        _cmd(h, ln, rd, "read", flags=_mods["SGL"], prp1=ln.off, prp2=n,
             **lba_cdws(lba + pos // bs, n // bs))
        out[pos:pos + n] = mm[ln.off:ln.off + n]


def _write_blocks(h, ln, lba, data: memoryview, fua: bool):
    mm, bs, step = h.dev.mm, h.bs, h.max_bytes
    wr, lba_cdws = _mods["op"].WRITE, _mods["lba_cdws"]
    for pos in range(0, len(data), step):
        n = min(step, len(data) - pos)
        mm[ln.off:ln.off + n] = data[pos:pos + n]
        _cmd(h, ln, wr, "write", flags=_mods["SGL"], prp1=ln.off, prp2=n,
             **lba_cdws(lba + pos // bs, n // bs, fua))


def pread(h, buf, offset, flags):
    ln, bs = h.lane(), h.bs
    mv = memoryview(buf).cast("B")
    if offset % bs == 0 and len(mv) % bs == 0:
        _read_blocks(h, ln, offset // bs, mv)
        return
    lo = offset - offset % bs
    hi = -(-(offset + len(mv)) // bs) * bs
    tmp = bytearray(hi - lo)
    _read_blocks(h, ln, lo // bs, memoryview(tmp))
    mv[:] = tmp[offset - lo:offset - lo + len(mv)]


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
    ln, bs = h.lane(), h.bs
    fua = bool(flags & nbdkit.FLAG_FUA)
    mv = memoryview(buf).cast("B")
    if offset % bs == 0 and len(mv) % bs == 0:
        _write_blocks(h, ln, offset // bs, mv, fua)
    else:
        _rmw(h, ln, offset, mv, fua)


def flush(h, flags):
    _cmd(h, h.lane(), _mods["op"].FLUSH, "flush")


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
    ln = h.lane()
    fua = bool(flags & nbdkit.FLAG_FUA)
    head, whole, tail = _edges(h, count, offset)
    for part in (head, tail):
        if part and part[1]:
            _rmw(h, ln, part[0], memoryview(bytes(part[1])), fua)
    if whole:
        lba, n = whole
        wz, lba_cdws = _mods["op"].WRITE_ZEROES, _mods["lba_cdws"]
        for i in range(0, n, 65536):
            k = min(65536, n - i)
            cd = lba_cdws(lba + i, k, fua)
            _cmd(h, ln, wz, "write zeroes", **cd)


def trim(h, count, offset, flags):
    # Trim is advisory in NBD: deallocate the whole blocks, leave partial ones.
    ln = h.lane()
    _, whole, _ = _edges(h, count, offset)
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
        h.dev.mm[ln.off:ln.off + len(raw)] = raw
        _cmd(h, ln, _mods["op"].DATASET_MANAGEMENT, "trim", flags=_mods["SGL"], prp1=ln.off,
             prp2=len(raw), cdw10=len(part) - 1, cdw11=_mods["DSM_AD"])
    if flags & nbdkit.FLAG_FUA:
        flush(h, 0)
