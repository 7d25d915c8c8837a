"""NAND / channel / PCIe timing: a pure resource model over int64 clocks.

This module knows nothing about the FTL, files or pages' contents. It keeps,
per resource, the virtual time at which that resource is next free (NVMeVirt's
``next_lun_avail_time`` and channel model, FEMU's ``next_ch_avail_time``), and
`advance` charges one operation against them, returning its completion time.
The step order follows NVMeVirt's ``ssd_advance_nand()``:

    READ     LUN:  [start = max(t, lun_free)] --tR--> sensed
             bus:  first idle gap >= sensed --xfer--> done   (LUN held until done)
             then, if `pcie`, the link: first idle gap >= done --link xfer-->
    PROGRAM  bus:  first idle gap >= max(t, lun_free) --xfer--> loaded
             LUN:  loaded --tPROG--> done
    ERASE    LUN:  [max(t, lun_free)] --tBERS--> done

``tR`` is ``tR_4k_ns`` for reads sensing at most 4 KiB when that knob is set
(NVMeVirt's partial-page read), else ``tR_ns``. A read senses ``nbytes``
unless ``sense_bytes`` says otherwise: a column read (ONFI 4.x "Change Read
Column", 05h-E0h) senses the whole page into the die's page register, then
clocks only the columns it needs over the channel. Transfer times are
``nbytes * 1000 / mbps`` ns (MB = 10^6 B) plus ``channel_xfer_overhead_ns``;
a bandwidth of 0 means "not modeled" (transfer takes 0 ns).

Operations are charged in the order they are given. A LUN is a FIFO: an
operation waits for everything booked on its die before it (no erase or
program suspend). A bus (each channel, and the PCIe link) keeps its future
busy intervals, so a transfer may use an idle gap before a transfer booked
earlier but due later -- as NVMeVirt's time-slot channel model allows -- and
one read stuck behind a 2 ms erase does not hold up the bus for other dies.

Everything is integer nanoseconds on the controller clock. The batch forms
(`advance_batch`) run a Numba loop, so charging 32 pages costs about a
microsecond. Typical use::

    clk = Clocks.create(channels=8, ways=16)
    t = NandTiming.from_profile(profile)
    done = advance(Op.READ, ch=3, lun=0, start_ns=now, nbytes=4096, clocks=clk, timing=t)
    dones = advance_batch(Op.READ, ch_arr, lun_arr, now, 4096, clk, t, pcie=True)
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numba
import numpy as np

from csdemu.drive.flash import trace_ring
from csdemu.drive.flash.bus import BUS_SLOTS, book, forget_before
from csdemu.drive.flash.trace_ring import emit


class Op(IntEnum):
    READ = 0
    PROGRAM = 1
    ERASE = 2


@dataclass(frozen=True, slots=True)
class NandTiming:
    """The scalar parameters the model needs (units in the names)."""
    tR_ns: int
    tR_4k_ns: int
    tPROG_ns: int
    tBERS_ns: int
    channel_mbps: int
    channel_xfer_overhead_ns: int
    pcie_mbps: int
    pcie_latency_ns: int

    @classmethod
    def from_profile(cls, profile) -> "NandTiming":
        t, p = profile.timing, profile.pcie
        return cls(tR_ns=t.tR_ns, tR_4k_ns=t.tR_4k_ns or t.tR_ns, tPROG_ns=t.tPROG_ns,
                   tBERS_ns=t.tBERS_ns, channel_mbps=t.channel_mbps,
                   channel_xfer_overhead_ns=t.channel_xfer_overhead_ns,
                   pcie_mbps=p.bandwidth_mbps, pcie_latency_ns=p.latency_ns)

    def packed(self) -> np.ndarray:
        return np.array([self.tR_ns, self.tR_4k_ns, self.tPROG_ns, self.tBERS_ns,
                         self.channel_mbps, self.channel_xfer_overhead_ns,
                         self.pcie_mbps, self.pcie_latency_ns], dtype=np.int64)


@dataclass(slots=True)
class Clocks:
    """Mutable resource state (ns), plus busy counters.

    LUNs are FIFO: ``lun_avail[ch, lun]`` is when the die is next free.
    Buses (each channel, and the PCIe link) keep a sorted list of future busy
    intervals so a transfer can use an idle gap before a transfer booked
    earlier but due later (NVMeVirt's channel model does this with time-slot
    credits): a read that waits 2 ms behind an erase does not hold up the bus
    or the link for the other LUNs. ``ch_avail`` / ``pcie_avail`` are the end
    of the last booked transfer. Intervals ending before the ``floor_ns`` a
    caller passes (the arrival time of the current command, which only grows)
    are forgotten; if a bus runs out of slots its BUS_MERGE earliest intervals
    are fused into one, which only ever makes the model more conservative.

    All counters live in one int64 buffer (`state`) and all intervals in one
    (`iv`), so a compiled kernel takes two arrays; the named fields are views.
    """
    channels: int
    ways: int
    state: np.ndarray         # int64 buffer behind the views below
    iv: np.ndarray            # int64 [2, channels + 1, BUS_SLOTS]: starts, ends; row C = PCIe
    lun_avail: np.ndarray     # int64 [channels, ways]
    lun_busy: np.ndarray      # int64 [channels, ways]: ns spent in tR/tPROG/tBERS
    ch_avail: np.ndarray      # int64 [channels]
    ch_busy: np.ndarray       # int64 [channels]: ns spent transferring
    pcie_avail: np.ndarray    # int64 [1]
    pcie_busy: np.ndarray     # int64 [1]
    iv_n: np.ndarray          # int64 [channels + 1]: intervals in use per bus
    #: where the kernels record each interval they charge (trace_ring.py);
    #: a drive that does not trace keeps the header-only ring
    trace: np.ndarray = None

    def __post_init__(self):
        if self.trace is None:
            self.trace = trace_ring.off()

    @classmethod
    def create(cls, channels: int, ways: int) -> "Clocks":
        C, L = channels, ways
        st = np.zeros(2 * C * L + 2 * C + 2 + C + 1, np.int64)
        o = 2 * C * L
        return cls(C, L, st, np.zeros((2, C + 1, BUS_SLOTS), np.int64),
                   st[:C * L].reshape(C, L), st[C * L:o].reshape(C, L),
                   st[o:o + C], st[o + C:o + 2 * C], st[o + 2 * C:o + 2 * C + 1],
                   st[o + 2 * C + 1:o + 2 * C + 2], st[o + 2 * C + 2:])

    @property
    def iv_start(self) -> np.ndarray:
        return self.iv[0]

    @property
    def iv_end(self) -> np.ndarray:
        return self.iv[1]

    def next_idle_ns(self) -> int:
        """When every LUN, channel and the link are idle (NVMeVirt ssd_next_idle_time)."""
        return int(max(self.lun_avail.max(), self.ch_avail.max(), self.pcie_avail[0]))

    def reset(self, now_ns: int = 0) -> None:
        for a in (self.lun_avail, self.ch_avail, self.pcie_avail):
            a.fill(now_ns)
        self.iv_n.fill(0)

    def forget_before(self, floor_ns: int) -> None:
        """Drop bus intervals that end by `floor_ns` (what any booking with
        that floor does first). Callers whose batch forms pass no floor use it
        so a bus never scans, or merges into, history that cannot matter."""
        forget_before(self.state, self.iv, 2 * self.channels * self.ways + 2 * self.channels + 2,
                int(floor_ns))


def xfer_ns(nbytes: int, mbps: int) -> int:
    """Transfer time of `nbytes` at `mbps` (10^6 B/s); 0 if not modeled."""
    if mbps <= 0:
        return 0
    return (int(nbytes) * 1000 + mbps // 2) // mbps


# --------------------------------------------------------------------------- kernels

@numba.njit(cache=True, nogil=True, inline="always")
def _xfer(nbytes, mbps):
    if mbps <= 0:
        return 0
    return (nbytes * 1000 + mbps // 2) // mbps


@numba.njit(cache=True, nogil=True)
def _run(op, ch, lun, nbytes, start, do_pcie, floor, st, iv, C, L, prm, out, tr):
    """Charge ops in order on the state buffer `st` (layout: Clocks.create);
    a read senses as many bytes as it transfers."""
    return _run_sensed(op, ch, lun, nbytes, nbytes, start, do_pcie, floor, st, iv, C, L,
                       prm, out, tr)


@numba.njit(cache=True, nogil=True)
def _run_sensed(op, ch, lun, nbytes, sense, start, do_pcie, floor, st, iv, C, L, prm, out,
                tr):
    """`_run` where a read senses `sense` bytes (tR) and moves `nbytes` (the
    channel and link); each of `nbytes`, `sense`, `start` has one entry per
    op or one for all. Each interval charged goes into the trace ring `tr`
    when its header says on (trace_ring.py)."""
    tR, tR4k, tPROG, tBERS = prm[0], prm[1], prm[2], prm[3]
    ch_mbps, ch_ovh, pcie_mbps, pcie_lat = prm[4], prm[5], prm[6], prm[7]
    o_lb = C * L                  # lun_busy
    o_ca = 2 * C * L              # ch_avail
    o_cb = o_ca + C               # ch_busy
    o_pa = o_cb + C               # pcie_avail
    o_pb = o_pa + 1               # pcie_busy
    o_n = o_pb + 1                # interval counts
    n = ch.shape[0]
    # a 64-bit divide per op was most of a 30k-page attend's charge; runs of
    # one size (whole pages, or one row count) reuse the last quotient
    last_nb = -1
    ch_d = 0
    pcie_d = 0
    traced = tr[0, 0] != 0
    for i in range(n):
        c = ch[i]
        li = c * L + lun[i]
        nb = nbytes[i] if nbytes.shape[0] > 1 else nbytes[0]
        if nb != last_nb:
            last_nb = nb
            ch_d = _xfer(nb, ch_mbps) + ch_ovh
            pcie_d = _xfer(nb, pcie_mbps)
        sb = sense[i] if sense.shape[0] > 1 else sense[0]
        t0 = start[i] if start.shape[0] > 1 else start[0]
        la = st[li]
        s = t0 if t0 > la else la
        if op == 0:                                  # READ: array, then bus
            r = tR4k if sb <= 4096 else tR
            d = ch_d
            xs = book(iv, st, o_n, c, s + r, d, floor, c * L, L)
            xe = xs + d
            if xe > st[o_ca + c]:
                st[o_ca + c] = xe
            st[o_cb + c] += d
            st[li] = xe                              # die held until its data left
            st[o_lb + li] += r
            done = xe
            if traced:
                emit(tr, 0, li, s, s + r, sb)
                emit(tr, 3, c, xs, xe, nb)
            if do_pcie:
                pd = pcie_d
                ps = book(iv, st, o_n, C, xe, pd, floor, 0, 0)
                if ps + pd > st[o_pa]:
                    st[o_pa] = ps + pd
                st[o_pb] += pd
                done = ps + pd + pcie_lat
                if traced:
                    emit(tr, 4, 0, ps, ps + pd, nb)
        elif op == 1:                                # PROGRAM: bus, then array
            d = ch_d
            xs = book(iv, st, o_n, c, s, d, floor, c * L, L)
            xe = xs + d
            if xe > st[o_ca + c]:
                st[o_ca + c] = xe
            st[o_cb + c] += d
            done = xe + tPROG
            st[li] = done
            st[o_lb + li] += tPROG
            if traced:
                emit(tr, 3, c, xs, xe, nb)
                emit(tr, 1, li, xe, done, nb)
        else:                                        # ERASE: array only
            done = s + tBERS
            st[li] = done
            st[o_lb + li] += tBERS
            if traced:
                emit(tr, 2, li, s, done, 0)
        out[i] = done
    return 0


@numba.njit(cache=True, nogil=True)
def _pcie(start, nbytes, floor, st, iv, C, L, mbps, lat, tr):
    o_pa = 2 * C * L + 2 * C
    d = _xfer(nbytes, mbps)
    s = book(iv, st, o_pa + 2, C, start, d, floor, 0, 0)
    if s + d > st[o_pa]:
        st[o_pa] = s + d
    st[o_pa + 1] += d
    if tr[0, 0] != 0:
        emit(tr, 4, 0, s, s + d, nbytes)
    return s + d + lat


def _as_i64(x) -> np.ndarray:
    if isinstance(x, np.ndarray) and x.dtype == np.int64:
        return x
    return np.atleast_1d(np.asarray(x, dtype=np.int64))


def advance_batch(op: Op, ch, lun, start_ns, nbytes, clocks: Clocks, timing,
                  *, pcie: bool = False, floor_ns: int = 0,
                  out: np.ndarray | None = None, sense_bytes=None) -> np.ndarray:
    """Charge len(ch) operations of one kind, in order; return their done times.

    `ch`, `lun` are int arrays; `start_ns` and `nbytes` are scalars or arrays of
    the same length. With ``pcie=True`` (reads only) each page also crosses the
    host link after its channel transfer (NVMeVirt's interleave_pci_dma), and
    the returned time is when it reached the host. `floor_ns` is a time no
    later operation will start before (e.g. the current command's arrival);
    bus history older than it is dropped. `sense_bytes` (reads; scalar or
    array, default `nbytes`) is what each read senses, which sets its tR,
    when it moves fewer bytes than that (a column read of part of a page).
    """
    ch = _as_i64(ch)
    lun = _as_i64(lun)
    if out is None:
        out = np.empty(ch.shape[0], np.int64)
    prm = timing if isinstance(timing, np.ndarray) else timing.packed()
    nb = _as_i64(nbytes)
    sense = nb if sense_bytes is None else _as_i64(sense_bytes)
    _run_sensed(int(op), ch, lun, nb, sense, _as_i64(start_ns), bool(pcie), int(floor_ns),
                clocks.state, clocks.iv, clocks.channels, clocks.ways, prm, out, clocks.trace)
    return out


def advance(op: Op, ch: int, lun: int, start_ns: int, nbytes: int, clocks: Clocks,
            timing, *, pcie: bool = False, floor_ns: int = 0) -> int:
    """Charge one operation; return its completion time (ns)."""
    return int(advance_batch(op, ch, lun, start_ns, nbytes, clocks, timing, pcie=pcie,
                             floor_ns=floor_ns)[0])


def pcie_transfer(start_ns: int, nbytes: int, clocks: Clocks, timing, *, floor_ns: int = 0) -> int:
    """Move `nbytes` over the host link no earlier than `start_ns`; return arrival."""
    if isinstance(timing, np.ndarray):
        mbps, lat = int(timing[6]), int(timing[7])
    else:
        mbps, lat = timing.pcie_mbps, timing.pcie_latency_ns
    return int(_pcie(int(start_ns), int(nbytes), int(floor_ns), clocks.state, clocks.iv,
                     clocks.channels, clocks.ways, mbps, lat, clocks.trace))
