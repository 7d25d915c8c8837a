"""Garbage collection: victim selection and collection of one line.

Victims are FULL lines. Lines of user streams (>= 2, e.g. KV sequences) are
only taken when they hold no valid page, so GC never copies their pages. A
line with no valid page is always the first choice (an erase, no copy).

Policies (profile [gc] policy):
  greedy        fewest valid pages (NVMeVirt/FEMU: victim pqueue by vpc)
  cost-benefit  max (1 - u) / (2u) * age, u = valid fraction, age = writes
                since the line filled (Rosenblum & Ousterhout, LFS)

Thresholds (FEMU's): background GC when free lines <= (1 - threshold_pct) *
lines, taking only victims at most background_max_valid_pct valid; foreground
(forced) GC when free lines <= (1 - threshold_high_pct) * lines, before the
host may allocate. At least one free line is always kept back for GC itself.
"""
from __future__ import annotations

import errno
import math

import numpy as np

from csdemu.drive.flash.files import BackingError
from csdemu.drive.flash.lines import FULL, STREAM_GC, LineManager


class GcPolicy:
    def __init__(self, profile, lines: int):
        gc = profile.gc
        self.policy = gc.policy
        self.bg_free_lines = max(int(math.floor((1 - gc.threshold_pct / 100.0) * lines)), 2)
        self.fg_free_lines = max(int(math.floor((1 - gc.threshold_high_pct / 100.0) * lines)), 1)
        self.bg_max_valid_frac = gc.background_max_valid_pct / 100.0
        self.reserve_lines = 1          # free lines the host may never take


def select_victim(lm: LineManager, policy: str, *, force: bool, max_valid_frac: float,
                  now_seq: int) -> int | None:
    cand = (lm.state == FULL) & ((lm.stream <= STREAM_GC) | (lm.vpc == 0))
    idx = np.flatnonzero(cand)
    if idx.size == 0:
        return None
    vpc = lm.vpc[idx]
    zero = idx[vpc == 0]
    if zero.size:
        return int(zero[0])
    if policy == "cost-benefit":
        u = vpc / lm.ppl
        age = (now_seq - lm.close_seq[idx]).astype(np.float64) + 1.0
        v = int(idx[np.argmax((1.0 - u) / (2.0 * u) * age)])
    else:
        v = int(idx[np.argmin(vpc)])
    if lm.vpc[v] >= lm.good_pages[v] and lm.good_pages[v] > 0:
        return None                    # nothing to gain
    if not force and lm.vpc[v] > max_valid_frac * lm.ppl:
        return None
    return v


def collect(ftl, line: int, now_ns: int) -> int:
    """Relocate the valid pages of `line`, erase it, return the modeled end
    time. Raises BackingError, with the victim still intact, if there is no
    room for the copies (or the journal cannot be written before the erase)."""
    lm, nand = ftl.lines, ftl.nand
    ppns = lm.valid_in_line(line)
    t = now_ns
    if ppns.size:
        lpns = nand.records_at(ppns)["lpn"]
        data = nand.read(ppns)
        # a page failing its CRC is copied marked uncorrectable: a fresh CRC
        # over its data would return the corruption as good data from now on
        ok = nand.check_each(ppns)
        rd = ftl.charge_reads(ppns, now_ns, pcie=False)
        t = int(rd.max())
        new, t_prog, _ = ftl.place(STREAM_GC, lpns, data, t, None if ok.all() else ~ok)
        if new is None:
            raise BackingError(errno.ENOSPC, "GC: no free line to relocate valid pages to")
        ftl.l2p[lpns] = new
        lm.invalidate(ppns)
        lm.mark_valid(new)
        ftl.counters["gc_pages_copied"] += int(ppns.size)
        t = max(t, t_prog)
    t = ftl.erase_line(line, t)         # syncs the copies first (sync_before_erase)
    ftl.counters["gc_runs"] += 1
    return t
