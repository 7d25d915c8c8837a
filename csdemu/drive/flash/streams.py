"""User streams on the block FTL's flash: the KV layer's pages, and the line
budget between them and the host.

Streams >= 2 (lines.py) belong to users other than the block namespace: the
KV store (csdemu/drive/kv/store.py) gives every sequence its own stream, writes and
reads its pages by PPN and drops a sequence's lines whole. Together they may
hold at most the profile's `kv_lines` lines; the host and GC never take the
free lines kept for them (`kv_unused`), so neither side can starve the other.

UserStreams is mixed into BlockFTL (ftl.py), whose lines, placement, GC and
read charging it uses.
"""
from __future__ import annotations

import numpy as np

from csdemu.drive.flash.files import BackingError
from csdemu.drive.flash.lines import STREAM_GC


class UserStreams:
    def stream_write(self, stream: int, keys: np.ndarray, pages: np.ndarray, t0: int):
        """Program pages into `stream`'s own lines (stream >= 2). `keys` go in
        the OOB lpn field for the owner's recovery. -> (ppns or None, done_ns)."""
        if stream <= STREAM_GC:
            raise ValueError("streams 0 and 1 belong to the block FTL")
        if not self._within_kv_budget(stream, pages.shape[0]):
            return None, t0
        try:
            ppns, t_prog, _ = self.place_room(stream, np.asarray(keys, np.int64), pages, t0,
                                              after_gc=True)
        except BackingError as e:
            if not e.full:
                raise
            self.no_space(e)
            return None, t0
        if ppns is not None:
            self.lines.mark_valid(ppns)
        return ppns, t_prog

    def kv_held(self) -> int:
        """Lines held by user streams (KV sequences)."""
        return self.lines.user_lines()

    def kv_unused(self) -> int:
        """Free lines kept for KV streams that they have not taken yet."""
        return max(0, self.kv_lines - self.kv_held())

    def host_free(self) -> int:
        """Free lines the host and GC may use (GC thresholds count these)."""
        return self.lines.free_count - self.kv_unused()

    def _within_kv_budget(self, stream: int, n: int) -> bool:
        """User streams (KV sequences) may hold at most the profile's kv_lines
        lines, so they can never take the space the block namespace needs."""
        lm = self.lines
        short = max(0, n - lm.open_room(stream))
        return self.kv_held() + -(-short // lm.ppl) <= self.kv_lines

    def stream_read(self, ppns: np.ndarray, t0: int, *, pcie: bool = False):
        """Charge reading pages by PPN and check them -> (ok, done_ns); the
        caller takes the data from the mapping (nand.data) itself."""
        if self.faults.active and self.read_fault(ppns.size):
            return False, int(self.charge_reads(ppns, t0, pcie=pcie).max())
        done = int(self.charge_reads(ppns, t0, pcie=pcie).max()) if ppns.size else t0
        if ppns.size and not self.nand.check(ppns):
            self.media_error(done)
            return False, done
        return True, done

    def invalidate_pages(self, ppns: np.ndarray) -> None:
        self.lines.invalidate(ppns[self.lines.valid[ppns]])

    def release_stream(self, stream: int, t0: int) -> int:
        """Drop every page of `stream` and erase its lines (whole blocks, no copy)."""
        lm = self.lines
        lm.close_stream(stream, self.seq)
        for line in lm.stream_lines(stream).tolist():
            lm.invalidate(lm.valid_in_line(line))
        return self.reclaim_empty(t0)
