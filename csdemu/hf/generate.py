"""`csdemu generate`: greedy generation with decode attention on the drive."""
from __future__ import annotations

import time

import numpy as np


def parse_ratio(text: str | None) -> float | None:
    if text is None:
        return None
    num, sep, den = text.partition("/")
    value = float(num) / float(den) if sep else float(num)
    if not 0 < value <= 1:
        raise ValueError(f"--sparse {text}: the ratio must be in (0, 1], e.g. 1/8")
    return value


def build_inputs(tok, prompts: list[str], chat: bool):
    tok.padding_side = "left"
    if chat:
        prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    return tok(prompts, return_tensors="pt", padding=True)


def generate(dev, model, tok, prompts: list[str], max_new_tokens: int = 32,
             sparse: float | None = None, dtype: str = "float16", chat: bool = True,
             streamer=None) -> dict:
    """`streamer`: transformers' streamer interface (put/end), e.g. a progress bar."""
    import torch
    from csdemu.hf.attention import use_drive_attention
    from csdemu.hf.cache import CSDCache
    use_drive_attention(model)
    inputs = build_inputs(tok, prompts, chat)
    before = dev.engine_log()
    with CSDCache(dev, model.config, batch_size=len(prompts), dtype=dtype, sparse=sparse) as cache, \
            torch.no_grad():
        t0 = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             cache=cache, pad_token_id=tok.pad_token_id, streamer=streamer)
        wall = time.perf_counter() - t0
        state = cache.state
    after = dev.engine_log()
    new = out[:, inputs.input_ids.shape[1]:]
    steps = max(1, new.shape[1] - 1)                 # decode steps (the first token comes from prefill)
    texts = tok.batch_decode(new, skip_special_tokens=True)
    chan = (np.array(after["channel_bytes"]) - np.array(before["channel_bytes"])).tolist()
    return {
        "texts": texts,
        "tokens": int(new.numel()),
        "wall_s": round(wall, 3),
        "tokens_per_s": round(new.numel() / wall, 2),
        "decode_steps": steps,
        "attends": state.attends,
        "device_ns_per_step": int(state.device_ns / steps),
        "device_ns_per_token": int(state.device_ns / max(1, steps * len(prompts))),
        "bytes_read_per_channel": chan,
        "pages_read_flash": after["pages_read_flash"] - before["pages_read_flash"],
        "pages_read_dram": after["pages_read_dram"] - before["pages_read_dram"],
        "sparse": sparse,
        "kv_dtype": dtype,
    }
