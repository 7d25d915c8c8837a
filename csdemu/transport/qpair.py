"""Queue pairs in shared memory, both ends.

A client's arena (one memfd per client, mapped by the daemon and the client)
starts with a control region, then holds whatever queues and data buffers
the client places in it — the controller memory buffer of a real drive,
with queues in the CMB as NVMe allows:

    0      doorbell page: u32 SQ tail at 8*qid, u32 CQ head at 8*qid+4
           (shadow doorbells: plain memory stores, no MMIO trap)
    4096   flags page: u32 need_wakeup at 0 (set by a sleeping daemon: the
           client must signal the kick eventfd); u32 cq_armed[qid] at
           256+4*qid (set by a client about to block on that CQ's vector)
    8192   admin SQ (ADMIN_DEPTH x 64 B), then admin CQ
    16384  free for the client: I/O queues and data buffers

Every CQ region is `depth` 16-byte CQEs followed by `depth` u64 modeled
device times (ns), one per CQE slot: the time is written before the CQE
whose phase tag makes it visible. Every I/O SQ region is `depth` 64-byte
SQEs followed by three arrays with one entry per SQE slot, for causal
virtual time (docs/architecture.md, "Timing modes"):
    u64  when the host rang the doorbell for it (CLOCK_MONOTONIC ns): when
         the command reached the drive, which the daemon's fetch may lag;
    u64  when the host last consumed CQEs from its CQ before writing it;
    u32  how many CQEs of its CQ the host had consumed by then.
So the controller knows which completions a command was submitted after,
and how long the host thought before submitting it. 0 means not said: the
fetch time and the CQ head doorbell at fetch stand in.

The rings follow SPDK's loop: a CQE is new when its phase tag matches the
consumer's phase; the phase flips when the head wraps; a batch of entries
is consumed before the head doorbell is written once.
"""
from __future__ import annotations

import struct
import threading
import time

import numpy as np

from nvme_cmds.spec import CQE_STRUCT, SQE_STRUCT

# A raw completion, as HostCQ.pop_batch hands it to the host's hot paths: the
# CQE's fields, then the modeled device time csdemu adds. Index it by name.
CQ_DW0, CQ_DW1, CQ_SQHD, CQ_SQID, CQ_CID, CQ_STATUS, CQ_DEVICE_NS = range(7)

PAGE = 4096
DOORBELL_OFF = 0
FLAGS_OFF = PAGE
NEED_WAKEUP_WORD = FLAGS_OFF // 4
CQ_ARMED_WORD = (FLAGS_OFF + 256) // 4
ADMIN_DEPTH = 32
ADMIN_SQ_OFF = 2 * PAGE
ADMIN_CQ_OFF = ADMIN_SQ_OFF + ADMIN_DEPTH * 64
CONTROL_BYTES = 4 * PAGE
MAX_QUEUES = 64            # queue ids 0 (admin) .. 63 per client
MAX_QUEUE_DEPTH = 1024     # CAP.MQES + 1

_CQE_HEAD = struct.Struct("<IIHH")   # CQE DW0-2
_mono = time.monotonic_ns
assert ADMIN_CQ_OFF + ADMIN_DEPTH * 24 <= CONTROL_BYTES


def sq_bytes(depth: int) -> int:
    return depth * 84            # SQEs, then per slot: u64 rung, u64 reaped, u32 consumed


def sq_slot_words(off: int, depth: int) -> tuple[int, int, int]:
    """Word indexes of an I/O SQ's per-slot arrays (the module docstring):
    rung and reaped (u64 words), consumed (u32 words)."""
    return (off + 64 * depth) // 8, (off + 72 * depth) // 8, (off + 80 * depth) // 4


def cq_bytes(depth: int) -> int:
    return depth * 24


_fence_lock = threading.Lock()


def fence() -> None:
    """Full memory barrier between a store and a later load.

    Python cannot emit mfence. An uncontended lock round trip runs a locked
    read-modify-write (sem_trywait's CAS), which is a full fence on x86-64.
    Needed where a store must be visible before a load of another word: the
    need-wakeup and cq-armed handshakes (io_uring does smp_mb there).
    """
    _fence_lock.acquire()
    _fence_lock.release()


class ArenaView:
    """numpy views of one client's arena mmap, plus memoryview word arrays for
    the rings' hot paths (indexing a memoryview is several times cheaper than
    a numpy scalar read or write, and both ends touch a few words per command)."""

    def __init__(self, mm, size: int):
        self.mm = mm
        self.size = size
        self.u32 = np.ndarray((size // 4,), np.uint32, buffer=mm)
        self.u8 = np.ndarray((size,), np.uint8, buffer=mm)
        self._mv = memoryview(mm)
        self.w32 = self._mv.cast("I")
        self.w64 = self._mv.cast("Q")

    def close(self):
        # Drop the views before the mmap so it can be closed.
        self.u32 = self.u8 = None
        if self._mv is not None:
            self.w32.release()
            self.w64.release()
            self._mv.release()
            self._mv = self.w32 = self.w64 = None


# ---------------------------------------------------------------- host side

class HostSQ:
    def __init__(self, arena: ArenaView, qid: int, off: int, depth: int, cq=None):
        self.arena, self.qid, self.off, self.depth = arena, qid, off, depth
        self.tail = 0
        self.rung = 0              # the tail the doorbell last said
        self.head = 0              # last SQ head the controller reported
        self.db_word = (DOORBELL_OFF + 8 * qid) // 4
        # I/O SQs: each slot's times and consumed-count (the module docstring;
        # the admin SQ has none)
        self.cq = cq
        self.stamp_word, self.reaped_word, self.snap_word = sq_slot_words(off, depth)
        if cq is None:
            self.snap_word = None

    def free_slots(self) -> int:
        return self.depth - 1 - (self.tail - self.head) % self.depth

    def push(self, opc, flags, cid, nsid, cdw2, cdw3, mptr, prp1, prp2,
             cdw10, cdw11, cdw12, cdw13, cdw14, cdw15) -> None:
        SQE_STRUCT.pack_into(self.arena.mm, self.off + 64 * self.tail, opc, flags, cid,
                             nsid, cdw2, cdw3, mptr, prp1, prp2,
                             cdw10, cdw11, cdw12, cdw13, cdw14, cdw15)
        if self.snap_word is not None:
            a, cq = self.arena, self.cq
            a.w64[self.reaped_word + self.tail] = cq.reaped_ns
            a.w32[self.snap_word + self.tail] = cq.consumed & 0xFFFFFFFF
        self.tail = (self.tail + 1) % self.depth

    def push_raw(self, entry: bytes) -> None:
        self.arena.mm[self.off + 64 * self.tail: self.off + 64 * self.tail + 64] = entry
        if self.snap_word is not None:
            a, cq = self.arena, self.cq
            a.w64[self.reaped_word + self.tail] = cq.reaped_ns
            a.w32[self.snap_word + self.tail] = cq.consumed & 0xFFFFFFFF
        self.tail = (self.tail + 1) % self.depth

    def ring(self) -> bool:
        """Write the tail doorbell; True if the daemon asked to be woken.
        The new SQEs' submit times are the doorbell's: a drive sees a
        command when the doorbell says so, not when its slot was filled."""
        if self.snap_word is not None and self.rung != self.tail:
            t, end, depth, w64, base = self.rung, self.tail, self.depth, self.arena.w64, self.stamp_word
            now = _mono()
            while t != end:
                w64[base + t] = now
                t = t + 1 if t + 1 < depth else 0
            self.rung = end
        a = self.arena.w32
        a[self.db_word] = self.tail
        fence()
        return a[NEED_WAKEUP_WORD] != 0


class HostCQ:
    def __init__(self, arena: ArenaView, qid: int, off: int, depth: int, vector: int):
        self.arena, self.qid, self.off, self.depth, self.vector = arena, qid, off, depth, vector
        self.head = 0
        self.phase = 1
        self.consumed = 0          # CQEs reaped so far (HostSQ tells the controller)
        self.reaped_ns = 0         # when the last of them were
        self.status_word = off // 4 + 3
        self.ext_word = (off + 16 * depth) // 8
        self.db_word = (DOORBELL_OFF + 8 * qid + 4) // 4
        self.armed_word = CQ_ARMED_WORD + qid

    def ready(self) -> bool:
        return (self.arena.w32[self.status_word + 4 * self.head] >> 16) & 1 == self.phase

    def pop_batch(self, limit: int) -> list[tuple]:
        """Consume up to `limit` new CQEs -> [(dw0, dw1, sqhd, sqid, cid, status, device_ns)]."""
        out = []
        a = self.arena
        w32, w64, mm = a.w32, a.w64, a.mm
        while len(out) < limit:
            h = self.head
            if (w32[self.status_word + 4 * h] >> 16) & 1 != self.phase:
                break
            out.append(CQE_STRUCT.unpack_from(mm, self.off + 16 * h) + (w64[self.ext_word + h],))
            h += 1
            if h == self.depth:
                h = 0
                self.phase ^= 1
            self.head = h
        if out:
            w32[self.db_word] = self.head
            self.consumed += len(out)
            self.reaped_ns = _mono()
        return out

    def arm(self, on: bool) -> None:
        self.arena.w32[self.armed_word] = 1 if on else 0
        if on:
            fence()


# -------------------------------------------------------------- device side

class DeviceSQ:
    def __init__(self, arena: ArenaView, qid: int, off: int, depth: int, cqid: int):
        self.arena, self.qid, self.off, self.depth, self.cqid = arena, qid, off, depth, cqid
        self.cq = None                     # its DeviceCQ, looked up by the controller
        self.head = 0
        self.db_word = (DOORBELL_OFF + 8 * qid) // 4
        self.inflight = bytearray(65536)   # by CID: 1 while a command is outstanding
        self.bad_doorbells = 0
        # I/O SQs: each slot's times and consumed-count (the module docstring)
        self.stamp_word, self.reaped_word, self.snap_word = sq_slot_words(off, depth)
        if not qid:
            self.snap_word = None
        self.fetched_at = 0                # slot of the first SQE the last fetch() took

    def written(self, i: int) -> tuple[int, int, int]:
        """(rung, reaped, consumed) for the i-th SQE of the last fetch(): the
        host's clock when it rang the doorbell for it and when it had last
        consumed CQEs before writing it, and how many it had consumed (all
        0: not said, or the admin SQ)."""
        if self.snap_word is None:
            return 0, 0, 0
        slot = (self.fetched_at + i) % self.depth
        w64 = self.arena.w64
        return (w64[self.stamp_word + slot], w64[self.reaped_word + slot],
                self.arena.w32[self.snap_word + slot])

    def fetch(self, limit: int) -> list[tuple]:
        """Consume up to `limit` submitted SQEs as unpacked tuples."""
        tail = self.arena.w32[self.db_word]
        head = self.head
        self.fetched_at = head
        if tail == head:
            return []
        if tail >= self.depth:       # a garbage doorbell write: ignore it
            self.bad_doorbells += 1
            return []
        n = min((tail - head) % self.depth, limit)
        end = head + n
        mm, off = self.arena.mm, self.off
        if n == 1:                   # the usual case at low depth per queue: no slice copy
            self.head = end % self.depth
            return [SQE_STRUCT.unpack_from(mm, off + 64 * head)]
        if end <= self.depth:
            out = list(SQE_STRUCT.iter_unpack(mm[off + 64 * head: off + 64 * end]))
        else:
            out = list(SQE_STRUCT.iter_unpack(mm[off + 64 * head: off + 64 * self.depth]))
            out += SQE_STRUCT.iter_unpack(mm[off: off + 64 * (end - self.depth)])
        self.head = end % self.depth
        return out


class DeviceCQ:
    def __init__(self, arena: ArenaView, qid: int, off: int, depth: int,
                 vector: int, irq_enabled: bool):
        self.arena, self.qid, self.off, self.depth = arena, qid, off, depth
        self.vector, self.irq_enabled = vector, irq_enabled
        self.tail = 0
        self.phase = 1
        self.ext_word = (off + 16 * depth) // 8
        self.head_word = (DOORBELL_OFF + 8 * qid + 4) // 4
        self.armed_word = CQ_ARMED_WORD + qid
        self.sq_ids: set[int] = set()
        self.backlog: list = []       # completions waiting for room
        self.bad_doorbells = 0
        # The modeled completion time of the CQE in each slot; how many CQEs
        # the host has consumed, and the horizon (see horizon()) after each
        # of the last `depth` of them, the current one at consumed % depth.
        self.done_at = [0] * depth
        self.seen_head = 0
        self.consumed = 0
        self.horizons = [0] * depth
        self.epoch = 0                # the controller's timeline it was measured on
        self.pending: list = []       # virtual mode: completions not yet posted, a heap by time

    def room(self) -> int:
        head = self.arena.w32[self.head_word]
        if head >= self.depth:
            self.bad_doorbells += 1
            return 0
        return self.depth - 1 - (self.tail - head) % self.depth

    def horizon(self) -> int:
        """The latest modeled completion time among the CQEs the host has
        consumed, as its CQ head doorbell says: whatever the host submits now,
        it submits after seeing those completions."""
        head = self.arena.w32[self.head_word]
        h, depth, hist = self.seen_head, self.depth, self.horizons
        if head != h and head < depth:
            done, c = self.done_at, self.consumed
            hz = hist[c % depth]
            while h != head:
                if done[h] > hz:
                    hz = done[h]
                c += 1
                hist[c % depth] = hz
                h += 1
                if h == depth:
                    h = 0
            self.seen_head, self.consumed = head, c
        return hist[self.consumed % depth]

    def horizon_at(self, count: int) -> int:
        """The horizon when the host had consumed `count` CQEs (a count its
        SQE slot carries); the current one if the count is not one of the
        last `depth` the host reached."""
        if count > self.consumed:
            self.horizon()
        if not 0 < count <= self.consumed or self.consumed - count >= self.depth:
            count = self.consumed
        return self.horizons[count % self.depth]

    def forget_horizon(self) -> None:
        """Start the horizon afresh (the modeled timeline was restarted)."""
        self.horizon()
        self.horizons = [0] * self.depth

    def post(self, dw0, dw1, sqhd, sqid, cid, status_field_no_phase, device_ns,
             done_ns=0) -> None:
        """Write one CQE; the caller has checked room(). Status word goes last."""
        t = self.tail
        a = self.arena
        self.done_at[t] = done_ns
        a.w64[self.ext_word + t] = device_ns
        base = self.off + 16 * t
        _CQE_HEAD.pack_into(a.mm, base, dw0 & 0xFFFFFFFF, dw1 & 0xFFFFFFFF, sqhd, sqid)
        # DW3 (cid, status, phase) goes last so the entry becomes visible whole.
        a.w32[base // 4 + 3] = cid | (((status_field_no_phase & 0xFFFE) | self.phase) << 16)
        t += 1
        if t == self.depth:
            t = 0
            self.phase ^= 1
        self.tail = t

    def armed(self) -> bool:
        # The CQE just posted must be visible before the flag is read: the
        # client stores the flag, fences and then looks at the CQ (Dekker).
        # Without this fence both sides can miss each other and the client
        # sleeps until its poll timeout.
        fence()
        return self.arena.w32[self.armed_word] != 0
