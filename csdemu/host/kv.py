"""Host side of the KV namespace: the API tests, tools and csdemu.hf use.

    kv = dev.create_kv_namespace(layers=30, q_heads=9, kv_heads=3, head_dim=64)
    kv.append(layer, seq_ids, k, v)            # k, v: [batch, new_tokens, kv_heads, head_dim]
    out = kv.attend(layer, seq_ids, q)         # q: float32 [batch, q_heads, head_dim]
    out = kv.attend(layer, seq_ids, q, sparse=csdemu.SparF(r=8, k=64, window=16))
    k, v = kv.read(layer, seq_id, start, count)
    kv.reclaim(seq_ids); kv.delete()

q and the output move by PRP DMA straight from and into the caller's arrays
(registered once and kept in a small registration cache); sequence ids and
appended K/V go through the CMB arena.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from csdemu.host import tensors
from csdemu.host.error_log import failed_field
from csdemu.transport.errors import NVMeError
from nvme_cmds.kv import (DTYPE_NAMES, FLAG_SPARSE_LAYOUT, KV_NS_DESC, SEQ_ID, TOKENS, AttendMode,
                          KVDtype, append_cdws, attend_cdws, read_cdws)
from nvme_cmds.opcodes import VendorAdminOpcode, VendorIoOpcode
from nvme_cmds.spec import FLAGS_PSDT_SHIFT

SGL_FLAGS = 1 << FLAGS_PSDT_SHIFT
MAX_BATCH = 4096
LARGEST = {KVDtype.FLOAT16: 65504.0, KVDtype.BFLOAT16: 3.3895313892515355e38,
           KVDtype.FLOAT32: float(np.finfo(np.float32).max)}


@dataclass(frozen=True)
class SparF:
    """SparF parameters: keep the top `r` |q| dims for the approximate scores,
    then exact attention on the top `k` tokens plus the newest `window`."""
    r: int
    k: int
    window: int = 0

    @classmethod
    def ratio(cls, ratio: float, head_dim: int, seq_len: int, window: int = 0) -> "SparF":
        """The paper's compression ratio for both r/d and k/s (1/8 by default there)."""
        return cls(max(1, round(ratio * head_dim)), max(1, math.ceil(ratio * seq_len)), window)


def to_storage(a, dtype: KVDtype, what: str = "values") -> np.ndarray:
    """K/V values -> the namespace's storage elements (uint16 bits or float32).

    A value that is inf or NaN, or that overflows the dtype (float32 1e6 in
    a float16 namespace), is refused with ValueError rather than stored as
    inf: attention over it would be NaN. uint16 input is taken as fp16/bf16
    bit patterns and stored as given; a bf16 tensor goes to a bf16 namespace
    as its own bits, without a copy."""
    a = tensors.check_float(tensors.as_numpy(a, what, bf16_bits=dtype == KVDtype.BFLOAT16), what)
    if a.dtype == np.uint16 and dtype != KVDtype.FLOAT32:
        return np.ascontiguousarray(a)
    with np.errstate(over="ignore", invalid="ignore"):
        if dtype == KVDtype.FLOAT32:
            out = np.ascontiguousarray(a, np.float32)
            finite = np.isfinite(out)
        elif dtype == KVDtype.FLOAT16:
            out = np.ascontiguousarray(a, np.float16).view(np.uint16)
            finite = np.isfinite(out.view(np.float16))
        else:
            bits = np.ascontiguousarray(a, np.float32).view(np.uint32)
            rounded = bits + 0x7FFF + ((bits >> 16) & 1)          # round to nearest even
            out = (rounded >> 16).astype(np.uint16)
            finite = (out & 0x7F80) != 0x7F80                     # exponent all ones: inf/NaN
    if not finite.all():
        name = dtype.name.lower()
        given = np.isfinite(a[~finite]) if a.dtype.kind == "f" else np.ones(1, bool)
        if not given.all():
            raise ValueError(f"{what}: {int((~given).sum())} values are inf or NaN")
        raise ValueError(f"{what}: {int((~finite).sum())} values overflow {name} "
                         f"(largest finite {LARGEST[dtype]:.5g})")
    return out


def attend_args(ns, layer, q, sparse, out):
    """An attend's arguments checked for namespace `ns` (a KVNamespace or an
    ArrayKV) -> (layer, q as float32 [batch, q_heads, head_dim], `like` for
    the output, the float32 output buffer: `out` itself or a new one)."""
    q, like = tensors.query(q, "attend q", ns.q_heads, ns.head_dim)
    layer = ns._layer(layer, "attend")
    if sparse is not None and not 1 <= sparse.r <= ns.head_dim:
        raise ValueError(f"attend: SparF r {sparse.r} out of range 1..{ns.head_dim} (head_dim)")
    if out is None:
        return layer, q, like, np.empty_like(q)
    out = tensors.as_numpy(out, "attend out")
    if out.shape != q.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"attend out: {out.dtype} {list(out.shape)}"
                         f"{'' if out.flags.c_contiguous else ' (strided)'}; expected "
                         f"C-contiguous float32 {list(q.shape)}")
    return layer, q, like, out


def seq_id_array(seq_ids) -> np.ndarray:
    try:
        return np.asarray(seq_ids, SEQ_ID).reshape(-1)
    except (OverflowError, ValueError, TypeError):
        raise ValueError(f"sequence ids must be integers in 0..2^64-1, got {seq_ids!r}") from None


def from_storage(a: np.ndarray, dtype: KVDtype) -> np.ndarray:
    if dtype == KVDtype.FLOAT32:
        return a.view(np.float32)
    if dtype == KVDtype.FLOAT16:
        return a.view(np.float16)
    return (a.astype(np.uint32) << 16).view(np.float32)


class DmaCache:
    """Registrations of caller arrays, reused while the same memory comes back."""

    def __init__(self, dev, size: int = 32):
        self.dev, self.size = dev, size
        self.regions: OrderedDict[int, tuple[int, np.ndarray]] = OrderedDict()

    def ensure(self, array: np.ndarray) -> int:
        addr, n = array.ctypes.data, array.nbytes
        hit = self.regions.get(addr)
        if hit is not None and hit[0] >= n:
            self.regions.move_to_end(addr)
            return addr
        if hit is not None:
            self._drop(addr)
        if len(self.regions) >= self.size:
            self._drop(next(iter(self.regions)))
        try:
            self.dev.register(array)
        except NVMeError:
            # Overlaps an older registration of memory that was freed and reused.
            for a in list(self.regions):
                self._drop(a)
            self.dev.register(array)
        self.regions[addr] = (n, array)       # holding the array keeps the memory alive
        return addr

    def _drop(self, addr: int) -> None:
        n, arr = self.regions.pop(addr)
        self.dev.unregister(arr)


class KVNamespace:
    def __init__(self, dev, nsid: int, layers: int, q_heads: int, kv_heads: int,
                 head_dim: int, dtype: KVDtype, sparse_layout: bool):
        self.dev, self.nsid = dev, nsid
        self.layers, self.q_heads, self.kv_heads, self.head_dim = layers, q_heads, kv_heads, head_dim
        self.dtype, self.sparse_layout = dtype, sparse_layout
        self.meta_off = dev.alloc.alloc(MAX_BATCH * SEQ_ID.itemsize)
        self.fused_off = self.fused_bytes = 0      # ids + one token's K/V (attend with append)
        self.last = None             # the last command's Completion (device time etc.)

    def _ids(self, seq_ids) -> int:
        ids = seq_id_array(seq_ids)
        if not 0 < ids.size <= MAX_BATCH:
            raise ValueError(f"batch of {ids.size} sequence ids (1..{MAX_BATCH})")
        self.dev.io.settle()       # a timed-out command may still read the ids here
        self.dev.arena.u8[self.meta_off:self.meta_off + ids.nbytes] = ids.view(np.uint8)
        return ids.size

    def _layer(self, layer, what: str) -> int:
        if not 0 <= int(layer) < self.layers:
            raise ValueError(f"{what}: layer {layer} out of range 0..{self.layers - 1}")
        return int(layer)

    def _check(self, c, what, opcode):
        self.last = c
        if not c.ok:
            raise NVMeError(c.status, what, failed_field(self.dev, c, opcode))
        return c

    def append(self, layer: int, seq_ids, k, v) -> int:
        """Append k, v [batch, new_tokens, kv_heads, head_dim]; -> modeled device ns.
        More tokens than one command's field holds go in several commands."""
        layer = self._layer(layer, "kv append")
        k, v = to_storage(k, self.dtype, "k"), to_storage(v, self.dtype, "v")
        if k.ndim != 4 or k.shape != v.shape or k.shape[2:] != (self.kv_heads, self.head_dim):
            raise ValueError(f"kv append: k {list(k.shape)} and v {list(v.shape)}; both must be "
                             f"[batch, tokens, {self.kv_heads}, {self.head_dim}]")
        ids = seq_id_array(seq_ids)
        if ids.size != k.shape[0]:
            raise ValueError(f"{ids.size} sequence ids for a batch of {k.shape[0]}")
        if k.shape[1] == 0:
            return 0
        per_seq = 2 * k[0].nbytes
        limit = min(self.dev.staging_bytes, self.dev.mdts_bytes())
        tokens = k.shape[1]
        step_t = max(1, min(tokens, TOKENS.limit, limit // (2 * k[0, 0].nbytes)))
        step_b = max(1, min(len(ids), limit // max(per_seq, 1))) if step_t == tokens else 1
        total = 0
        for b0 in range(0, len(ids), step_b):
            for t0 in range(0, tokens, step_t):
                kk, vv = k[b0:b0 + step_b, t0:t0 + step_t], v[b0:b0 + step_b, t0:t0 + step_t]
                n = self._ids(ids[b0:b0 + step_b])
                off, nb = self.dev.staging, kk.nbytes
                self.dev.arena.u8[off:off + nb] = kk.reshape(-1).view(np.uint8)
                self.dev.arena.u8[off + nb:off + 2 * nb] = vv.reshape(-1).view(np.uint8)
                c = self.dev.io.execute(VendorIoOpcode.KV_APPEND, nsid=self.nsid, flags=SGL_FLAGS,
                                        prp1=off, prp2=2 * nb, mptr=self.meta_off,
                                        **append_cdws(layer, n, kk.shape[1]))
                total += self._check(c, "kv append", VendorIoOpcode.KV_APPEND).device_ns
        return total

    def attend(self, layer: int, seq_ids, q, sparse: SparF | None = None,
               out=None, append=None, out_dtype=None):
        """Attention output for q [batch, q_heads, head_dim] or transformers'
        [batch, q_heads, 1, head_dim]: numpy, torch or any array, any float
        dtype and strides (csdemu/host/tensors.py). The output has q's kind,
        layout and dtype (float32 for numpy; `out_dtype` to choose), or is
        `out` itself when given (float32, C-contiguous, [batch, q_heads,
        head_dim]). A contiguous float32 q goes to the drive by DMA from its
        own memory; anything else is converted once.

        append=(k, v), each [batch, 1, kv_heads, head_dim], first appends the
        decode step's new token in the same command (one round trip a layer)."""
        given_out = out
        layer, q, like, out = attend_args(self, layer, q, sparse, out)
        ids = seq_id_array(seq_ids)
        n = ids.size
        if n != q.shape[0]:
            raise ValueError(f"{n} sequence ids for a batch of {q.shape[0]}")
        if sparse is None:
            cdws = attend_cdws(layer, n, append=append is not None)
        else:
            cdws = attend_cdws(layer, n, AttendMode.SPARF, sparse.r, sparse.k, sparse.window,
                               append=append is not None)
        if append is None:
            meta = self.meta_off
            self._ids(ids)
        else:
            meta = self._fused_meta(ids, *append)
        cache = self.dev.dma_cache
        pq, po = cache.ensure(q), cache.ensure(out)
        c = self.dev.io.execute(VendorIoOpcode.ATTEND, nsid=self.nsid, prp1=pq, prp2=po,
                                mptr=meta, **cdws)
        self._check(c, "attend", VendorIoOpcode.ATTEND)
        if given_out is not None:
            return given_out
        return tensors.output_like(out, like, out_dtype)

    def _fused_meta(self, ids: np.ndarray, k, v) -> int:
        """Sequence ids, then K and V of one new token each, in the arena."""
        if not 0 < ids.size <= MAX_BATCH:
            raise ValueError(f"batch of {ids.size} sequence ids (1..{MAX_BATCH})")
        k, v = to_storage(k, self.dtype, "append k"), to_storage(v, self.dtype, "append v")
        shape = (ids.size, 1, self.kv_heads, self.head_dim)
        if k.shape != shape or v.shape != shape:
            raise ValueError(f"attend append: k {list(k.shape)} and v {list(v.shape)}; both must "
                             f"be {list(shape)}")
        self.dev.io.settle()       # a timed-out command may still read the fused buffer
        need = ids.nbytes + k.nbytes + v.nbytes
        if need > self.fused_bytes:
            if self.fused_bytes:
                self.dev.alloc.release(self.fused_off, self.fused_bytes)
            self.fused_off, self.fused_bytes = self.dev.alloc.alloc(need), need
        u8, off = self.dev.arena.u8, self.fused_off
        for part in (ids.view(np.uint8), k.reshape(-1).view(np.uint8), v.reshape(-1).view(np.uint8)):
            u8[off:off + part.size] = part
            off += part.size
        return self.fused_off

    def read(self, layer: int, seq_id: int, start: int, count: int):
        """-> (k, v) [count, kv_heads, head_dim] as stored (float16/float32; bf16 widened).
        Any count: a read larger than the staging buffer (or MDTS) goes as
        several commands of whole tokens, each straight into the result."""
        layer = self._layer(layer, "kv read")
        if count < 1:
            raise ValueError(f"kv read: count {count}; read at least 1 token")
        read_cdws(layer, seq_id, start, count)                    # the fields fit, or ValueError
        per = self.kv_heads * self.head_dim * (4 if self.dtype == KVDtype.FLOAT32 else 2)
        store = np.float32 if self.dtype == KVDtype.FLOAT32 else np.uint16
        k = np.empty((count, self.kv_heads, self.head_dim), store)
        v = np.empty_like(k)
        step = max(1, min(self.dev.staging_bytes, self.dev.mdts_bytes()) // (2 * per))
        for t0 in range(0, count, step):
            n = min(step, count - t0)
            c = self.dev.passthru(VendorIoOpcode.KV_READ, self.nsid, read_len=2 * n * per,
                                  **read_cdws(layer, seq_id, start + t0, n))
            self._check(c, "kv read", VendorIoOpcode.KV_READ)
            kk, vv = np.frombuffer(c.data, store).reshape(2, n, self.kv_heads, self.head_dim)
            k[t0:t0 + n], v[t0:t0 + n] = kk, vv
        return from_storage(k, self.dtype), from_storage(v, self.dtype)

    def reclaim(self, seq_ids) -> int:
        """Free sequences (their flash blocks are erased whole); -> how many existed."""
        n = self._ids(seq_ids)
        c = self.dev.io.execute(VendorIoOpcode.RECLAIM, nsid=self.nsid, cdw11=n, mptr=self.meta_off)
        return self._check(c, "reclaim", VendorIoOpcode.RECLAIM).dw0

    def delete(self) -> None:
        c = self.dev.passthru(VendorAdminOpcode.DELETE_KV_NAMESPACE, self.nsid, admin=True)
        if not c.ok:
            raise NVMeError(c.status, "delete kv namespace",
                            failed_field(self.dev, c, VendorAdminOpcode.DELETE_KV_NAMESPACE, True))
        self.dev.alloc.release(self.meta_off, MAX_BATCH * SEQ_ID.itemsize)
        if self.fused_bytes:
            self.dev.alloc.release(self.fused_off, self.fused_bytes)

    def engine_log(self) -> dict:
        return self.dev.engine_log()


def create_kv_namespace(dev, layers: int, q_heads: int, kv_heads: int, head_dim: int,
                        dtype: str = "float16", sparse_layout: bool = False,
                        max_seqs: int = 0, dims_per_page: int = 0) -> KVNamespace:
    code = DTYPE_NAMES[tensors.dtype_name(dtype, "create kv namespace dtype")]
    desc = np.zeros(1, KV_NS_DESC)
    for name, value in (("layers", layers), ("q_heads", q_heads), ("kv_heads", kv_heads),
                        ("head_dim", head_dim), ("max_seqs", max_seqs),
                        ("dims_per_page", dims_per_page)):
        limit = np.iinfo(KV_NS_DESC.fields[name][0]).max
        if not 0 <= int(value) <= limit:
            raise ValueError(f"create kv namespace: {name} {value} does not fit "
                             f"KV_NS_DESC.{name} (0..{limit})")
        desc[name] = value
    desc["dtype"] = code
    desc["flags"] = FLAG_SPARSE_LAYOUT if sparse_layout else 0
    c = dev.passthru(VendorAdminOpcode.CREATE_KV_NAMESPACE, data=desc.tobytes(), admin=True)
    if not c.ok:
        raise NVMeError(c.status, "create kv namespace",
                        failed_field(dev, c, VendorAdminOpcode.CREATE_KV_NAMESPACE, admin=True))
    return KVNamespace(dev, c.dw0, layers, q_heads, kv_heads, head_dim, code, sparse_layout)
