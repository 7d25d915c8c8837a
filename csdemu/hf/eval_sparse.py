"""What SparF costs in quality: perplexity and next-token top-1 agreement of
SparF against dense attention, both computed on the drive, teacher-forced over
a long offline English text (the licence texts Debian ships)."""
from __future__ import annotations

import math
import os
import time

import numpy as np

LICENSE_DIR = "/usr/share/common-licenses"
LICENSES = ("GPL-3", "LGPL-2.1", "GFDL-1.3", "MPL-2.0", "Apache-2.0", "GPL-2", "LGPL-2",
            "MPL-1.1", "GFDL-1.2", "GPL-1")


def corpus() -> str:
    parts = []
    for name in LICENSES:
        path = os.path.join(LICENSE_DIR, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                parts.append(f.read())
    if not parts:
        raise RuntimeError(f"no licence texts under {LICENSE_DIR}")
    return "\n\n".join(parts)


def windows(ids: np.ndarray, context: int, n_eval: int, batch: int) -> np.ndarray:
    """`batch` non-overlapping windows of context + n_eval + 1 tokens."""
    span = context + n_eval + 1
    if batch * span > len(ids):
        raise ValueError(f"the text has {len(ids)} tokens; {batch} windows of {span} do not fit")
    return np.stack([ids[i * span:(i + 1) * span] for i in range(batch)])


def run_mode(dev, model, rows: np.ndarray, context: int, sparse: float | None):
    """Teacher-forced decode over rows[:, context:];
    -> (nll [B, N], argmax [B, N], device_ns, flash pages the decode steps' attends sensed)."""
    import torch
    from csdemu.hf.cache import CSDCache
    n_eval = rows.shape[1] - context - 1
    nll = np.zeros((rows.shape[0], n_eval))
    top1 = np.zeros((rows.shape[0], n_eval), np.int64)
    ids = torch.from_numpy(rows)
    with CSDCache(dev, model.config, batch_size=rows.shape[0], sparse=sparse) as cache, torch.no_grad():
        logits = model(input_ids=ids[:, :context], cache=cache, logits_to_keep=1).logits[:, -1]
        pages0 = dev.engine_log()["pages_read_flash"]
        for t in range(n_eval):
            logp = torch.log_softmax(logits.float(), dim=-1)
            nxt = ids[:, context + t]
            nll[:, t] = -logp.gather(1, nxt[:, None])[:, 0].numpy()
            top1[:, t] = logits.argmax(-1).numpy()
            logits = model(input_ids=nxt[:, None], cache=cache).logits[:, -1]
        pages = dev.engine_log()["pages_read_flash"] - pages0
        device_ns = cache.state.device_ns
    return nll, top1, device_ns, pages


def evaluate(dev, model, tok, contexts=(1024, 2048, 4096), ratios=(1 / 2, 1 / 4, 1 / 8),
             n_eval: int = 64, batch: int = 4, progress=None) -> dict:
    from csdemu.hf.attention import use_drive_attention
    use_drive_attention(model)
    ids = np.array(tok(corpus()).input_ids, np.int64)
    rows_out = []
    for context in contexts:
        rows = windows(ids, context, n_eval, batch)
        dense_nll, dense_top1, dense_ns, dense_pages = run_mode(dev, model, rows, context, None)
        rows_out.append(_row(context, "dense", dense_nll, dense_top1, dense_top1, dense_ns, n_eval,
                             dense_pages, dense_pages))
        if progress:
            progress(rows_out[-1])
        for ratio in ratios:
            t0 = time.perf_counter()
            nll, top1, ns, pages = run_mode(dev, model, rows, context, ratio)
            row = _row(context, f"sparf-1/{round(1 / ratio)}", nll, top1, dense_top1, ns, n_eval,
                       pages, dense_pages)
            row["wall_s"] = round(time.perf_counter() - t0, 2)
            rows_out.append(row)
            if progress:
                progress(row)
    return {"rows": rows_out, "text": "Debian common-licenses: " + ", ".join(LICENSES),
            "tokens_in_text": int(len(ids)), "eval_tokens_per_row": n_eval, "batch": batch,
            "how": HOW}


HOW = {
    "text": "the corpus: Debian's common licenses, shipped with the OS",
    "tokens_in_text": "SmolLM2 tokens in the corpus",
    "eval_tokens_per_row": "decode steps scored per row after a prefill of `context` tokens",
    "batch": "sequences per forward",
    "rows": "SmolLM2-135M through CSDCache on a live drive, fp16 KV; per context and mode: "
            "perplexity and top-1 agreement with dense of the scored tokens, the modeled "
            "device time per decode step, and flash pages sensed per step (engine log)",
}


def _row(context, mode, nll, top1, dense_top1, device_ns, n_eval, pages, dense_pages):
    return {"context": context, "mode": mode, "perplexity": round(math.exp(float(nll.mean())), 4),
            "top1_agreement": round(float((top1 == dense_top1).mean()), 4),
            "tokens": int(nll.size),
            "device_ms_per_step": round(device_ns / 1e6 / (n_eval + 1), 3),
            # flash pages sensed by the decode steps' attends: how much of the KV a
            # real model's top-k selection touches at page granularity
            "flash_pages_per_step": round(pages / n_eval, 1),
            "flash_pages_vs_dense": round(pages / dense_pages, 4) if dense_pages else None}
