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
    (csdemu.drive.kv.engine, kernels/sparf.py). The engine reads the K and V
    pages of the token groups that hold a selected token, then the
    channel-indexed copy of K, one head dim per page (page_bytes / dtype_bytes
    tokens of that dim), for the r selected dims, whole pages; all at their
    places in the daemon's layout (sparse_stream_pages). Which groups hold a
    selected token is data-dependent: a Sparsity names them, or gives a
    page-hit rate (the share of dense's pages sensed, csdemu.sysmodel.page_hit),
    or, without one, the uniform rule takes the top-k tokens as spread
    uniformly over the non-window tokens, so a group of T tokens is sensed
    with probability p = 1 - (1 - f)^T, f = k/(len - window). A sensed group
    moves only its selected rows over the channel (a column read); every group
    of the local window moves whole. The groups sensed are a fixed
    pseudo-random draw per (length, kv head) (spread_groups).
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
                              sparf_work)
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
    groups: tuple | None = None     # token groups sensed outside the window, if known
    dims: tuple | None = None       # the r head dims selected, if known

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
    w_flash = max(0, min(n, seq_len // T) - rest)      # the window's groups not in DRAM
    want = (page_hit * 2 * (seq_len // T) - napprox) / 2 - w_flash
    hit = int(min(rest, max(math.ceil(kk / T), math.floor(want + 0.5), 0)))
    rows = min(float(T), kk / hit) if hit else 0.0
    return n, hit, rows


def approx_pages(seq_len: int, head_dim: int, dtype_bytes: int, page_bytes: int, r: int) -> int:
    """Flash pages of the channel-indexed K copy the approximate pass reads per
    (sequence, kv head): one head dim per page (page_bytes / dtype_bytes tokens
    of that dim), r dims; a partly filled page sits in device DRAM."""
    tpp = max(1, page_bytes // dtype_bytes)
    return max(1, min(head_dim, r)) * (seq_len // tpp)


def spread_groups(seq: int, seq_len: int, kv_heads: int, rest: int, hit: int) -> np.ndarray:
    """[kv_heads, hit] sensed groups among the first `rest`: a fixed pseudo-random
    draw per (sequence, length), each head its own. Which groups real attention
    selects is data-dependent; a draw carries no pattern the flash striping
    could alias with (evenly spaced picks at stride 2 use only even channels,
    and the same picks in every sequence pile onto the same dies)."""
    if hit <= 0:
        return np.zeros((kv_heads, 0), np.int64)
    keys = np.random.default_rng([seq, seq_len]).random((kv_heads, rest))
    return np.sort(np.argpartition(keys, hit - 1, axis=1)[:, :hit], axis=1).astype(np.int64)


def spread_dims(seq: int, seq_len: int, kv_heads: int, head_dim: int, r: int) -> np.ndarray:
    """[kv_heads, r] head dims of the largest |q|: data-dependent, so a fixed
    pseudo-random draw per (sequence, length), each head its own (the same
    dims for every head would put their K-copy pages on one die: a head's
    copy spans head_dim pages, a multiple of channels x ways here)."""
    keys = np.random.default_rng([seq, seq_len, 1]).random((kv_heads, head_dim))
    return np.sort(np.argpartition(keys, r - 1, axis=1)[:, :r], axis=1).astype(np.int64)


def sparse_stream_pages(seq_len: int, kv_heads: int, head_dim: int, dtype_bytes: int, T: int,
                        page_bytes: int, r: int, k: int, window: int, sparse=None, seq: int = 0):
    """(token-page positions, bytes each moves, K-copy page positions) of one
    sequence's SparF Attend, as positions in the sequence's own stream, in the
    order the engine reads them (csdemu.drive.kv.engine: per kv head its K
    groups then its V groups; the K copy's pages after every token page).

    The prefill programmed, per kv head, K groups h*g + j, then V groups
    H*g + h*g + j (g full groups; a partial group stays in DRAM), then the
    K copy, page (h*dims + dim)*TB + b after them (TB full pages of a dim).
    Sensed groups: the window's, plus `hit` more drawn over the rest
    (spread_groups; the uniform rule or a page-hit rate), or the groups a
    Sparsity names;
    the r dims are drawn per head (spread_dims) unless a Sparsity names them."""
    n, g = math.ceil(seq_len / T), seq_len // T
    w_groups = min(n, math.ceil(window / T)) if window else 0
    rest = n - w_groups
    kk = min(k, max(0, seq_len - window))
    given = getattr(sparse, "groups", None)
    if given is not None:
        picked = np.broadcast_to(np.asarray(sorted(given), np.int64), (kv_heads, len(given)))
        rows = min(float(T), kk / len(given)) if len(given) else 0.0
    else:
        if page_hit_of(sparse) is None:
            _, hit, rows = sparse_selection(seq_len, T, k, window)
        else:
            napprox = approx_pages(seq_len, head_dim, dtype_bytes, page_bytes, r)
            _, hit, rows = rated_selection(seq_len, T, k, window, napprox, page_hit_of(sparse))
        picked = spread_groups(seq, seq_len, kv_heads, rest, min(hit, rest))
    wins = np.broadcast_to(np.arange(rest, n, dtype=np.int64), (kv_heads, n - rest))
    groups = np.concatenate([picked, wins], axis=1)
    moved = np.concatenate([np.full(picked.shape[1], int(round(rows * head_dim * dtype_bytes)), np.int64),
                            np.full(n - rest, page_bytes, np.int64)])
    h = np.arange(kv_heads, dtype=np.int64)[:, None]
    tok, tok_moved = [], []
    for hh in range(kv_heads):
        on = groups[hh] < g                    # a partial group is in DRAM
        for kind in range(2):
            tok.append(kind * kv_heads * g + hh * g + groups[hh][on])
            tok_moved.append(moved[on])
    tok = np.concatenate(tok) if tok else np.zeros(0, np.int64)
    tok_moved = np.concatenate(tok_moved) if tok_moved else np.zeros(0, np.int64)
    tpp = max(1, page_bytes // dtype_bytes)
    TB = seq_len // tpp
    given = getattr(sparse, "dims", None)
    rr = max(1, min(head_dim, r))
    dims = (np.broadcast_to(np.asarray(sorted(given), np.int64), (kv_heads, len(given)))
            if given is not None else spread_dims(seq, seq_len, kv_heads, head_dim, rr))
    kd = (2 * kv_heads * g + ((h * head_dim + dims)[:, :, None] * TB
                              + np.arange(TB, dtype=np.int64)[None, None, :])).reshape(-1)
    return tok, tok_moved, kd


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
    chs, luns, moved, kd_chs, kd_luns = [], [], [], [], []
    work = AttendWork()
    for i, L in enumerate(lens):
        key = L if sparse is None else (i, L)
        if key not in cache:
            if sparse is None:
                ch, lun = _dense_pattern(geom, kv_heads, L, tokens_per_page)
                mv = np.full(len(ch), g.page_bytes, np.int64)
                wk = dense_work([L], q_heads, head_dim)
                kch = klun = np.zeros(0, np.int64)
            else:
                r, k, w = sparse_params(sparse, head_dim, L, tokens_per_page)
                tok, mv, kd = sparse_stream_pages(L, kv_heads, head_dim, dtype_bytes,
                                                  tokens_per_page, g.page_bytes, r, k, w, sparse, i)
                ch, lun = geom.ch_of(tok), geom.lun_of(tok)
                kch, klun = geom.ch_of(kd), geom.lun_of(kd)
                wk = sparf_work([L], q_heads, head_dim, r, k, w)
            cache[key] = (ch, lun, wk, mv, kch, klun)
        ch, lun, wk, mv, kch, klun = cache[key]
        chs.append(ch)
        luns.append(lun)
        moved.append(mv)
        kd_chs.append(kch)
        kd_luns.append(klun)
        work += AttendWork(wk.q_bytes, wk.out_bytes, wk.gemv_flops, wk.softmax_flops,
                           wk.filter_bytes)
    if not chs:
        z = np.zeros(0, np.int64)
        return z, z, work, z
    nkd = sum(len(x) for x in kd_chs)
    return (np.concatenate(chs + kd_chs).astype(np.int64),
            np.concatenate(luns + kd_luns).astype(np.int64), work,
            np.concatenate(moved + [np.full(nkd, g.page_bytes, np.int64)]))


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
