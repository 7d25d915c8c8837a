"""A transformers Cache whose layers live on the drive.

`update()` sends each layer's new K and V to the drive's KV namespace (81h)
and keeps nothing on the host. In prefill it returns the prompt's K and V so
the host can run the prompt's attention; padding positions (mask 0) are not
stored on the drive, so decode attention there needs no mask.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from csdemu.host import tensors
from csdemu.host.kv import SparF
from nvme_cmds.kv import KVDtype


class DriveState:
    """What every layer and the attention function share for one generation."""

    def __init__(self, kv, seq_ids, sparse_ratio: float | None, window_frac: float = 0.25):
        self.kv = kv
        self.seq_ids = np.asarray(seq_ids, np.uint64)
        self.sparse_ratio = sparse_ratio
        self.window_frac = window_frac
        self.mask = None                  # the current forward's 2-D attention mask
        self.lengths = np.zeros(len(seq_ids), np.int64)   # tokens stored per sequence (layer 0)
        self.out = {}
        self.device_ns = 0                # summed modeled device time of attends
        self.attends = 0
        self.append_wall_ns = 0           # host wall time spent in appends / attends
        self.attend_wall_ns = 0
        self.pending = {}                 # layer -> a decode token's (k, v), sent with its attend

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [batch, kv_heads, q_len, head_dim] -> drive."""
        t0 = time.perf_counter_ns()
        try:
            self._append(layer, k, v)
        finally:
            self.append_wall_ns += time.perf_counter_ns() - t0

    def _append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        # [B, q, H, D] views of the model's tensors, any dtype (a bf16 one as
        # its bits for a bf16 namespace, else widened): kv.append converts once
        bits = self.kv.dtype == KVDtype.BFLOAT16
        kn = tensors.as_numpy(k.detach().transpose(1, 2), "k", bf16_bits=bits)
        vn = tensors.as_numpy(v.detach().transpose(1, 2), "v", bf16_bits=bits)
        q_len = kn.shape[1]
        if q_len == 1:
            # A decode step: the token goes to the drive with this layer's
            # attend (one command); a token still pending was never attended.
            stale = self.pending.pop(layer, None)
            if stale is not None:
                self.kv.append(layer, self.seq_ids, *stale)
            self.pending[layer] = (kn, vn)
            if layer == 0:
                self.lengths += 1
            return
        valid = None
        if self.mask is not None and q_len > 1:
            valid = self.mask[:, -q_len:].bool().numpy()
        if valid is None or valid.all():
            self.kv.append(layer, self.seq_ids, kn, vn)
            if layer == 0:
                self.lengths += q_len
            return
        for b in range(kn.shape[0]):
            keep = np.flatnonzero(valid[b])
            self.kv.append(layer, self.seq_ids[b:b + 1], kn[b:b + 1, keep], vn[b:b + 1, keep])
            if layer == 0:
                self.lengths[b] += keep.size

    def sparse_for(self, head_dim: int):
        if self.sparse_ratio is None:
            return None
        L = int(self.lengths.max())
        sp = SparF.ratio(self.sparse_ratio, head_dim, L)
        return SparF(sp.r, sp.k, max(1, int(sp.k * self.window_frac)))

    def attend(self, layer: int, query: torch.Tensor) -> np.ndarray:
        """query [batch, q_heads, 1, head_dim] -> the drive's output [batch, q_heads, head_dim].

        q goes through one buffer per shape, registered for DMA once, instead
        of a fresh tensor each step (the copy replaces `.contiguous()`)."""
        shape = (query.shape[0], query.shape[1], query.shape[3])
        bufs = self.out.get(shape)
        if bufs is None:
            q = np.empty(shape, np.float32)
            bufs = self.out[shape] = (q, torch.from_numpy(q), np.empty(shape, np.float32))
        q, q_t, out = bufs
        q_t.copy_(query[:, :, 0, :])
        t0 = time.perf_counter_ns()
        self.kv.attend(layer, self.seq_ids, q, sparse=self.sparse_for(shape[2]), out=out,
                       append=self.pending.pop(layer, None))
        self.attend_wall_ns += time.perf_counter_ns() - t0
        self.device_ns += self.kv.last.device_ns
        self.attends += 1
        return out


class DriveLayer(CacheLayerMixin):
    is_sliding = False
    is_compileable = False

    def __init__(self, state: DriveState, layer_idx: int):
        super().__init__()
        self.state, self.layer_idx = state, layer_idx
        self.seen = 0

    def lazy_initialization(self, key_states, value_states) -> None:
        self.device = key_states.device
        self.dtype = key_states.dtype
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.state.append(self.layer_idx, key_states, value_states)
        self.seen += key_states.shape[-2]
        return key_states, value_states

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        raise NotImplementedError("a drive cache cannot be reset; make a new CSDCache")

    def reorder_cache(self, beam_idx) -> None:
        raise NotImplementedError("beam search is not supported by the drive cache")


class CSDCache(Cache):
    """KV cache on a csdemu drive for one batch of sequences.

    dev: a csdemu.Device, or a csdemu.ArrayDevice (attention split over its
    drives, csdemu.host.array_kv); config: the model's config; batch_size: rows;
    dtype: storage on the drive ("float16", "bfloat16", "float32");
    sparse: SparF compression ratio (e.g. 1/8) or None for dense attention.
    Sequences are reclaimed (and the namespace deleted) by `close()`.
    """

    def __init__(self, dev, config, batch_size: int, dtype: str = "float16",
                 sparse: float | None = None, kv=None, first_seq_id: int = 1):
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.owns_kv = kv is None
        if kv is None:
            kv = dev.create_kv_namespace(layers=config.num_hidden_layers,
                                         q_heads=config.num_attention_heads,
                                         kv_heads=config.num_key_value_heads, head_dim=head_dim,
                                         dtype=dtype, sparse_layout=sparse is not None)
        self.kv = kv
        self.state = DriveState(kv, range(first_seq_id, first_seq_id + batch_size), sparse)
        super().__init__(layers=[DriveLayer(self.state, i) for i in range(config.num_hidden_layers)])

    def set_mask(self, mask) -> None:
        self.state.mask = mask

    def close(self) -> None:
        if self.kv is None:
            return
        self.state.pending.clear()
        self.kv.reclaim(self.state.seq_ids)
        if self.owns_kv:
            self.kv.delete()
        self.kv = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
