"""Lines (superblocks), streams and the page allocator.

A line is block index b on every (channel, LUN, plane): its pages are the PPN
range [b * pages_per_line, (b + 1) * pages_per_line), in channel-first order
(see geometry.py). Each line is FREE, OPEN (owned by one stream, which
allocates from it through a cursor) or FULL::

      FREE --open(stream)--> OPEN --cursor reaches the end--> FULL
        ^                                                      |
        +------------------- erase (GC or reclaim) ------------+
      (a line none of whose blocks is good any more is RETIRED for good)

Streams separate data with different lifetimes into different erase blocks.
Stream 0 is host writes to the block namespace, stream 1 is GC relocation,
and streams >= 2 are free for other users: a KV-cache layer gives every
sequence its own stream, so a sequence's pages fill whole lines (one erase
block per LUN, every channel busy on a read) and `release_stream()` leaves
those lines with no valid page -- erasable without copying anything.
GC only ever *copies* pages of streams 0 and 1; lines of other streams are
reclaimed when they hold no valid page.

The cursor skips positions that fall in bad blocks. `allocate` either returns
all n PPNs or None (no space, the caller backs off), never a partial result.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from csdemu.drive.flash.files import BackingError
from csdemu.drive.flash.geometry import Geometry

FREE, OPEN, FULL, RETIRED = 0, 1, 2, 3
STREAM_HOST, STREAM_GC = 0, 1
_VPC_LINES = 1024       # lines per step when counting valid pages at restart
FIRST_USER_STREAM = 2


class LineManager:
    def __init__(self, geom: Geometry, bad_blocks: np.ndarray):
        g = geom
        self.geom = g
        self.ppl = g.pages_per_line
        self.state = np.zeros(g.lines, np.uint8)
        self.stream = np.full(g.lines, -1, np.int32)
        self.vpc = np.zeros(g.lines, np.int64)          # valid pages per line
        self.close_seq = np.zeros(g.lines, np.int64)    # write seq when the line filled
        self.valid = np.zeros(g.total_pages, bool)      # per-PPN valid bit
        self.cursor: dict[int, list] = {}               # stream -> [line, next position]
        self.free: deque[int] = deque(range(g.lines))
        self._bad = bad_blocks                          # live view of nand.blocks["bad"]
        self.backed = None      # per line: backing space reserved (NandArray.backed), or None
        self.back = None        # reserve a line's backing space (NandArray.back_line)
        self.good_pages = np.zeros(g.lines, np.int64)
        self.refresh_bad()

    # -- bad blocks -------------------------------------------------------------
    def refresh_bad(self) -> None:
        g = self.geom
        bad_per_line = (self._bad.reshape(g.lines, g.blocks_per_line) != 0).sum(axis=1)
        self.has_bad = bad_per_line > 0
        self.good_pages = (g.blocks_per_line - bad_per_line) * g.pages_per_block

    def retire_block(self, blk: int) -> None:
        """A block went bad: the cursor of its line skips it from now on."""
        line = blk // self.geom.blocks_per_line
        self.has_bad[line] = True
        self.good_pages[line] = max(0, self.good_pages[line] - self.geom.pages_per_block)

    def _good_positions(self, line: int, lo: int, hi: int) -> np.ndarray:
        pos = np.arange(lo, hi, dtype=np.int64)
        if not self.has_bad[line]:
            return pos
        g = self.geom
        blk = line * g.blocks_per_line + (pos // g.S) % g.blocks_per_line
        return pos[self._bad[blk] == 0]

    # -- allocation -------------------------------------------------------------
    @property
    def free_count(self) -> int:
        return len(self.free)

    def open_room(self, stream: int) -> int:
        """Pages still allocatable in `stream`'s open line."""
        cur = self.cursor.get(stream)
        if cur is None:
            return 0
        line, pos = cur
        if not self.has_bad[line]:
            return self.ppl - pos
        return int(self._good_positions(line, pos, self.ppl).size)

    def can_allocate(self, stream: int, n: int, reserve: int = 0) -> bool:
        room = self.open_room(stream)
        if room >= n:
            return True
        usable = list(self.free)[:max(0, len(self.free) - reserve)]
        for line in usable:
            room += int(self.good_pages[line])
            if room >= n:
                return True
        return False

    def allocate(self, stream: int, n: int, *, reserve: int = 0, seq: int = 0) -> np.ndarray | None:
        """n PPNs for `stream`, or None if that would leave fewer than
        `reserve` free lines. `seq` stamps lines that fill up (for GC age)."""
        if not self.can_allocate(stream, n, reserve):
            return None
        out = []
        need = n
        while need:
            cur = self.cursor.get(stream)
            if cur is None:
                cur = self._open(stream)
            line, pos = cur
            base = line * self.ppl
            if not self.has_bad[line]:
                k = min(need, self.ppl - pos)
                out.append(np.arange(base + pos, base + pos + k, dtype=np.int64))
                cur[1] = pos + k
                end_reached = cur[1] >= self.ppl
            else:
                good = self._good_positions(line, pos, self.ppl)
                take = good[:need]
                k = take.size
                if k:
                    out.append(base + take)
                    cur[1] = int(take[-1]) + 1
                end_reached = k == good.size
            need -= k
            if end_reached:
                self._close(stream, seq)
        return out[0] if len(out) == 1 else np.concatenate(out)

    def _take_free(self) -> int:
        """The next free line (FIFO, which rotates wear) whose backing space
        can be reserved; on a full file system, the first free line that
        already has its space (an erased one), so trims and overwrites can
        still make room. Raises BackingError when there is none."""
        line = self.free[0]
        if self.backed is not None and not self.backed[line]:
            try:
                self.back(line)
            except BackingError:
                ready = [x for x in self.free if self.backed[x]]
                if not ready:
                    raise
                line = ready[0]
        self.free.remove(line)
        return line

    def _open(self, stream: int) -> list:
        while True:
            line = self._take_free()
            self.state[line] = OPEN
            self.stream[line] = stream
            if self.good_pages[line] > 0:
                break
            self.state[line] = RETIRED      # nothing usable: all its blocks are bad
            self.stream[line] = -1
        cur = [line, 0]
        self.cursor[stream] = cur
        return cur

    def _close(self, stream: int, seq: int) -> None:
        line = self.cursor.pop(stream)[0]
        self.state[line] = FULL
        self.close_seq[line] = seq

    def close_stream(self, stream: int, seq: int = 0) -> None:
        """Stop allocating from `stream`'s open line (its rest stays unused)."""
        if stream in self.cursor:
            self._close(stream, seq)

    # -- validity ---------------------------------------------------------------
    def mark_valid(self, ppns: np.ndarray) -> None:
        self.valid[ppns] = True
        self._count(ppns, +1)

    def invalidate(self, ppns: np.ndarray) -> None:
        if ppns.size == 0:
            return
        self.valid[ppns] = False
        self._count(ppns, -1)

    def _count(self, ppns: np.ndarray, sign: int) -> None:
        lines = ppns // self.ppl
        if lines.size and lines[0] == lines[-1] and (lines.size < 3 or (lines == lines[0]).all()):
            self.vpc[lines[0]] += sign * lines.size
        else:
            np.add.at(self.vpc, lines, sign)

    def valid_in_line(self, line: int) -> np.ndarray:
        lo = line * self.ppl
        return lo + np.flatnonzero(self.valid[lo:lo + self.ppl])

    def release(self, line: int) -> None:
        """After erase: the line is FREE again (RETIRED if no block of it is good)."""
        lo = line * self.ppl
        self.valid[lo:lo + self.ppl] = False
        self.vpc[line] = 0
        self.stream[line] = -1
        if self.good_pages[line] > 0:
            self.state[line] = FREE
            self.free.append(line)
        else:
            self.state[line] = RETIRED

    def user_lines(self) -> int:
        """Lines held by user streams (>= FIRST_USER_STREAM). A line has a
        stream exactly while it is OPEN or FULL (_open sets it; release and
        rebuild clear it), so the stream column alone says."""
        return int(np.count_nonzero(self.stream >= FIRST_USER_STREAM))

    def stream_lines(self, stream: int) -> np.ndarray:
        return np.flatnonzero((self.stream == stream) & (self.state != FREE))

    def used_fraction(self) -> float:
        return 1.0 - len(self.free) / self.geom.lines

    # -- restart ------------------------------------------------------------------
    def rebuild(self, summary, valid: np.ndarray) -> None:
        """Recompute every line's state from recovery's LineSummary of the
        OOB records (corrupt ones present, of stream 0 and seq 0) and a valid
        bitmap. A partly programmed line becomes the open line of its stream
        again; a second one for the same stream is closed."""
        g = self.geom
        self.valid = valid
        self.vpc = np.zeros(g.lines, np.int64)
        for l0 in range(0, g.lines, _VPC_LINES):        # bounded temporaries
            part = valid[l0 * self.ppl:(l0 + _VPC_LINES) * self.ppl]
            self.vpc[l0:l0 + part.size // self.ppl] = \
                np.count_nonzero(part.reshape(-1, self.ppl), axis=1)
        self.refresh_bad()
        self.cursor = {}
        self.free = deque()
        self.state[:] = FREE
        self.stream[:] = -1
        lasts, streams, seqs = (summary.last.tolist(), summary.stream.tolist(),
                                summary.max_seq.tolist())
        for line in range(g.lines):
            last = lasts[line]
            if last < 0:
                if self.good_pages[line] > 0:
                    self.free.append(line)
                else:
                    self.state[line] = RETIRED
                continue
            st = streams[line]
            self.stream[line] = st
            self.close_seq[line] = seqs[line]
            rest = self._good_positions(line, last + 1, self.ppl)
            if rest.size and st not in self.cursor:
                self.state[line] = OPEN
                self.cursor[st] = [line, last + 1]
            else:
                self.state[line] = FULL
