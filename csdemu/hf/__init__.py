"""transformers integration: a Cache that keeps the KV cache on the drive and
an attention function ("csdemu") that computes decode attention there.

    model, tok = csdemu.hf.load_smollm2()
    with csdemu.connect() as dev:
        cache = csdemu.hf.CSDCache(dev, model.config, batch_size=2)
        out = model.generate(**inputs, past_key_values=cache, max_new_tokens=32)
"""
from csdemu.hf.attention import ATTN_NAME, use_drive_attention
from csdemu.hf.cache import CSDCache
from csdemu.hf.weights import load_smollm2

__all__ = ["CSDCache", "load_smollm2", "use_drive_attention", "ATTN_NAME"]
