"""The block FTL: a log-structured, page-mapped translation layer.

    host LPN --l2p--> PPN --(nand.data[ppn])--> 4 KiB of data
                       |
                       +-- nand.oob[ppn] = (lpn, seq, crc, stream)

Writes go to the host stream's open line (channel-first striping), the old
PPN is invalidated, and GC (gc.py) relocates valid pages out of the emptiest
lines when free lines run low. Every modeled NAND, channel and PCIe cost is
charged on the shared clocks (timing.py); methods take the time the work may
start and return when it ends. The FTL never touches queues or shared
memory; csdemu.drive.flash.nvm_namespace decodes NVMe commands into these calls.
The KV layer's own streams on the same flash, and the line budget between
them and the host, are streams.py's (mixed in); opening, flushing,
checkpoints and closing are durability.py's (mixed in too).
"""
from __future__ import annotations

import logging

import numpy as np

from csdemu.drive.flash import datapath as dp
from csdemu.drive.flash import gc as gcmod
from csdemu.drive.flash.checkpoint import TrimJournal
from csdemu.drive.flash.durability import Durability
from csdemu.drive.flash.faults import FaultInjector
from csdemu.drive.flash.files import BackingError
from csdemu.drive.flash.geometry import Geometry
from csdemu.drive.flash.lines import FIRST_USER_STREAM, STREAM_GC, STREAM_HOST, LineManager
from csdemu.drive.flash.nand import BAD_ERASE, BAD_FACTORY, BAD_PROGRAM, NandArray
from csdemu.drive.flash.streams import UserStreams
from csdemu.drive.flash.timing import Clocks, NandTiming, Op, _pcie, advance_batch

COUNTERS = ("host_pages_written", "host_pages_read", "nand_pages_written", "nand_pages_read",
            "gc_runs", "gc_pages_copied", "erases", "read_failures", "program_failures",
            "erase_failures", "media_errors", "crc_errors", "pages_deallocated", "checkpoints",
            "writes_refused_full")

log = logging.getLogger("csdemu.drive.flash")


class BlockFTL(UserStreams, Durability):
    def __init__(self, profile, data_dir, *, create: bool, sync_before_erase: bool = True,
                 checkpoint_every_pages: int | None = None, preallocate: bool = False,
                 seeded_crc: bool = True):
        self.profile = profile
        self.dir = data_dir
        g = self.geom = Geometry(profile)
        der = profile.derive()
        self.nlpns = der.user_pages
        self.kv_lines = der.kv_lines
        self.pb = g.page_bytes
        self.sync_before_erase = sync_before_erase
        self.nand = NandArray(data_dir, g, create=create, preallocate=preallocate,
                              seeded_crc=seeded_crc)
        if create and profile.faults.bad_block_ppm:
            rng = np.random.default_rng(profile.faults.seed)
            bad = np.flatnonzero(rng.random(g.total_blocks) < profile.faults.bad_block_ppm / 1e6)
            self.nand.mark_bad(bad, BAD_FACTORY)
        self.lines = LineManager(g, self.nand.bad)
        self.lines.backed, self.lines.back = self.nand.backed, self.nand.back_line
        self.timing = NandTiming.from_profile(profile)
        self.prm = self.timing.packed()
        self.clocks = Clocks.create(g.channels, g.ways)
        self.floor = 0          # no operation will start before this (latest arrival)
        self._geo = np.array([g.S, g.channels, g.ways, g.page_bytes], np.int64)
        self._pgeo = np.array([g.S, g.channels, g.ways, g.flash_page_bytes], np.int64)
        self._link = (g.channels, g.ways, self.timing.pcie_mbps, self.timing.pcie_latency_ns)
        self.faults = FaultInjector.from_profile(profile)
        self.gcp = gcmod.GcPolicy(profile, g.lines - self.kv_lines)
        self.journal = TrimJournal(data_dir)
        self.full = False       # the last write found the backing file system full
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.wb = np.zeros(der.write_buffer_pages, np.int64)   # release time per buffer slot
        self.wb_head = 0
        self.ckpt_every = checkpoint_every_pages or max(self.nlpns // 4, 1024)
        self._since_ckpt = 0
        self._bg_next = 0
        self._dirty = False     # programs since the last msync
        self._scr = dp.scratch(64)
        try:
            self.open_l2p(create)
        except BaseException:
            self.nand.close()
            raise

    # ------------------------------------------------------------------ timing
    def _scratch(self, n):
        if self._scr.shape[1] < n:
            self._scr = dp.scratch(max(n, 2 * self._scr.shape[1]))
        return self._scr

    def charge_reads(self, ppns: np.ndarray, start: int, *, pcie: bool) -> np.ndarray:
        """Model reading `ppns` (in order) from `start`; per-op done times."""
        g = self.geom
        ch, lun, nb, page_op = self._scratch(ppns.shape[0])[:4]
        k = dp.read_ops(ppns, g.S, g.channels, g.ways, self.pb, ch, lun, nb, page_op)
        self.counters["nand_pages_read"] += int(ppns.shape[0])
        return advance_batch(Op.READ, ch[:k], lun[:k], start, nb[:k], self.clocks, self.prm,
                             pcie=pcie, floor_ns=self.floor)

    def charge_programs(self, ppns: np.ndarray, start: int):
        """Model programming `ppns` from `start` -> (per-page write-buffer
        release times, last program end)."""
        n = ppns.shape[0]
        rel = np.empty(n, np.int64)
        c = self.clocks
        mx = dp.program_cmd(ppns, self._pgeo, start, self.floor, c.state, c.iv, self.prm,
                            self._scratch(n), rel, c.trace)
        return rel, int(mx)

    def erase_line(self, line: int, t: int) -> int:
        """Erase a line (after its valid pages moved); return the end time."""
        g, nand = self.geom, self.nand
        if self.journal.pending:
            # A page may be invalid only because of a deallocation that is not
            # journaled yet; once the page is erased, a crash would otherwise
            # let recovery fall back to an even older version of that LBA.
            self.journal.commit(sync=self.sync_before_erase)
        if self.sync_before_erase and self._dirty:
            # Likewise the newer versions (and GC copies) of what this line
            # holds must be durable before it goes: a host crash must not tear
            # them while the older version is already erased.
            self.sync()
        blks = g.line_blocks(line)
        good = blks[nand.bad[blks] == 0]
        fail = self.faults.check("erase", good.size)
        if fail is not None:
            for b in good[fail].tolist():
                nand.mark_bad(b, BAD_ERASE)
                self.lines.retire_block(b)
            self.counters["erase_failures"] += int(fail.sum())
        erased = nand.erase_line(line)
        self.counters["erases"] += int(erased.size)
        end = t
        if erased.size:
            ch, lun = g.block_ch_lun(erased)
            end = int(advance_batch(Op.ERASE, ch, lun, t, 0, self.clocks, self.prm,
                                    floor_ns=self.floor).max())
        self.lines.release(line)
        return end

    def pcie(self, start: int, nbytes: int) -> int:
        """Move nbytes over the host link no earlier than start; return arrival."""
        return int(_pcie(int(start), int(nbytes), self.floor, self.clocks.state, self.clocks.iv,
                         *self._link, self.clocks.trace))

    # ------------------------------------------------------------------ placement
    def _program(self, stream, ppns, lpns, pages, poison=None):
        self._dirty = True
        k = ppns.shape[0]
        seqs = np.arange(self.seq, self.seq + k, dtype=np.uint64)
        self.seq += k
        self.nand.program(ppns, pages, lpns, seqs, stream, poison)
        self.counters["nand_pages_written"] += k

    def place(self, stream: int, lpns: np.ndarray, pages: np.ndarray, start: int, poison=None):
        """Allocate, program (remapping failed programs) and charge pages of
        `stream`. Returns (ppns, last program done, per-page release times),
        or (None, start, None) if there is no space. Raises BackingError
        when a backing file refuses the data (none of it is then mapped)."""
        n = lpns.shape[0]
        if stream >= FIRST_USER_STREAM:
            reserve = 0                 # bounded by _within_kv_budget instead
        else:                           # the host and GC never take KV's lines
            reserve = self.kv_unused() + (0 if stream == STREAM_GC else self.gcp.reserve_lines)
        ppns = self.lines.allocate(stream, n, reserve=reserve, seq=self.seq)
        if ppns is None:
            return None, start, None
        rel, t_end = self.charge_programs(ppns, start)
        fail = self.faults.check("program", n) if self.faults.active else None
        if fail is None:
            self._program(stream, ppns, lpns, pages, poison)
            return ppns, t_end, rel
        out, out_rel = ppns.copy(), rel.copy()
        todo = np.arange(n)
        while True:
            ok = ~fail
            self._program(stream, ppns[ok], lpns[todo[ok]], pages[todo[ok]],
                          None if poison is None else poison[todo[ok]])
            for b in np.unique(self.geom.block_of(ppns[fail])).tolist():
                self.nand.mark_bad(b, BAD_PROGRAM)
                self.lines.retire_block(b)
            self.counters["program_failures"] += int(fail.sum())
            todo = todo[fail]
            ppns = self.lines.allocate(stream, todo.size, reserve=0, seq=self.seq)
            if ppns is None:
                return None, start, None
            rel, t = self.charge_programs(ppns, start)
            t_end = max(t_end, t)
            out[todo], out_rel[todo] = ppns, rel
            fail = self.faults.check("program", todo.size)
            if fail is None:
                self._program(stream, ppns, lpns[todo], pages[todo],
                              None if poison is None else poison[todo])
                return out, t_end, out_rel

    def place_room(self, stream: int, lpns: np.ndarray, pages: np.ndarray, t: int,
                   after_gc: bool = False):
        """GC as needed, then place() from `t` (or from GC's end: KV streams);
        when the backing file system is full, erase the lines that hold
        nothing valid (their space stays reserved) and try once more before
        the BackingError goes up."""
        try:
            g = self.gc_if_needed(t)
            return self.place(stream, lpns, pages, max(t, g) if after_gc else t)
        except BackingError as e:
            free = self.lines.free_count
            if not e.full or self.reclaim_empty(t) is None or self.lines.free_count == free:
                raise
        return self.place(stream, lpns, pages, t)

    # ------------------------------------------------------------------ GC
    def gc_if_needed(self, now: int) -> int:
        """Run background / foreground GC as the thresholds say; return end time.
        Background GC looks for a victim at most once per 1/16 line of writes."""
        lm, gp = self.lines, self.gcp
        t = now
        free = self.host_free()
        if free > gp.bg_free_lines:
            return t
        force = free <= gp.fg_free_lines
        if not force:
            if self.seq < self._bg_next:
                return t
            self._bg_next = self.seq + max(1, lm.ppl // 16)
        while True:
            v = gcmod.select_victim(lm, gp.policy, force=force,
                                    max_valid_frac=gp.bg_max_valid_frac, now_seq=self.seq)
            if v is None:
                break
            t = max(t, gcmod.collect(self, v, now))
            if not force or self.host_free() > gp.fg_free_lines:
                break
        return t

    def reclaim_empty(self, now: int) -> int:
        """Erase every full line that holds no valid page (no copying)."""
        lm = self.lines
        t = now
        for line in np.flatnonzero((lm.state == 2) & (lm.vpc == 0)).tolist():
            try:
                t = max(t, self.erase_line(line, now))
            except BackingError as e:       # the lines stay FULL and empty: GC erases them later
                log.warning("reclaiming empty lines: %s", e)
                break
            self.counters["gc_runs"] += 1
        return t

    # ------------------------------------------------------------------ host I/O
    def write(self, lpn0: int, pages: np.ndarray, t0: int, *, fua: bool = False):
        """Host write of whole pages at lpn0.. -> (ok, done_ns)."""
        n = pages.shape[0]
        B = self.wb.shape[0]
        slots = None
        t = t0
        if B:
            if self.wb_head + n <= B:
                slots = slice(self.wb_head, self.wb_head + n)
            else:
                slots = (self.wb_head + np.arange(n)) % B
            self.wb_head = (self.wb_head + n) % B
            t = max(t, int(self.wb[slots].max()))
        t_x = self.pcie(t, n * self.pb)
        lpns = np.arange(lpn0, lpn0 + n, dtype=np.int64)
        try:
            ppns, t_prog, rel = self.place_room(STREAM_HOST, lpns, pages, t_x)
        except BackingError as e:
            if not e.full:
                raise                       # an I/O error: the namespace says Write Fault
            self.no_space(e)
            return False, t_x
        if ppns is None:
            return False, t_x
        if self.full:
            self.full = False
            log.warning("%s: backing file system has room again: writes succeed", self.dir)
        dp.remap(self.l2p, lpn0, ppns, self.lines.valid, self.lines.vpc, self.geom.pages_per_line)
        self.counters["host_pages_written"] += n
        self._since_ckpt += n
        if slots is not None:
            self.wb[slots] = rel
        if fua:
            self.journal.commit(sync=False)
        return True, (t_prog if (fua or not B) else t_x)

    def read(self, lpn0: int, n: int, t0: int):
        """Host read of n pages -> (status_ok, data (n, page_bytes) or None, done_ns).
        `data` may be a zero-copy view of the NAND file."""
        ppns = self.l2p[lpn0:lpn0 + n]
        self.counters["host_pages_read"] += n
        if self.faults.active:
            m = ppns >= 0
            if m.any() and self.read_fault(int(m.sum())):
                return False, None, int(self.charge_reads(ppns[m], t0, pcie=True).max())
        c = self.clocks
        done, run = dp.read_cmd(ppns, self._geo, t0, self.floor, c.state, c.iv, self.prm,
                                self._scratch(n), c.trace)
        if done >= 0:                                  # fast path: all mapped
            self.counters["nand_pages_read"] += n
            if not self.nand.check(ppns):
                return self.media_error(done)
            if run:
                p0 = int(ppns[0])
                return True, self.nand.data[p0:p0 + n], done
            return True, self.nand.data[ppns], done
        m = ppns >= 0
        mp = ppns[m]
        done = t0
        if mp.size:
            done = int(self.charge_reads(mp, t0, pcie=True).max())
        done = max(done, self.pcie(t0, int((~m).sum()) * self.pb))
        if mp.size and not self.nand.check(mp):
            return self.media_error(done)
        out = np.zeros((n, self.pb), np.uint8)
        if mp.size:
            out[m] = self.nand.data[mp]
        return True, out, done

    def read_into(self, lpn0: int, n: int, t0: int, out) -> int:
        """read() of n mapped pages straight into `out` (the host's buffer,
        n * page_bytes uint8) -> done_ns, or -1 with nothing done when a page
        is unmapped or faults are armed (the caller then takes read())."""
        if self.faults.active:
            return -1
        ppns = self.l2p[lpn0:lpn0 + n]
        if n == 1:
            p = int(ppns[0])
            if p < 0 or not (self.nand.verified[p] or self.nand.check(ppns)):
                return -1
        elif (ppns < 0).any() or not self.nand.check(ppns):
            return -1                       # read() reports the failing page
        c = self.clocks
        done = dp.read_into(self.l2p, lpn0, n, self.nand.data, out, self._geo, t0, self.floor,
                            c.state, c.iv, self.prm, self._scratch(n), c.trace)
        if done >= 0:
            cnt = self.counters
            cnt["host_pages_read"] += n
            cnt["nand_pages_read"] += n
        return done

    def media_error(self, done: int):
        """A mapped page failed its CRC: Unrecovered Read Error, no data."""
        self.counters["crc_errors"] += 1
        self.counters["media_errors"] += 1
        return False, None, done

    def read_fault(self, n: int) -> bool:
        """Draw read faults for n pages; on failure count a media error."""
        fail = self.faults.check("read", n)
        if fail is None:
            return False
        self.counters["read_failures"] += int(fail.sum())
        self.counters["media_errors"] += 1
        return True

    def deallocate(self, lpn0: int, n: int) -> None:
        """Unmap lpn0..lpn0+n-1 (DSM deallocate, Write Zeroes); journaled at flush."""
        old = self.l2p[lpn0:lpn0 + n]
        self.lines.invalidate(old[old >= 0])
        self.counters["pages_deallocated"] += int((old >= 0).sum())
        old[:] = -1
        self.journal.add(self.seq, lpn0, n)
        self.seq += 1

    def restart_timeline(self, now: int) -> None:
        """Start the modeled timeline afresh at `now`: every LUN, bus and
        write-buffer slot is free. Virtual mode lets modeled work run ahead of
        the wall clock; real-time mode must not turn that into real waiting."""
        self.clocks.reset(now)
        np.minimum(self.wb, now, out=self.wb)

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict:
        ec = self.nand.erase_count
        good = self.nand.bad == 0
        pe = ec[good] if good.any() else ec
        c = dict(self.counters)
        hw = max(c["host_pages_written"], 1)
        c.update(
            waf=c["nand_pages_written"] / hw if c["host_pages_written"] else 0.0,
            pe_min=int(pe.min()), pe_max=int(pe.max()), pe_avg=float(pe.mean()),
            free_lines=self.lines.free_count, total_lines=self.geom.lines,
            bad_blocks=int((~good).sum()),
            factory_bad_blocks=int((self.nand.bad == BAD_FACTORY).sum()),
            valid_pages=int(self.lines.vpc.sum()), mapped_lpns=int((self.l2p >= 0).sum()),
            channel_busy_ns=[int(x) for x in self.clocks.ch_busy],
            write_seq=int(self.seq),
        )
        return c


__all__ = ["BlockFTL", "COUNTERS"]
