"""The CSD side of the system model: one Attend command, charged by the
daemon's own timing code (csdemu.kv.timing.attend_time over
csdemu.flash.timing's clocks).

Page layout: the daemon's own. Each sequence writes through its own FTL
stream, which starts a fresh line; a prefill programs K pages head-major,
then V pages (csdemu.kv.layout.prefill_positions), and the FTL stripes a
stream's pages channel first (csdemu.flash.geometry.Geometry.ch_of/lun_of).
Full groups are on flash; a partial last group sits in device DRAM and costs
no flash read. An Attend reads, per sequence and kv head, the K pages in token
order, then the V pages (csdemu.kv.engine.flash_pages). A page read moves
`geometry.page_bytes` over the channel.
  * q and the output are float32 (4 B per element) over the drive's PCIe link.
  * the drive is idle (fresh clocks) and no firmware time is charged (fw_ns=0).
  * SparF (sparse=...): first the channel-indexed copy of K, one head dim per
    page (page_bytes / dtype_bytes tokens of that dim), for the union of the
    top-r dims of the q heads sharing the kv head; then the K and V pages of
    the token groups that hold a selected token. Which groups hold one is
    data-dependent; the model takes the top-k tokens as spread uniformly over
    the non-window tokens, so a group of T tokens is read with probability
    1 - (1 - k/(len - window))^(T*g) (g q heads per kv head select
    independently), plus every group of the local window. The groups read are
    spaced evenly along the sequence. K's second copy is listed after the
    token pages' K and V, per sequence-head.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from csdemu.flash.geometry import Geometry
from csdemu.flash.timing import Clocks, NandTiming
from csdemu.kv.layout import prefill_positions
from csdemu.kv.timing import (AttendWork, EngineClock, EngineRates, attend_time, dense_work,
                              sparf_work, spread_pages)
from csdemu.profile import Profile, load_profile


def _profile(p) -> Profile:
    return p if isinstance(p, Profile) else load_profile(p)


def sparse_params(sparse, head_dim: int, seq_len: int, tokens_per_page: int):
    """(r, k, window) from a ratio (r = ratio*d, k = ratio*len, window = one page
    group of T tokens) or from a dict/tuple giving them."""
    if sparse is None:
        return None
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


def _sparse_pattern(seq_len: int, g: int, head_dim: int, dtype_bytes: int, T: int,
                    page_bytes: int, channels: int, ways: int, r: int, k: int, window: int):
    n = math.ceil(seq_len / T)
    w_groups = min(n, math.ceil(window / T)) if window else 0
    rest = n - w_groups
    cand = max(0, seq_len - window)
    f = min(1.0, k / cand) if cand > 0 else 0.0
    p = 1.0 - (1.0 - f) ** (T * g)
    hit = int(round(rest * p))
    if hit >= rest:
        groups = np.arange(n, dtype=np.int64)
    else:
        picked = np.floor(np.arange(hit) * (rest / hit)).astype(np.int64) if hit else \
            np.zeros(0, np.int64)
        groups = np.concatenate([picked, np.arange(rest, n, dtype=np.int64)])
    ch = groups % channels
    lun = (groups // channels) % ways
    dims = head_dim * (1.0 - (1.0 - r / head_dim) ** g)
    dims = max(1, min(head_dim, int(math.ceil(dims - 1e-9))))
    tpp = max(1, page_bytes // dtype_bytes)
    napprox = dims * math.ceil(seq_len / tpp)
    ach, alun = spread_pages(napprox, channels, ways)
    return (np.concatenate([ch, ch, ach]), np.concatenate([lun, lun, alun]))


def attend_pages(profile, q_heads: int, kv_heads: int, head_dim: int, seq_lens, dtype_bytes: int,
                 tokens_per_page: int, sparse=None):
    """(page_ch, page_lun, work) of one Attend command for one layer."""
    prof = _profile(profile)
    g = prof.geometry
    if q_heads % kv_heads:
        raise ValueError(f"q_heads ({q_heads}) must be a multiple of kv_heads ({kv_heads})")
    grp = q_heads // kv_heads
    lens = [int(x) for x in np.atleast_1d(seq_lens)]
    geom = Geometry(prof)
    cache: dict[int, tuple] = {}
    chs, luns = [], []
    work = AttendWork()
    for L in lens:
        if L not in cache:
            if sparse is None:
                ch, lun = _dense_pattern(geom, kv_heads, L, tokens_per_page)
                wk = dense_work([L], q_heads, head_dim)
            else:
                r, k, w = sparse_params(sparse, head_dim, L, tokens_per_page)
                pat = _sparse_pattern(L, grp, head_dim, dtype_bytes, tokens_per_page, g.page_bytes,
                                      g.channels, g.ways, r, k, w)
                ch = np.tile(pat[0], kv_heads)
                lun = frontier_ways(ch, g.channels, g.ways)
                wk = sparf_work([L], q_heads, head_dim, r, k, w)
            cache[L] = (ch, lun, wk)
        ch, lun, wk = cache[L]
        chs.append(ch)
        luns.append(lun)
        work += AttendWork(wk.q_bytes, wk.out_bytes, wk.gemv_flops, wk.softmax_flops,
                           wk.filter_bytes)
    if not chs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), work
    return np.concatenate(chs).astype(np.int64), np.concatenate(luns).astype(np.int64), work


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
    """The AttendTime (csdemu.kv.timing) of one Attend on an idle drive."""
    prof = _profile(profile)
    ch, lun, work = attend_pages(prof, q_heads, kv_heads, head_dim, seq_lens, dtype_bytes,
                                 tokens_per_page, sparse)
    clocks = Clocks.create(prof.geometry.channels, prof.geometry.ways)
    return attend_time(0, ch, lun, prof.geometry.page_bytes, work, clocks,
                       NandTiming.from_profile(prof), EngineRates.from_profile(prof),
                       EngineClock())


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
