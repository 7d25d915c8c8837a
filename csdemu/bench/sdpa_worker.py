"""The sdpa baseline of `bench generate`, in a process of its own.

csdemu.hf sets OMP_WAIT_POLICY=PASSIVE before torch loads, because torch's
spinning OpenMP workers starve the drive's daemon on a small machine; that
setting slows transformers' in-process sdpa, which has no daemon to share
with. So the baseline runs here, where torch is imported before anything of
csdemu.hf can set it: libgomp reads its settings once, when torch loads it,
and takes the defaults the caller's environment leaves.

    python -m csdemu.bench.sdpa_worker BATCH CONTEXT STEPS
    stdin "run" -> stdout one JSON line {"tokens_per_s": .., "omp_wait_policy": ..}
    stdin "quit" or EOF -> exit

Each run: prefill of CONTEXT - 1 tokens and one decode step, untimed (as on
the drive side), then STEPS timed greedy decode steps, fp32 model and cache
(transformers' DynamicCache keeps the model's dtype).
"""
from __future__ import annotations

import json
import os
import sys

import torch  # noqa: I001 - first, before csdemu.hf can set OMP_WAIT_POLICY

from csdemu.bench.generate import decode_rates, prompt_ids


def main(argv=None) -> int:
    batch, context, steps = (int(a) for a in (argv or sys.argv[1:]))
    policy = os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default)")
    from transformers import DynamicCache
    from csdemu.hf.weights import load_smollm2
    model, tok = load_smollm2()
    model.set_attn_implementation("sdpa")
    ids = prompt_ids(tok, batch, context)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        tps = decode_rates(model, ids, lambda: DynamicCache(config=model.config), steps)
        print(json.dumps({"tokens_per_s": tps, "omp_wait_policy": policy,
                          "torch_threads": torch.get_num_threads()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
