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
            dense_attention(q, store.pool, store.dram.pages, k_tab, v_tab, lens, group_channel,
                            self.nch, out, kv_dtype=s.kernel_dtype(), counters=cnt,
                            k_dims_major=s.k_dims_major)
            work = dense_work(lens, s.q_heads, s.head_dim)
            # The pages (and their channels) change only with the tables, which
            # a decode loop's batch keeps for T steps: derive them once.
            memo = store.table_memo(seqs, layer)
            where = memo.get("dense")
            if where is None:
                ppns = flash_pages(k_tab, v_tab, np.broadcast_to(read, k_tab.shape))
                ch = self.geom.ch_of(ppns)
                where = memo["dense"] = (ppns, ch, self.geom.lun_of(ppns),
                                         np.bincount(ch, minlength=self.nch))
            ppns = where[0]
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
            done = self._charge(ppns, work, cnt, now, s.page_bytes, where=where)
        else:
            done = self._charge(ppns, work, cnt, now, s.page_bytes, xfer)
        # what the timing model itself costs: with the kernel, most of an attend's wall time
        self.stats.c["charge_wall_ns"] += time.perf_counter_ns() - t1
        return done

    def _charge(self, ppns, work: AttendWork, cnt, now, page_bytes, xfer=None, where=None) -> int:
        """Charge the reads of `ppns` (each sensed whole; `xfer` bytes each
        moved over its channel, whole pages if None) and the engine work.
        `where`: (ppns, channels, LUNs, pages per channel) already derived."""
        g = self.geom
        ch, lun = (where[1], where[2]) if where is not None else (g.ch_of(ppns), g.lun_of(ppns))
        if self.ftl.faults.active and ppns.size and self.ftl.read_fault(ppns.size):
            raise MediaReadError()
        t = attend_time(now, ch, lun, page_bytes, work, self.ftl.clocks, self.ftl.prm,
                        self.rates, self.clock, xfer_bytes=xfer)
        moved = int(ppns.size) * page_bytes if xfer is None else int(xfer.sum())
        st = self.stats
        c = st.c
        c["attends"] += 1
        c["pages_read_flash"] += int(ppns.size)
        c["pages_read_dram"] += int(cnt[:, C.K_DRAM].sum() + cnt[:, C.V_DRAM].sum() + cnt[:, C.KD_DRAM].sum())
        c["pages_skipped"] += int(cnt[:, C.K_SKIP].sum() + cnt[:, C.V_SKIP].sum() + cnt[:, C.KD_SKIP].sum())
        c["bytes_read_flash"] += moved
        for key in ("pcie_in_ns", "flash_ns", "compute_ns", "pcie_out_ns"):
            c[key] += int(t.breakdown[key])
        c["device_ns"] += t.done_ns - now
        if ppns.size:
            per = where[3] if where is not None else np.bincount(ch, minlength=self.nch)
            st.channel_pages += per
            if xfer is None:
                st.channel_bytes += per * page_bytes
            else:
                st.channel_bytes += np.bincount(ch, weights=xfer, minlength=self.nch).astype(np.int64)
        self.ftl.counters["nand_pages_read"] += int(ppns.size)
        return t.done_ns


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
