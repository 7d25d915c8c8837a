"""Where a KV namespace's tokens live: flash pages, DRAM group buffers, page tables.

For every (sequence, layer, kv head) the keys and values are cut along the
token axis into groups of T tokens (T = page_bytes / (head_dim · dtype
bytes)), one flash page per group::

    tokens  0 ........ T-1 | T ....... 2T-1 | ... | gT ... L-1
    K       page (flash)   | page (flash)   | ... | DRAM group buffer (tail)
    V       page (flash)   | page (flash)   | ... | DRAM group buffer (tail)

A group's page is programmed when the group fills; until then its tokens sit
in a device-DRAM slot that the engine reads directly. Page tables hold PPNs
(>= 0, flash) or -(slot + 1) (DRAM), the kernels' convention.

With the sparse layout the namespace also keeps K a second time,
channel-indexed: a page holds Dp head dims over Tp tokens ([Dp, Tp]), so the
SparF approximate pass reads only the dims it needs.

Every sequence writes through its own FTL stream, so its pages fill their own
erase blocks: Reclaim releases the stream and erases whole blocks, and GC
never copies a KV page.
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np

from nvme_cmds.kv import DTYPE_BYTES, KVDtype

K, V, KD = 0, 1, 2
# Page references (PPN >= 0, or -(slot + 1) for a DRAM slot) are int32, 4 B a
# page like the block namespace's L2P: profile_rules.MAX_PAGES keeps every
# PPN inside it, and at 8 B a page the tables alone took 0.2 % of the KV's
# bytes, most of the daemon's 0.25 %-of-capacity memory budget.
REF = np.int32


@dataclass(frozen=True)
class KVShape:
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    dtype: KVDtype
    tokens_per_page: int       # T
    sparse: bool
    dims_per_page: int         # Dp (sparse layout)
    tokens_per_dim_page: int   # Tp (sparse layout)
    page_bytes: int

    @property
    def elem_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def storage(self):
        return np.float32 if self.dtype == KVDtype.FLOAT32 else np.uint16

    @property
    def k_dims_major(self) -> bool:
        """Flash K pages hold their page dims-major ([D, T]): the dense
        scores then need no horizontal sums (kernels.ir.scores_dims). SparF's
        exact pass gathers single tokens' rows, so its layout keeps K
        token-major."""
        return not self.sparse

    def to_flash(self, kind: int, groups: np.ndarray) -> np.ndarray:
        """Token-major groups [..., T, D] -> the bytes a flash page holds."""
        return groups.swapaxes(-1, -2) if kind == K and self.k_dims_major else groups

    def from_flash(self, kind: int, pages: np.ndarray) -> np.ndarray:
        """Flash pages [..., T, D] as stored -> token-major [..., T, D]."""
        if kind == K and self.k_dims_major:
            return pages.reshape(pages.shape[:-2] + (self.head_dim, self.tokens_per_page)).swapaxes(-1, -2)
        return pages

    @property
    def dim_blocks(self) -> int:
        return self.head_dim // self.dims_per_page

    def kernel_dtype(self) -> str:
        return {KVDtype.FLOAT16: "fp16", KVDtype.BFLOAT16: "bf16", KVDtype.FLOAT32: "fp32"}[self.dtype]

    def widen(self, a: np.ndarray) -> np.ndarray:
        """Storage elements -> float32 (for the running V sum)."""
        if self.dtype == KVDtype.FLOAT32:
            return a.view(np.float32)
        if self.dtype == KVDtype.FLOAT16:
            return a.view(np.float16).astype(np.float32)
        return (a.astype(np.uint32) << 16).view(np.float32)


class DramFull(Exception):
    """The device DRAM budget cannot hold what was asked for."""


class DramBudget:
    """The device DRAM every KV namespace's group buffers share (the
    profile's [engine] kv_dram_bytes). A pool takes what it grows to and
    gives it back when it empties or its namespace goes, so what the
    emulator holds for group buffers never passes the drive's DRAM."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    @property
    def free(self) -> int:
        return self.limit - self.used

    def take(self, nbytes: int) -> bool:
        if nbytes > self.free:
            return False
        self.used += nbytes
        return True

    def give(self, nbytes: int) -> None:
        self.used -= nbytes


class DramPool:
    """Device-DRAM page slots [n, rows, cols], taken from `budget` (None:
    unbounded). It grows by doubling where the budget has room, else by
    what is asked for, and shrinks to nothing when its last slot is freed."""

    def __init__(self, rows: int, cols: int, dtype, budget: DramBudget | None = None):
        self.pages = np.zeros((0, rows, cols), dtype)
        self.slot_bytes = rows * cols * np.dtype(dtype).itemsize
        self.budget = budget
        self.free: list[int] = []

    def alloc(self, n: int) -> np.ndarray:
        """n zeroed slots, or DramFull with nothing taken."""
        if len(self.free) < n:
            self._grow(n - len(self.free))
        out = np.array([self.free.pop() for _ in range(n)], np.int64)
        self.pages[out] = 0
        return out

    def _grow(self, short: int) -> None:
        old = self.pages.shape[0]
        want = max(old + short, 2 * old)
        if self.budget is not None:
            room = self.budget.free // self.slot_bytes
            want = max(old + short, min(want, old + room))
            if not self.budget.take((want - old) * self.slot_bytes):
                raise DramFull(f"{short} more slots of {self.slot_bytes} bytes")
        self._resize(want)
        self.free[:0] = range(want - 1, old - 1, -1)

    def _resize(self, n: int) -> None:
        grown = _slots(n, self.pages.shape[1:], self.pages.dtype)
        keep = min(n, self.pages.shape[0])
        grown[:keep] = self.pages[:keep]
        self.pages = grown

    def release(self, slots: np.ndarray) -> None:
        self.free.extend(np.asarray(slots).reshape(-1).tolist())
        if len(self.free) == self.pages.shape[0]:
            self.drop()

    def drop(self) -> None:
        """Free every slot and give the pool's DRAM back."""
        if self.budget is not None:
            self.budget.give(self.pages.shape[0] * self.slot_bytes)
        self.free = []
        self._resize(0)

    @property
    def used(self) -> int:
        return self.pages.shape[0] - len(self.free)

    @property
    def nbytes(self) -> int:
        return self.pages.shape[0] * self.slot_bytes


def _slots(n: int, shape: tuple, dtype) -> np.ndarray:
    """n page slots in an anonymous mapping of their own: when the pool is
    regrown or dropped the mapping goes back to the system at once, where
    heap memory freed in pieces (glibc's below its 32 MiB mmap threshold)
    stays with the process, and a budget on the pool would not bound it."""
    nbytes = n * int(np.prod(shape)) * np.dtype(dtype).itemsize
    if not nbytes:
        return np.zeros((0,) + tuple(shape), dtype)
    mm = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)
    return np.frombuffer(mm, dtype).reshape((n,) + tuple(shape))


def _grow(table: np.ndarray, need: int, axis: int = -1) -> np.ndarray:
    cap = table.shape[axis]
    if need <= cap:
        return table
    shape = list(table.shape)
    # a quarter more, not double: the slack is memory held per page (a
    # table grows O(log) times per sequence either way)
    shape[axis] = max(need, cap + cap // 4, 8)
    out = np.full(shape, -1, table.dtype)
    out[tuple(slice(0, s) for s in table.shape)] = table
    return out


class Sequence:
    """One sequence of one KV namespace."""

    def __init__(self, sid: int, stream: int, shape: KVShape, dram: DramPool, kd_dram: DramPool | None):
        s = shape
        self.sid, self.stream = sid, stream
        self.length = np.zeros(s.layers, np.int64)
        self.pages = [np.full((s.layers, s.kv_heads, 8), -1, REF) for _ in (K, V)]
        self.tail = dram.alloc(2 * s.layers * s.kv_heads).reshape(2, s.layers, s.kv_heads)
        self.v_sum = np.zeros((s.layers, s.kv_heads, s.head_dim), np.float64)
        if s.sparse:
            self.kd_pages = np.full((s.layers, s.kv_heads, s.dim_blocks, 4), -1, REF)
            try:
                self.kd_tail = kd_dram.alloc(s.layers * s.kv_heads * s.dim_blocks).reshape(
                    s.layers, s.kv_heads, s.dim_blocks)
            except DramFull:
                dram.release(self.tail)
                raise

    def release_dram(self, dram: DramPool, kd_dram: DramPool | None) -> None:
        dram.release(self.tail)
        if kd_dram is not None:
            kd_dram.release(self.kd_tail)


def split_groups(tail: np.ndarray, tail_len: int, new: np.ndarray, group: int):
    """Join a partly filled tail [H, group, D] with new tokens [H, n, D] along
    the token axis. -> (full groups [H, nfull, group, D], new tail length,
    new tail contents [H, rem, D])."""
    h, n, d = new.shape
    total = tail_len + n
    buf = np.empty((h, total, d), new.dtype)
    buf[:, :tail_len] = tail[:, :tail_len]
    buf[:, tail_len:] = new
    nfull = total // group
    full = buf[:, :nfull * group].reshape(h, nfull, group, d)
    return full, total - nfull * group, buf[:, nfull * group:]


def page_key(layer: int, head: int, kind: int, index: int) -> int:
    """OOB key of a KV page (for inspection; KV namespaces are not recovered)."""
    return (layer << 40) | (head << 32) | (kind << 30) | index


def prefill_positions(kv_heads: int, groups: int) -> np.ndarray:
    """Positions in its own stream of one sequence's freshly prefilled layer
    (`groups` full groups per kv head), listed in the order an Attend reads
    them: per kv head, its K groups, then its V groups. KVStore.append
    programs K pages head-major and then V pages head-major, so K (h, j) is
    the stream's page h·groups + j and V (h, j) is kv_heads·groups + h·groups + j;
    the FTL stripes a stream's pages channel first (Geometry.ch_of / lun_of)."""
    h = np.arange(kv_heads)[:, None, None]
    kind = np.arange(2)[None, :, None]
    j = np.arange(groups)[None, None, :]
    return (kind * kv_heads * groups + h * groups + j).reshape(-1).astype(np.int64)
