"""transformers integration: a Cache that keeps the KV cache on the drive and
an attention function ("csdemu") that computes decode attention there.

    model, tok = csdemu.hf.load_smollm2()
    with csdemu.connect() as dev:
        cache = csdemu.hf.CSDCache(dev, model.config, batch_size=2)
        out = model.generate(**inputs, past_key_values=cache, max_new_tokens=32)
"""
import os

# torch's OpenMP workers spin after each op by default; on a small machine that
# spinning starves the drive's daemon of the core it needs. Passive waiting
# is set before torch is first imported, for the sdpa baseline alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from csdemu.hf.attention import ATTN_NAME, use_drive_attention  # noqa: E402
from csdemu.hf.cache import CSDCache  # noqa: E402
from csdemu.hf.weights import load_smollm2  # noqa: E402

__all__ = ["CSDCache", "load_smollm2", "use_drive_attention", "ATTN_NAME"]
