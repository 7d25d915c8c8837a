"""The "csdemu" attention function: decode attention on the drive.

Registered through transformers' AttentionInterface. Prefill (more than one
query token) runs on the host with sdpa over the prompt's K and V; a decode
step sends q to the drive and gets the attention output back by DMA.
"""
from __future__ import annotations

import math

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from csdemu.hf.cache import CSDCache

ATTN_NAME = "csdemu"
_active: CSDCache | None = None


def drive_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    cache = _active
    if cache is None or query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    d = query.shape[-1]
    if scaling is not None and not math.isclose(scaling, d ** -0.5, rel_tol=1e-6):
        raise ValueError(f"the drive computes softmax(q·k/sqrt(d)); this model scales by {scaling}")
    out = cache.state.attend(module.layer_idx, query.detach())
    return torch.from_numpy(out).to(query.dtype).unsqueeze(1), None


def _pre_forward(module, args, kwargs):
    """Find this forward's CSDCache and attention mask (generate passes both)."""
    global _active
    cache = kwargs.get("past_key_values") or kwargs.get("cache")
    if isinstance(cache, CSDCache):
        mask = kwargs.get("attention_mask")
        cache.set_mask(mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None)
        _active = cache
    else:
        _active = None
    return None


AttentionInterface.register(ATTN_NAME, drive_attention)
# Prefill runs sdpa on the host, so it needs sdpa's mask (padding included).
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)


def use_drive_attention(model) -> None:
    """Switch `model` to the drive's attention; a CSDCache passed to
    generate()/forward() then decides where decode attention runs."""
    if getattr(model, "_csdemu_hook", None) is None:
        model._csdemu_hook = model.register_forward_pre_hook(_pre_forward, with_kwargs=True)
    model.set_attn_implementation(ATTN_NAME)
