"""A KV namespace's sequences on flash: append, page tables, read back, reclaim.

The store owns the sequences and their DRAM group buffers and writes full
pages through the FTL's stream interface (`stream_write`, `stream_read`,
`release_stream`). It computes no attention; csdemu.drive.kv.engine does that on
the tables this module builds.
"""
from __future__ import annotations

import numpy as np

from csdemu.drive.kv.layout import (KD, REF, DramBudget, DramFull, DramPool, KVShape, K, Sequence,
                                    V, _grow, page_key, split_groups)
from nvme_cmds.kv import KVReason

# What the cached batch views (their page tables and what the engine derives
# from them, 6 B a page read) may hold in all: a batch of up to 2.8 million
# pages (11 GiB of KV). A batch bigger than that builds its tables afresh each
# attend (2 % of its time), so the daemon's memory per page of KV stays the
# sequences' own tables (4 B a page), whatever the batches attended.
TABLE_CACHE_BYTES = 16 << 20


class StoreFull(Exception):
    """No room: the flash, the device DRAM or the sequence limit
    (`reason`, a KVReason)."""

    def __init__(self, reason: KVReason, what: str = ""):
        super().__init__(what or reason.name)
        self.reason = reason


class KVStore:
    def __init__(self, shape: KVShape, ftl, max_seqs: int, new_stream,
                 budget: DramBudget | None = None):
        self.shape, self.ftl, self.max_seqs = shape, ftl, max_seqs
        self.new_stream = new_stream        # -> a fresh FTL stream id
        self.budget = budget
        s = shape
        self.dram = DramPool(s.tokens_per_page, s.head_dim, s.storage, budget)
        self.kd_dram = (DramPool(s.dims_per_page, s.tokens_per_dim_page, s.storage, budget)
                        if s.sparse else None)
        # Each sequence's running V sum (for SparF's v_mean) is device DRAM too.
        self.seq_dram_bytes = s.layers * s.kv_heads * s.head_dim * 8
        self.seqs: dict[int, Sequence] = {}
        npages = ftl.geom.total_pages
        self.pool = ftl.nand.data.reshape(-1).view(s.storage).reshape(
            npages, s.tokens_per_page, s.head_dim)
        if s.sparse:
            self.kd_pool = self.pool.reshape(npages, s.dims_per_page, s.tokens_per_dim_page)
        self.pages_programmed = 0
        self._batches: dict[tuple, _Batch] = {}

    # ------------------------------------------------------------ sequences
    def get(self, sid: int, create: bool = False) -> Sequence | None:
        seq = self.seqs.get(sid)
        if seq is None and create:
            if len(self.seqs) >= self.max_seqs:
                raise StoreFull(KVReason.SEQ_LIMIT, f"sequence limit {self.max_seqs} reached")
            budget = self.budget
            if budget is not None and not budget.take(self.seq_dram_bytes):
                raise StoreFull(KVReason.DRAM_FULL)
            try:
                seq = Sequence(sid, self.new_stream(), self.shape, self.dram, self.kd_dram)
            except DramFull:
                if budget is not None:
                    budget.give(self.seq_dram_bytes)
                raise StoreFull(KVReason.DRAM_FULL) from None
            self.seqs[sid] = seq
        return seq

    def reclaim(self, sid: int, now: int) -> int:
        seq = self.seqs.pop(sid, None)
        if seq is None:
            return now
        self._batches.clear()         # they may hold this sequence and its slots
        seq.release_dram(self.dram, self.kd_dram)
        if self.budget is not None:
            self.budget.give(self.seq_dram_bytes)
        if self.ftl.nand.data is None:
            return now                # the flash closed first (daemon shutdown): nothing to erase
        return self.ftl.release_stream(seq.stream, now)

    def close(self, now: int = 0) -> None:
        """Reclaim every sequence and give the DRAM back; safe to call in
        any state, and again."""
        for sid in list(self.seqs):
            self.reclaim(sid, now)
        for pool in (self.dram, self.kd_dram):
            if pool is not None and pool.nbytes:
                pool.drop()

    # ------------------------------------------------------------ append
    def append(self, seq: Sequence, layer: int, k: np.ndarray, v: np.ndarray, now: int) -> int:
        """Add tokens k, v [n, H, D] (storage dtype) to one sequence's layer.
        Full groups are programmed; returns when the last program ends."""
        s = self.shape
        T = s.tokens_per_page
        L = int(seq.length[layer])
        t0, g0 = L % T, L // T
        pages, keys, where = [], [], []
        for kind, new in ((K, k), (V, v)):
            slots = seq.tail[kind, layer]
            full, rem, rest = split_groups(self.dram.pages[slots], t0, new.transpose(1, 0, 2), T)
            self.dram.pages[slots, :rem] = rest
            nfull = full.shape[1]
            if nfull:
                pages.append(s.to_flash(kind, full).reshape(-1, T * s.head_dim))
                heads, groups = np.divmod(np.arange(s.kv_heads * nfull), nfull)
                keys += [page_key(layer, h, kind, g0 + g) for h, g in zip(heads.tolist(), groups.tolist())]
                where.append((kind, nfull))
        if s.sparse:                  # only SparF (sparse layouts) blends in the mean V
            seq.v_sum[layer] += s.widen(np.ascontiguousarray(v)).sum(axis=0, dtype=np.float64)
            kd_pages, kd_keys, kd_n = self._append_kd(seq, layer, k, L)
            if kd_n:
                pages.append(kd_pages)
                keys += kd_keys
        done = now
        if pages:
            ppns, done = self._program(seq, pages, keys, now)
            off = 0
            for kind, nfull in where:
                tab = _grow(seq.pages[kind], g0 + nfull)
                tab[layer, :, g0:g0 + nfull] = ppns[off:off + s.kv_heads * nfull].reshape(s.kv_heads, nfull)
                seq.pages[kind] = tab
                off += s.kv_heads * nfull
            if s.sparse and kd_n:
                tb0 = L // s.tokens_per_dim_page
                tab = _grow(seq.kd_pages, tb0 + kd_n)
                tab[layer, :, :, tb0:tb0 + kd_n] = ppns[off:].reshape(s.kv_heads, s.dim_blocks, kd_n)
                seq.kd_pages = tab
        seq.length[layer] = L + k.shape[0]
        return done

    def append_token(self, seqs: list[Sequence], layer: int, k: np.ndarray, v: np.ndarray,
                     now: int) -> None:
        """One new token for each sequence of a batch (k, v [B, H, D]): the
        same as append() of one token to each in turn, without its
        per-sequence numpy work (a decode step's fused append)."""
        s = self.shape
        T = s.tokens_per_page
        lens = self.lengths(seqs, layer)
        bt = self.batch(seqs, layer)
        pos = lens % T
        self.dram.pages[bt.tails[K], pos[:, None]] = k
        self.dram.pages[bt.tails[V], pos[:, None]] = v
        fill = pos == T - 1
        if s.sparse:
            Tp = s.tokens_per_dim_page
            posp = lens % Tp
            self.kd_dram.pages[bt.kd_tails, :, posp[:, None, None]] = k.reshape(
                k.shape[0], s.kv_heads, s.dim_blocks, s.dims_per_page)
            fill_kd = posp == Tp - 1
        wv = s.widen(v) if s.sparse else None
        for b, q in enumerate(seqs):
            if s.sparse:
                q.v_sum[layer] += wv[b]
            L = int(lens[b])
            pages, keys = [], []
            if fill[b]:
                for kind in (K, V):
                    tail = s.to_flash(kind, self.dram.pages[bt.tails[kind, b]])
                    pages.append(tail.reshape(s.kv_heads, -1))
                    keys += [page_key(layer, h, kind, L // T) for h in range(s.kv_heads)]
            if s.sparse and fill_kd[b]:
                pages.append(self.kd_dram.pages[bt.kd_tails[b]].reshape(-1, s.dims_per_page * Tp))
                keys += [page_key(layer, h, KD, (db << 16) | (L // Tp))
                         for h in range(s.kv_heads) for db in range(s.dim_blocks)]
            if pages:
                ppns, _ = self._program(q, pages, keys, now)
                off = 0
                if fill[b]:
                    for kind in (K, V):
                        tab = q.pages[kind] = _grow(q.pages[kind], L // T + 1)
                        tab[layer, :, L // T] = ppns[off:off + s.kv_heads]
                        off += s.kv_heads
                if off < len(ppns):
                    tab = q.kd_pages = _grow(q.kd_pages, L // Tp + 1)
                    tab[layer, :, :, L // Tp] = ppns[off:].reshape(s.kv_heads, s.dim_blocks)
            q.length[layer] = L + 1

    def _append_kd(self, seq, layer, k, L):
        """The channel-indexed copy of K: [Dp dims x Tp tokens] pages."""
        s = self.shape
        H, Dp, Tp, NDB = s.kv_heads, s.dims_per_page, s.tokens_per_dim_page, s.dim_blocks
        slots = seq.kd_tail[layer]                                         # [H, NDB]
        tail = self.kd_dram.pages[slots].reshape(H, NDB * Dp, Tp).transpose(0, 2, 1)  # [H, Tp, D]
        full, rem, rest = split_groups(tail, L % Tp, k.transpose(1, 0, 2), Tp)
        self.kd_dram.pages[slots, :, :rem] = rest.transpose(0, 2, 1).reshape(H, NDB, Dp, rem)
        nfull = full.shape[1]
        if not nfull:
            return None, [], 0
        # [H, nfull, Tp, D] -> [H, NDB, nfull, Dp, Tp]
        pages = full.transpose(0, 1, 3, 2).reshape(H, nfull, NDB, Dp, Tp).transpose(0, 2, 1, 3, 4)
        tb0 = L // Tp
        keys = [page_key(layer, h, KD, (db << 16) | (tb0 + t))
                for h in range(H) for db in range(NDB) for t in range(nfull)]
        return pages.reshape(-1, Dp * Tp), keys, nfull

    def _program(self, seq, pages, keys, now):
        data = np.concatenate(pages).view(np.uint8).reshape(-1, self.shape.page_bytes)
        ppns, done = self.ftl.stream_write(seq.stream, np.array(keys, np.int64), data, now)
        if ppns is None:
            raise StoreFull(KVReason.FLASH_FULL)
        self.pages_programmed += len(ppns)
        return ppns, done

    # ------------------------------------------------------------ tables for the engine
    def batch(self, seqs: list[Sequence], layer: int) -> "_Batch":
        """The cached view of one batch of sequences at one layer. A decode
        loop sends the same batch every step, and its page tables change only
        when a group fills or a new one starts (every T tokens), so they are
        kept between commands and rebuilt when a length crosses a group edge."""
        key = (layer, tuple(q.sid for q in seqs))
        b = self._batches.get(key)
        if b is None:
            if (len(self._batches) >= 4 * self.shape.layers + 64
                    or sum(x.nbytes() for x in self._batches.values()) > TABLE_CACHE_BYTES):
                self._batches.clear()
            b = self._batches[key] = _Batch(seqs, layer)
        return b

    def settle(self, seqs: list[Sequence], layer: int) -> None:
        """End of a command over this batch: forget its view if it alone
        outgrew the table cache."""
        key = (layer, tuple(q.sid for q in seqs))
        b = self._batches.get(key)
        if b is not None and b.nbytes() > TABLE_CACHE_BYTES:
            del self._batches[key]

    def table_memo(self, seqs: list[Sequence], layer: int) -> dict:
        """Scratch for what a consumer derives from the current token tables
        (emptied whenever they are rebuilt)."""
        return self.batch(seqs, layer).memo

    def lengths(self, seqs: list[Sequence], layer: int) -> np.ndarray:
        return np.fromiter([q.length[layer] for q in seqs], np.int64, len(seqs))

    def token_tables(self, seqs: list[Sequence], layer: int):
        """-> (k_pages, v_pages [B, H, G] refs, seq_lens [B]); refs past a
        sequence's last group are 0 and must be masked by its length. The
        tables are shared with later calls: read them, never write them."""
        T = self.shape.tokens_per_page
        lens = self.lengths(seqs, layer)
        b = self.batch(seqs, layer)
        sig = (lens // T).tobytes() + (lens % T != 0).tobytes()
        if b.sig != sig:
            b.sig, b.tabs, b.memo = sig, self._token_tables(seqs, layer, lens), {}
        return b.tabs[K], b.tabs[V], lens.astype(np.int32)

    def _token_tables(self, seqs, layer, lens):
        s = self.shape
        T = s.tokens_per_page
        G = int(max(1, ((lens + T - 1) // T).max())) if len(seqs) else 1
        tabs = np.zeros((2, len(seqs), s.kv_heads, G), REF)
        for b, q in enumerate(seqs):
            L = int(lens[b])
            nfull = L // T
            for kind in (K, V):
                tabs[kind, b, :, :nfull] = q.pages[kind][layer, :, :nfull]
                if L % T:
                    tabs[kind, b, :, nfull] = -(q.tail[kind, layer] + 1)
        return tabs

    def dim_tables(self, seqs: list[Sequence], layer: int):
        """-> kd_pages [B, H, NDB, TB] refs for the channel-indexed K copy
        (cached like token_tables: read only)."""
        Tp = self.shape.tokens_per_dim_page
        lens = self.lengths(seqs, layer)
        b = self.batch(seqs, layer)
        sig = (lens // Tp).tobytes() + (lens % Tp != 0).tobytes()
        if b.kd_sig != sig:
            b.kd_sig, b.kd_tab = sig, self._dim_tables(seqs, layer, lens)
        return b.kd_tab

    def _dim_tables(self, seqs, layer, lens):
        s = self.shape
        Tp = s.tokens_per_dim_page
        TB = int(max(1, ((lens + Tp - 1) // Tp).max())) if len(seqs) else 1
        tab = np.zeros((len(seqs), s.kv_heads, s.dim_blocks, TB), REF)
        for b, q in enumerate(seqs):
            L = int(lens[b])
            nfull = L // Tp
            tab[b, :, :, :nfull] = q.kd_pages[layer, :, :, :nfull]
            if L % Tp:
                tab[b, :, :, nfull] = -(q.kd_tail[layer] + 1)
        return tab

    def intact(self, seqs: list[Sequence], layer: int, dims: bool = False) -> bool:
        """Whether every flash page an attend of this batch reads (and with
        `dims` SparF's dims-major K pages) matches its OOB record, so the
        kernels never compute over a corrupt page. NAND.check hashes a page
        once per power cycle; the answer is kept with the tables."""
        k_tab, v_tab, lens = self.token_tables(seqs, layer)
        b = self.batch(seqs, layer)
        key = ("intact", b.kd_sig if dims else None)
        if b.memo.get(key):
            return True
        full = np.arange(k_tab.shape[2]) < (lens // self.shape.tokens_per_page)[:, None, None]
        refs = [k_tab[np.broadcast_to(full, k_tab.shape)], v_tab[np.broadcast_to(full, v_tab.shape)]]
        if dims:
            kd = self.dim_tables(seqs, layer)
            kfull = np.arange(kd.shape[3]) < (lens // self.shape.tokens_per_dim_page)[:, None, None, None]
            refs.append(kd[np.broadcast_to(kfull, kd.shape)])
        ppns = np.concatenate(refs)
        ok = not ppns.size or self.ftl.nand.check(ppns)
        b.memo[key] = ok
        return ok

    def v_mean(self, seqs: list[Sequence], layer: int) -> np.ndarray:
        s = self.shape
        out = np.zeros((len(seqs), s.kv_heads, s.head_dim), np.float32)
        for b, q in enumerate(seqs):
            if q.length[layer]:
                out[b] = q.v_sum[layer] / q.length[layer]
        return out

    # ------------------------------------------------------------ read back
    def read(self, seq: Sequence, layer: int, start: int, count: int, now: int):
        """K, V [count, H, D] of tokens start.. -> (ok, k, v, done_ns)."""
        s = self.shape
        T = s.tokens_per_page
        g_lo, g_hi = start // T, (start + count + T - 1) // T
        L = int(seq.length[layer])
        nfull = L // T
        out = []
        flash_ppns = []
        for kind in (K, V):
            groups = np.empty((s.kv_heads, g_hi - g_lo, T, s.head_dim), s.storage)
            for g in range(g_lo, g_hi):
                if g < nfull:
                    ppn = seq.pages[kind][layer, :, g]
                    groups[:, g - g_lo] = s.from_flash(kind, self.pool[ppn])
                    flash_ppns.append(ppn)
                else:
                    groups[:, g - g_lo] = self.dram.pages[seq.tail[kind, layer]]
            tokens = groups.reshape(s.kv_heads, -1, s.head_dim)[:, start - g_lo * T:start - g_lo * T + count]
            out.append(np.ascontiguousarray(tokens.transpose(1, 0, 2)))
        done = now
        if flash_ppns:
            ppns = np.concatenate(flash_ppns).astype(np.int64)   # the FTL's PPN dtype
            ok, done = self.ftl.stream_read(ppns, now)
            # copied out once: mapped on, they would sit in the daemon's
            # resident set (a read of a whole KV cache held all of it)
            self.ftl.nand.data_pages.unmap(ppns)
            if not ok:
                return False, None, None, done
        return True, out[0], out[1], done


class _Batch:
    """One (layer, batch of sequences): DRAM tail slots, which stay put while
    the sequences live, and the last page tables with the lengths' signature
    they were built for. `memo` holds what a consumer derives from the
    tables (e.g. the pages an attend reads); it is dropped with them."""

    def __init__(self, seqs: list[Sequence], layer: int):
        self.tails = np.stack([q.tail[:, layer] for q in seqs], axis=1)      # [2, B, H]
        self.kd_tails = (np.stack([q.kd_tail[layer] for q in seqs])          # [B, H, NDB]
                         if seqs and hasattr(seqs[0], "kd_tail") else None)
        self.sig = self.kd_sig = None
        self.tabs = self.kd_tab = None
        self.memo: dict = {}

    def nbytes(self) -> int:
        arrays = [self.tabs, self.kd_tab]
        for v in self.memo.values():
            arrays += v if isinstance(v, tuple) else [v]
        return sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))
