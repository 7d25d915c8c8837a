"""The block FTL's durability: opening (format or recover), flush,
checkpoints, close, and a backing file system that is full.

Durability is mixed into BlockFTL (ftl.py), whose L2P, journal and NAND it
uses. What each step guarantees is in docs/architecture.md ("Durability and
recovery"); checkpoint.py and recovery.py hold the file formats and rules.
"""
from __future__ import annotations

import logging

import numpy as np

from csdemu.drive.flash.checkpoint import L2P_DTYPE, mark_unclean, save_checkpoint, unmapped_runs
from csdemu.drive.flash.files import BackingError
from csdemu.drive.flash.recovery import recover

log = logging.getLogger("csdemu.drive.flash")


class Durability:
    def open_l2p(self, create: bool) -> None:
        """A fresh L2P and its first checkpoint, or the recovered one."""
        if create:
            self.l2p = np.full(self.nlpns, -1, L2P_DTYPE)
            self.seq = 1
            self.recovery = None
            self.checkpoint(clean=False)
            return
        r, notes, fresh = recover(self.nand, self.nlpns, self.dir, self.journal)
        self.l2p, self.seq, self.recovery = r.l2p, r.next_seq, r
        self.lines.rebuild(r.lines, r.valid)
        self.nand.mark_torn(r.torn_pages)
        r.lines = None
        for note in notes:
            log.warning("%s: %s", self.dir, note)
        if fresh:
            self._try_checkpoint()
        else:
            mark_unclean(self.dir)

    def sync(self) -> None:
        self.nand.sync()
        self._dirty = False

    def flush(self, now: int) -> int:
        """Make everything written so far durable; return the modeled end time.
        Raises BackingError if the journal or the data cannot be made durable."""
        trims = len(self.journal.pending)
        self.sync()
        self.journal.commit(sync=True, synced_seq=self.seq - 1)
        if self._since_ckpt >= self.ckpt_every or trims > 4096:
            self._try_checkpoint()
        wb_last = int(self.wb.max()) if self.wb.size else 0
        return max(now, self.clocks.next_idle_ns(), wb_last)

    def checkpoint(self, clean: bool) -> None:
        """Write the L2P and start the journal afresh from it. Raises
        OSError or BackingError with the old checkpoint and journal intact."""
        self.sync()
        self.journal.commit(sync=True)      # every trim is in the old journal first
        S = self.seq - 1
        save_checkpoint(self.dir, self.l2p, S, clean)
        self.journal.rewrite(S, unmapped_runs(self.l2p, S + 1))
        self._since_ckpt = 0
        self.counters["checkpoints"] += 1

    def _try_checkpoint(self) -> None:
        """A checkpoint only bounds the next recovery: one that cannot be
        written (a full disk) is skipped and tried again as much later."""
        try:
            self.checkpoint(clean=False)
        except (OSError, BackingError) as e:
            self._since_ckpt = 0
            log.warning("%s: checkpoint skipped (%s); recovery reads the journal and OOB "
                        "records since the last one", self.dir, e)

    def close(self) -> None:
        """Checkpoint (marked clean) and close; if the checkpoint cannot be
        written the files are closed anyway and the error is raised."""
        if self.nand.data is None:
            return
        try:
            self.checkpoint(clean=True)
        except (OSError, BackingError) as e:
            raise BackingError(getattr(e, "errno", 0), "writing the clean checkpoint (the next "
                               "start recovers from the journal and OOB records)") from None
        finally:
            self.nand.close()

    def no_space(self, e: BackingError) -> None:
        self.counters["writes_refused_full"] += 1
        if not self.full:
            self.full = True
            log.warning("%s: %s: writes fail with Capacity Exceeded until there is room",
                        self.dir, e)
