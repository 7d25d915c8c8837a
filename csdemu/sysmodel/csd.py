"""The CSD side of the system model: one Attend command, charged by the
daemon's own timing code (csdemu.drive.kv.attend_timing.attend_time over
csdemu.drive.flash.timing's clocks).

Page layout: the daemon's own. Each sequence writes through its own FTL
stream, which starts a fresh line; a prefill programs K pages head-major,
then V pages (csdemu.drive.kv.layout.prefill_positions), and the FTL stripes a
stream's pages channel first (csdemu.drive.flash.geometry.Geometry.ch_of/lun_of).
Full groups are on flash; a partial last group sits in device DRAM and costs
no flash read. An Attend reads, per sequence and kv head, the K pages in token
order, then the V pages (csdemu.drive.kv.engine.flash_pages). A page read moves
`geometry.page_bytes` over the channel.
  * q and the output are float32 (4 B per element) over the drive's PCIe link.
  * the drive is idle (fresh clocks) and no firmware time is charged (fw_ns=0).
  * SparF (sparse=...): the q heads sharing a kv head share one selection
    (csdemu.drive.kv.engine, kernels/sparf.py). First the channel-indexed copy of K,
    one head dim per page (page_bytes / dtype_bytes tokens of that dim), for
    the r selected dims, whole pages; then the K and V pages of the token
    groups that hold a selected token. Which groups hold one is data-dependent;
    the model takes the top-k tokens as spread uniformly over the non-window
    tokens, so a group of T tokens is sensed with probability
    p = 1 - (1 - f)^T, f = k/(len - window), and moves only its selected rows
    over the channel (a column read): on average T*f/p rows. Every group of
    the local window is read whole. The groups read are spaced evenly along
    the sequence. K's second copy is listed after the token pages' K and V,
    per sequence-head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from csdemu.drive.flash.geometry import Geometry
from csdemu.drive.flash.timing import Clocks, NandTiming
from csdemu.drive.kv.layout import prefill_positions
from csdemu.drive.kv.attend_timing import (AttendWork, EngineClock, EngineRates, attend_time, dense_work,
                              sparf_work, spread_pages)
from csdemu.drive.profile import Profile, load_profile


def _profile(p) -> Profile:
    return p if isinstance(p, Profile) else load_profile(p)


@dataclass(frozen=True)
class Sparsity:
    """SparF at `ratio` (r/d = k/len) with a page-hit rate: the pages a SparF
    Attend senses as a share of the pages dense attention senses on the same
    KV (csdemu.sysmodel.page_hit names where a rate comes from). None: the
    uniform rule (top-k spread uniformly over the tokens)."""
    ratio: float
    page_hit: float | None = None

    def __post_init__(self):
        if self.page_hit is not None and not 0.0 < self.page_hit <= 1.0:
            raise ValueError(f"page-hit rate must be in (0, 1], got {self.page_hit!r}")


def page_hit_of(sparse) -> float | None:
    return sparse.page_hit if isinstance(sparse, Sparsity) else None


def sparse_params(sparse, head_dim: int, seq_len: int, tokens_per_page: int):
    """(r, k, window) from a ratio (r = ratio*d, k = ratio*len, window = one page
    group of T tokens) or from a dict/tuple giving them."""
    if sparse is None:
        return None
    if isinstance(sparse, Sparsity):
        sparse = sparse.ratio
    if isinstance(sparse, dict):
        r, k, w = int(sparse["r"]), int(sparse["k"]), int(sparse.get("window", tokens_per_page))
    elif isinstance(sparse, (tuple, list)):
        r, k, w = (int(x) for x in sparse)
    else:
        ratio = float(sparse)
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"sparse ratio must be in (0, 1], got {sparse!r}")
        r = max(1, round(head_dim * ratio))
        k = max(1, round(seq_len * ratio))
        w = tokens_per_page
    return max(1, min(r, head_dim)), max(0, k), max(0, w)


def _dense_pattern(geom: Geometry, kv_heads: int, seq_len: int, T: int):
    pos = prefill_positions(kv_heads, seq_len // T)
    return geom.ch_of(pos), geom.lun_of(pos)


def sparse_selection(seq_len: int, T: int, k: int, window: int):
    """(token groups, groups sensed outside the window, expected selected rows
    in such a group) for one (sequence, kv head) under the uniform model."""
    n = math.ceil(seq_len / T)
    w_groups = min(n, math.ceil(window / T)) if window else 0
    rest = n - w_groups
    cand = max(0, seq_len - window)
    f = min(1.0, k / cand) if cand > 0 else 0.0
    p = 1.0 - (1.0 - f) ** T
    hit = int(round(rest * p))
    rows = min(float(T), T * f / p) if p > 0 else 0.0
    return n, hit, rows


def rated_selection(seq_len: int, T: int, k: int, window: int, napprox: int, page_hit: float):
    """(token groups, groups sensed outside the window, selected rows in such a
    group) for one (sequence, kv head) whose SparF Attend senses `page_hit` of
    dense's pages: dense senses K and V of every full group; SparF senses the
    `napprox` pages of the channel-indexed K copy, K and V of the window's
    groups, and K and V of `hit` further groups, which hold the k selected
    tokens outside the window (at least ceil(k/T) of them, at most all)."""
    n = math.ceil(seq_len / T)
    w_groups = min(n, math.ceil(window / T)) if window else 0
    rest = n - w_groups
    kk = min(k, max(0, seq_len - window))
    want = (page_hit * 2 * (seq_len // T) - napprox) / 2 - w_groups
    hit = int(min(rest, max(math.ceil(kk / T), round(want), 0)))
    rows = min(float(T), kk / hit) if hit else 0.0
    return n, hit, rows


def approx_pages(seq_len: int, head_dim: int, dtype_bytes: int, page_bytes: int, r: int) -> int:
    """Pages of the channel-indexed K copy the approximate pass reads: one head
    dim per page (page_bytes / dtype_bytes tokens of that dim), r dims."""
    tpp = max(1, page_bytes // dtype_bytes)
    return max(1, min(head_dim, r)) * math.ceil(seq_len / tpp)


def _sparse_pattern(seq_len: int, head_dim: int, dtype_bytes: int, T: int,
                    page_bytes: int, channels: int, ways: int, r: int, k: int, window: int,
                    page_hit: float | None = None):
    napprox = approx_pages(seq_len, head_dim, dtype_bytes, page_bytes, r)
    if page_hit is None:
        n, hit, rows = sparse_selection(seq_len, T, k, window)
    else:
        n, hit, rows = rated_selection(seq_len, T, k, window, napprox, page_hit)
    rest = n - (min(n, math.ceil(window / T)) if window else 0)
    hit = min(hit, rest)
    picked = np.floor(np.arange(hit) * (rest / hit)).astype(np.int64) if hit else np.zeros(0, np.int64)
    groups = np.concatenate([picked, np.arange(rest, n, dtype=np.int64)])
    ch = groups % channels
    lun = (groups // channels) % ways
    moved = np.concatenate([np.full(hit, int(round(rows * head_dim * dtype_bytes)), np.int64),
                            np.full(n - rest, page_bytes, np.int64)])
    ach, alun = spread_pages(napprox, channels, ways)
    return (np.concatenate([ch, ch, ach]), np.concatenate([lun, lun, alun]),
            np.concatenate([moved, moved, np.full(napprox, page_bytes, np.int64)]))


def attend_pages(profile, q_heads: int, kv_heads: int, head_dim: int, seq_lens, dtype_bytes: int,
                 tokens_per_page: int, sparse=None):
    """(page_ch, page_lun, work, bytes moved per page) of one Attend command
    for one layer; every page is sensed whole."""
    prof = _profile(profile)
    g = prof.geometry
    if q_heads % kv_heads:
        raise ValueError(f"q_heads ({q_heads}) must be a multiple of kv_heads ({kv_heads})")
    lens = [int(x) for x in np.atleast_1d(seq_lens)]
    geom = Geometry(prof)
    cache: dict[int, tuple] = {}
    chs, luns, moved = [], [], []
    work = AttendWork()
    for L in lens:
        if L not in cache:
            if sparse is None:
                ch, lun = _dense_pattern(geom, kv_heads, L, tokens_per_page)
                mv = np.full(len(ch), g.page_bytes, np.int64)
                wk = dense_work([L], q_heads, head_dim)
            else:
                r, k, w = sparse_params(sparse, head_dim, L, tokens_per_page)
                pch, _, pmv = _sparse_pattern(L, head_dim, dtype_bytes, tokens_per_page,
                                              g.page_bytes, g.channels, g.ways, r, k, w,
                                              page_hit_of(sparse))
                ch, mv = np.tile(pch, kv_heads), np.tile(pmv, kv_heads)
                lun = frontier_ways(ch, g.channels, g.ways)
                wk = sparf_work([L], q_heads, head_dim, r, k, w)
            cache[L] = (ch, lun, wk, mv)
        ch, lun, wk, mv = cache[L]
        chs.append(ch)
        luns.append(lun)
        moved.append(mv)
        work += AttendWork(wk.q_bytes, wk.out_bytes, wk.gemv_flops, wk.softmax_flops,
                           wk.filter_bytes)
    if not chs:
        z = np.zeros(0, np.int64)
        return z, z, work, z
    return (np.concatenate(chs).astype(np.int64), np.concatenate(luns).astype(np.int64), work,
            np.concatenate(moved))


def frontier_ways(ch: np.ndarray, channels: int, ways: int) -> np.ndarray:
    """Way of each page: its rank among the pages listed on its channel, mod W."""
    ch = np.asarray(ch, dtype=np.int64)
    if ch.size == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(ch, kind="stable")
    counts = np.bincount(ch, minlength=channels)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(ch.size, np.int64)
    rank[order] = np.arange(ch.size, dtype=np.int64) - np.repeat(starts, counts)
    return rank % ways


def csd_attend(profile, q_heads: int, kv_heads: int, head_dim: int, seq_lens, dtype_bytes: int,
               tokens_per_page: int, sparse=None):
    """The AttendTime (csdemu.drive.kv.attend_timing) of one Attend on an idle drive."""
    prof = _profile(profile)
    ch, lun, work, moved = attend_pages(prof, q_heads, kv_heads, head_dim, seq_lens, dtype_bytes,
                                        tokens_per_page, sparse)
    clocks = Clocks.create(prof.geometry.channels, prof.geometry.ways)
    return attend_time(0, ch, lun, prof.geometry.page_bytes, work, clocks,
                       NandTiming.from_profile(prof), EngineRates.from_profile(prof),
                       EngineClock(), xfer_bytes=None if sparse is None else moved)


def csd_attend_ns(profile, q_heads: int, kv_heads: int, head_dim: int, seq_lens, dtype_bytes: int,
                  tokens_per_page: int, sparse=None) -> int:
    """Modeled ns of ONE Attend command for one layer on a fresh (idle) drive:
    q in over PCIe, the layer's pages read, the engine, the output back."""
    return int(csd_attend(profile, q_heads, kv_heads, head_dim, seq_lens, dtype_bytes,
                          tokens_per_page, sparse).done_ns)


@lru_cache(maxsize=4096)
def _cached_attend(profile_key, prof, q_heads, kv_heads, head_dim, batch, seq_len, dtype_bytes,
                   T, sparse):
    t = csd_attend(prof, q_heads, kv_heads, head_dim, [seq_len] * batch, dtype_bytes, T, sparse)
    return t.done_ns, dict(t.breakdown), t.pages


def layer_attend(prof: Profile, q_heads: int, kv_heads: int, head_dim: int, batch: int,
                 seq_len: int, dtype_bytes: int, T: int, sparse=None):
    """(done_ns, breakdown, pages) of one layer's Attend for `batch` equal sequences."""
    return _cached_attend(prof.to_json(), prof, q_heads, kv_heads, head_dim, batch, seq_len,
                          dtype_bytes, T, sparse)
