"""The in-storage attention engine: runs the per-channel kernels over a
layer's pages and charges the command on the drive's clocks.

Dense: every flash page of the batch's layer is read (its real channel and
LUN from the PPN), the kernels compute per-channel partials and merge them
by log-sum-exp, and csdemu.drive.kv.attend_timing turns the pages and the FLOP counts into
the modeled time. SparF: only the pages the kernel's filters pass are read;
the K copy's pages move whole, but of a token page only the selected tokens'
rows cross the channel (a NAND column read: the page is sensed whole into the
die's page register, ONFI 4.x Change Read Column picks the columns clocked
out). So `pages_read_flash` counts pages sensed (tR each) and
`bytes_read_flash` the bytes moved over the channels.
"""
from __future__ import annotations

import os
import time

import numba
import numpy as np

from csdemu.drive.kv.attend_timing import AttendWork, EngineClock, EngineRates, attend_time, dense_work, sparf_work
from kernels import counters as C
from kernels.attention import dense_attention, new_counters, sparf_attention
from nvme_cmds.logs import ENGINE_LOG, MAX_CHANNELS


class EngineStats:
    FIELDS = ("attends", "sparf_attends", "appends", "tokens_appended", "pages_programmed",
              "reclaims", "pages_read_flash", "pages_read_dram", "pages_skipped",
              "bytes_read_flash", "pcie_in_ns", "flash_ns", "compute_ns", "pcie_out_ns", "device_ns",
              "kernel_wall_ns", "charge_wall_ns")

    def __init__(self, nchannels: int):
        self.c = dict.fromkeys(self.FIELDS, 0)
        self.channel_bytes = np.zeros(nchannels, np.int64)
        self.channel_pages = np.zeros(nchannels, np.int64)

    def as_log(self, kv_namespaces: int, sequences: int) -> bytes:
        rec = np.zeros(1, ENGINE_LOG)
        rec["version"] = 1
        n = min(len(self.channel_bytes), MAX_CHANNELS)
        rec["nchannels"] = n
        rec["kv_namespaces"] = kv_namespaces
        rec["sequences"] = sequences
        for k, v in self.c.items():
            rec[k] = v
        rec["channel_bytes"][0, :n] = self.channel_bytes[:n]
        rec["channel_pages"][0, :n] = self.channel_pages[:n]
        return rec.tobytes()


# Below this many pages a layer's attention runs on one thread even when more
# are allowed: a parallel region's fork/join costs more than it saves.
PARALLEL_MIN_PAGES = 512

# A dense attend reading more KV than a quarter of the machine's memory is
# streamed (Engine._dense_streamed) in pieces of PIECE_BYTES: its pages would
# not stay in the page cache anyway, and faulted in one by one they come off
# the disk at half its rate. Below that a decode loop's KV stays cached and
# mapped between steps (unmapping it would cost each step 18 % more wall).
STREAM_SHARE_OF_RAM = 0.25
PIECE_BYTES = 256 << 20         # 150 ms of a 1.65 GB/s disk: reads stay queued


def stream_bytes() -> int:
    return max(PIECE_BYTES, int(STREAM_SHARE_OF_RAM * os.sysconf("SC_PAGE_SIZE")
                                * os.sysconf("SC_PHYS_PAGES")))


class Engine:
    """One per drive: the engine clock and statistics are shared by all KV namespaces."""

    def __init__(self, ftl, profile, threads: int = 1):
        self.ftl = ftl
        self.geom = ftl.geom
        self.rates = EngineRates.from_profile(profile)
        self.clock = EngineClock()
        self.nch = self.geom.channels
        self.stats = EngineStats(self.nch)
        self.counters = new_counters(self.nch)
        # One thread by default: the daemon shares the machine with the host
        # process, and a parallel region stalls until every worker is scheduled
        # (on a busy 2-core machine 2 threads ran a layer 3x slower than 1).
        self.max_threads = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))

    def restart_timeline(self, now_ns: int) -> None:
        self.clock.avail_ns = min(self.clock.avail_ns, now_ns)

    def attend(self, store, seqs, layer, q, out, now, sparse=None) -> int:
        """Attention of q [B, Hq, D] over each sequence's layer into out; -> done_ns."""
        s = store.shape
        k_tab, v_tab, lens = store.token_tables(seqs, layer)
        B, H, G = k_tab.shape
        numba.set_num_threads(1 if k_tab.size < PARALLEL_MIN_PAGES else self.max_threads)
        group_channel = np.broadcast_to(np.arange(G, dtype=np.int32) % self.nch, (B, G))
        groups = (lens.astype(np.int64) + s.tokens_per_page - 1) // s.tokens_per_page
        read = np.arange(G)[None, None, :] < groups[:, None, None]       # [B, 1, G]
        cnt = self.counters
        t0 = time.perf_counter_ns()
        if sparse is None:
            # The pages (and their channels) change only with the tables, which
            # a decode loop's batch keeps for T steps: derive them once.
            memo = store.table_memo(seqs, layer)
            where = memo.get("dense")
            if where is None:
                where = memo["dense"] = self._where(
                    flash_pages(k_tab, v_tab, np.broadcast_to(read, k_tab.shape)), kept=True)
            args = (q, store.pool, store.dram.pages, k_tab, v_tab, lens, group_channel,
                    self.nch, out)
            kw = dict(kv_dtype=s.kernel_dtype(), counters=cnt, k_dims_major=s.k_dims_major)
            if where[0] * s.page_bytes > stream_bytes():
                self._dense_streamed(args, kw, read)
            else:
                dense_attention(*args, **kw)
            work = dense_work(lens, s.q_heads, s.head_dim)
        else:
            r, k, window = sparse
            kd_tab = store.dim_tables(seqs, layer)
            TB = kd_tab.shape[3]
            dim_channel = np.broadcast_to((np.arange(TB, dtype=np.int32) % self.nch)[None, None, :],
                                          (B, s.dim_blocks, TB))
            touched = (np.empty((B, H, G), np.int32), np.empty((B, H, s.dim_blocks), np.bool_))
            sparf_attention(q, store.pool, store.dram.pages, k_tab, v_tab, lens, group_channel,
                            store.kd_pool, store.kd_dram.pages, kd_tab, dim_channel,
                            store.v_mean(seqs, layer), self.nch, out, r=r, k=k, window=window,
                            kv_dtype=s.kernel_dtype(), counters=cnt, touched=touched)
            work = sparf_work(lens, s.q_heads, s.head_dim, r, k, window)
            blocks = (lens.astype(np.int64) + s.tokens_per_dim_page - 1) // s.tokens_per_dim_page
            kd_read = (touched[1][:, :, :, None]
                       & (np.arange(TB)[None, None, None, :] < blocks[:, None, None, None]))
            tok_ppns, rows = flash_page_rows(k_tab, v_tab, np.where(read, touched[0], 0))
            kd_ppns = kd_tab[kd_read & (kd_tab >= 0)]
            ppns = np.concatenate([tok_ppns, kd_ppns])
            xfer = np.concatenate([rows * (s.head_dim * s.elem_bytes),
                                   np.full(kd_ppns.size, s.page_bytes, np.int64)])
            self.stats.c["sparf_attends"] += 1
        t1 = time.perf_counter_ns()
        self.stats.c["kernel_wall_ns"] += t1 - t0
        if sparse is None:
            done = self._charge(where, work, cnt, now, s.page_bytes)
        else:
            done = self._charge(self._where(ppns), work, cnt, now, s.page_bytes, xfer)
        # what the timing model itself costs: with the kernel, most of an attend's wall time
        self.stats.c["charge_wall_ns"] += time.perf_counter_ns() - t1
        store.settle(seqs, layer)
        return done

    def _dense_streamed(self, args, kw, read) -> None:
        """dense_attention over a batch bigger than the page cache should
        hold, one piece of (sequence, kv heads) at a time: the next piece's
        pages are read ahead while the kernels work on this one, and this
        one's are unmapped when done (residency.DataPages). Each piece is
        whole heads over all their tokens, so its outputs are final, the
        same as one call's."""
        q, pool, dram, k_tab, v_tab, lens, group_channel, nch, out = args
        data = self.ftl.nand.data_pages
        B, H, G = k_tab.shape
        per_q = q.shape[1] // H
        head_bytes = int(read.sum(axis=2).max()) * 2 * pool.shape[1] * pool.shape[2] * pool.itemsize
        step = max(1, min(H, PIECE_BYTES // max(1, head_bytes)))
        pieces = [(b, h, min(H, h + step)) for b in range(B) for h in range(0, H, step)]

        def pages(piece):
            b, h0, h1 = piece
            return flash_pages(k_tab[b:b + 1, h0:h1], v_tab[b:b + 1, h0:h1],
                               np.broadcast_to(read[b:b + 1], (1, h1 - h0, G)))
        total, part = kw["counters"], new_counters(nch)
        total[...] = 0
        ahead = pages(pieces[0])
        data.will_need(ahead)
        for i, (b, h0, h1) in enumerate(pieces):
            now = ahead
            if i + 1 < len(pieces):
                ahead = pages(pieces[i + 1])
                data.will_need(ahead)
            dense_attention(q[b:b + 1, h0 * per_q:h1 * per_q], pool, dram, k_tab[b:b + 1, h0:h1],
                            v_tab[b:b + 1, h0:h1], lens[b:b + 1], group_channel[b:b + 1], nch,
                            out[b:b + 1, h0 * per_q:h1 * per_q], **{**kw, "counters": part})
            total += part
            data.unmap(now)

    def _where(self, ppns, kept: bool = False):
        """(pages, their channels, their LUNs, pages per channel): what the
        charge needs of the PPNs read. `kept` (a decode loop keeps this per
        batch): the positions in the narrowest integers that hold them."""
        g = self.geom
        p = ppns.astype(np.int64, copy=False)
        ch, lun = g.ch_of(p), g.lun_of(p)
        if kept:
            ch, lun = ch.astype(_narrow(g.channels)), lun.astype(_narrow(g.ways))
        return int(ppns.size), ch, lun, np.bincount(ch, minlength=self.nch)

    def _charge(self, where, work: AttendWork, cnt, now, page_bytes, xfer=None) -> int:
        """Charge the reads `where` (`_where`: each page sensed whole; `xfer`
        bytes each moved over its channel, whole pages if None) and the
        engine work."""
        npages, ch, lun, per = where
        if self.ftl.faults.active and npages and self.ftl.read_fault(npages):
            raise MediaReadError()
        # widened for the call: the timing kernels are compiled for int64
        # positions only (block I/O's), so an attend adds no specialization
        # for a fresh install to compile inside its first command
        t = attend_time(now, ch.astype(np.int64, copy=False), lun.astype(np.int64, copy=False),
                        page_bytes, work, self.ftl.clocks, self.ftl.prm, self.rates, self.clock,
                        xfer_bytes=xfer)
        moved = npages * page_bytes if xfer is None else int(xfer.sum())
        st = self.stats
        c = st.c
        c["attends"] += 1
        c["pages_read_flash"] += npages
        c["pages_read_dram"] += int(cnt[:, C.K_DRAM].sum() + cnt[:, C.V_DRAM].sum() + cnt[:, C.KD_DRAM].sum())
        c["pages_skipped"] += int(cnt[:, C.K_SKIP].sum() + cnt[:, C.V_SKIP].sum() + cnt[:, C.KD_SKIP].sum())
        c["bytes_read_flash"] += moved
        for key in ("pcie_in_ns", "flash_ns", "compute_ns", "pcie_out_ns"):
            c[key] += int(t.breakdown[key])
        c["device_ns"] += t.done_ns - now
        if npages:
            st.channel_pages += per
            if xfer is None:
                st.channel_bytes += per * page_bytes
            else:
                st.channel_bytes += np.bincount(ch, weights=xfer, minlength=self.nch).astype(np.int64)
        self.ftl.counters["nand_pages_read"] += npages
        return t.done_ns


def _narrow(bound: int):
    """The smallest signed integer dtype holding 0..bound-1."""
    for dt in (np.int8, np.int16, np.int32):
        if bound - 1 <= np.iinfo(dt).max:
            return dt
    return np.int64


def flash_pages(k_tab, v_tab, mask):
    """PPNs an attend reads, in the order they are charged: per sequence, per
    kv head, its K pages in token order, then its V pages (DRAM refs dropped)."""
    return flash_page_rows(k_tab, v_tab, mask)[0]


def flash_page_rows(k_tab, v_tab, rows):
    """`flash_pages` of the groups with rows > 0 (or True), and each page's
    row count (the tokens a column read moves), in the same order."""
    both = np.stack([k_tab, v_tab], axis=2)                # [B, H, 2, G]
    r = np.stack([rows, rows], axis=2)
    m = (r > 0) & (both >= 0)
    return both[m], r[m].astype(np.int64)


class MediaReadError(Exception):
    """An injected NAND read failure during an attend."""
