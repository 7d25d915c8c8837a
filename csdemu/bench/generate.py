"""Decode throughput with attention on the drive vs transformers' sdpa in the
same process and run, and where a decode step's time goes."""
from __future__ import annotations

import time

import numpy as np


def _decode(model, ids, cache, steps: int):
    """Prefill ids [B, C], then `steps` greedy decode steps; -> decode seconds."""
    import torch
    with torch.no_grad():
        logits = model(input_ids=ids, cache=cache, logits_to_keep=1).logits[:, -1]
        t0 = time.perf_counter()
        for _ in range(steps):
            nxt = logits.argmax(-1, keepdim=True)
            logits = model(input_ids=nxt, cache=cache).logits[:, -1]
        return time.perf_counter() - t0


def run_generate_bench(dev, model, tok, batch: int = 8, context: int = 2048, steps: int = 16) -> dict:
    import torch
    from transformers import DynamicCache

    from csdemu.hf.attention import use_drive_attention
    from csdemu.hf.cache import CSDCache
    from csdemu.hf.eval_sparse import corpus, windows
    ids = torch.from_numpy(windows(np.array(tok(corpus()).input_ids, np.int64), context, 0, batch)[:, :context])
    model.set_attn_implementation("sdpa")
    sdpa_s = _decode(model, ids, DynamicCache(config=model.config), steps)
    out = {"batch": batch, "context": context, "decode_steps": steps,
           "sdpa_tokens_per_s": round(batch * steps / sdpa_s, 2)}
    use_drive_attention(model)
    for name, sparse in (("dense", None), ("sparf_1_8", 1 / 8)):
        before = dev.engine_log()
        with CSDCache(dev, model.config, batch_size=batch, sparse=sparse) as cache:
            st = cache.state
            _decode(model, ids[:, :-1], cache, 0)          # prefill only, not timed
            st.append_wall_ns = st.attend_wall_ns = 0
            k0 = dev.engine_log()["kernel_wall_ns"]
            wall = _decode(model, ids[:, -1:], cache, steps - 1)
            wall_all = wall  # steps - 1 timed steps after one untimed decode step
            kernel = dev.engine_log()["kernel_wall_ns"] - k0
            n = steps - 1
            tps = batch * n / wall_all
            out[f"{name}_tokens_per_s"] = round(tps, 2)
            out[f"{name}_vs_sdpa"] = round(tps / out["sdpa_tokens_per_s"], 3)
            per = 1e3 / n
            out[f"{name}_step_ms"] = {
                "total": round(wall_all * per, 2),
                "host_layers": round((wall_all - (st.append_wall_ns + st.attend_wall_ns) / 1e9) * per, 2),
                "kv_append": round(st.append_wall_ns / 1e6 / n, 2),
                "attend_transport_and_daemon": round((st.attend_wall_ns - kernel) / 1e6 / n, 2),
                "attend_kernel": round(kernel / 1e6 / n, 2),
                "modeled_device": round(st.device_ns / 1e6 / (st.attends / model.config.num_hidden_layers), 3),
            }
        after = dev.engine_log()
        out[f"{name}_pages_read_flash"] = after["pages_read_flash"] - before["pages_read_flash"]
    out["target_vs_sdpa"] = 1.0
    return out
