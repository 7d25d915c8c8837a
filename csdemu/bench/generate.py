"""`csdemu bench generate`: SmolLM2 decode tokens/s with attention on the
drive (dense and SparF 1/8) against transformers' sdpa, and where a decode
step's time goes.

Each side at its own best: the drive path in this process with torch's
OpenMP workers passive (csdemu.hf; spinning ones take the daemon's core),
sdpa in a process of its own with libgomp's defaults (csdemu/bench/sdpa_worker.py).
Both time the same steps: a prefill of CONTEXT - 1 tokens and one decode
step untimed, then STEPS greedy decode steps timed. Rounds interleave the
sides (dense, SparF, sdpa; dense, SparF, sdpa; ...), and each side reports
its best and median round, so a noisy moment hits all of them alike.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def prompt_ids(tok, batch: int, context: int):
    """[batch, context] token ids from the shipped corpus (as eval-sparse uses)."""
    import torch
    from csdemu.hf.eval_sparse import corpus, windows
    ids = windows(np.array(tok(corpus()).input_ids, np.int64), context, 0, batch)[:, :context]
    return torch.from_numpy(ids)


def decode_rates(model, ids, new_cache, steps: int, on_timed=None) -> float:
    """Prefill ids[:, :-1] and decode one step untimed, then `steps` timed
    greedy steps -> tokens/s. `on_timed(cache)` runs just before the timed
    steps (to zero counters)."""
    import torch
    cache = new_cache()
    try:
        with torch.no_grad():
            model(input_ids=ids[:, :-1], cache=cache, logits_to_keep=1)
            logits = model(input_ids=ids[:, -1:], cache=cache).logits[:, -1]
            if on_timed:
                on_timed(cache)
            t0 = time.perf_counter()
            for _ in range(steps):
                nxt = logits.argmax(-1, keepdim=True)
                logits = model(input_ids=nxt, cache=cache).logits[:, -1]
            wall = time.perf_counter() - t0
    finally:
        if hasattr(cache, "close"):
            cache.close()
    return ids.shape[0] * steps / wall


class SdpaWorker:
    """csdemu.bench.sdpa_worker in a child process with OMP_WAIT_POLICY unset."""

    def __init__(self, batch: int, context: int, steps: int):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        self.proc = subprocess.Popen([sys.executable, "-m", "csdemu.bench.sdpa_worker",
                                      str(batch), str(context), str(steps)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def run(self) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the sdpa worker exited with status {self.proc.wait()}")
        return json.loads(line)

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(30)


def _drive_round(dev, model, ids, steps, sparse) -> dict:
    """One timed run on the drive -> tokens/s and the step's time split."""
    from csdemu.hf.cache import CSDCache
    holder = {}

    def new_cache():
        holder["cache"] = CSDCache(dev, model.config, batch_size=ids.shape[0], sparse=sparse)
        return holder["cache"]

    def zero(cache):
        st = cache.state
        st.append_wall_ns = st.attend_wall_ns = st.device_ns = st.attends = 0
        holder["log0"] = dev.engine_log()

    tps = decode_rates(model, ids, new_cache, steps, on_timed=zero)
    st, log, log0 = holder["cache"].state, dev.engine_log(), holder["log0"]
    kernel = log["kernel_wall_ns"] - log0["kernel_wall_ns"]
    step_s = ids.shape[0] / tps
    drive_wall = (st.append_wall_ns + st.attend_wall_ns) / 1e9 / steps
    return {"tokens_per_s": tps,
            "step_ms": {"total": step_s * 1e3,
                        "host_layers": (step_s - drive_wall) * 1e3,
                        "kv_append": st.append_wall_ns / 1e6 / steps,
                        "attend_transport_and_daemon": (st.attend_wall_ns - kernel) / 1e6 / steps,
                        "attend_kernel": kernel / 1e6 / steps,
                        "modeled_device": st.device_ns / 1e6 / steps},
            "realtime_factor": drive_wall / (st.device_ns / 1e9 / steps),
            "pages_read_flash": (log["pages_read_flash"] - log0["pages_read_flash"]) / steps}


def _summary(rounds: list[dict]) -> dict:
    tps = [r["tokens_per_s"] for r in rounds]
    return {"best": max(tps), "median": statistics.median(tps)}


def run_generate_bench(dev, model, tok, batch: int = 8, context: int = 2048, steps: int = 16,
                       rounds: int = 3, progress=None) -> dict:
    from csdemu.hf.attention import use_drive_attention
    ids = prompt_ids(tok, batch, context)
    use_drive_attention(model)
    sides = {"dense": None, "sparf_1_8": 1 / 8}
    got = {name: [] for name in (*sides, "sdpa")}
    worker = SdpaWorker(batch, context, steps)
    try:
        for r in range(rounds):
            for name, sparse in sides.items():
                got[name].append(_drive_round(dev, model, ids, steps, sparse))
                if progress:
                    progress(f"bench generate: round {r + 1}/{rounds} {name}: "
                             f"{got[name][-1]['tokens_per_s']:.1f} tokens/s")
            got["sdpa"].append(worker.run())
            if progress:
                progress(f"bench generate: round {r + 1}/{rounds} sdpa: "
                         f"{got['sdpa'][-1]['tokens_per_s']:.1f} tokens/s")
    finally:
        worker.close()
    sdpa = _summary(got["sdpa"])
    out = {"batch": batch, "context": context, "decode_steps": steps, "rounds": rounds,
           "sdpa_tokens_per_s_best": round(sdpa["best"], 2),
           "sdpa_tokens_per_s_median": round(sdpa["median"], 2),
           "sdpa_omp_wait_policy": got["sdpa"][0]["omp_wait_policy"],
           "sdpa_torch_threads": got["sdpa"][0]["torch_threads"]}
    for name in sides:
        s = _summary(got[name])
        best = max(got[name], key=lambda r: r["tokens_per_s"])
        out.update({f"{name}_tokens_per_s_best": round(s["best"], 2),
                    f"{name}_tokens_per_s_median": round(s["median"], 2),
                    f"{name}_vs_sdpa_best": round(s["best"] / sdpa["best"], 3),
                    f"{name}_vs_sdpa_median": round(s["median"] / sdpa["median"], 3),
                    f"{name}_realtime_factor": round(statistics.median(
                        r["realtime_factor"] for r in got[name]), 3),
                    f"{name}_step_ms": {k: round(v, 3) for k, v in best["step_ms"].items()},
                    f"{name}_pages_read_flash_per_step": best["pages_read_flash"]})
    out["target_vs_sdpa"] = 1.0
    out["how"] = HOW
    return out


HOW = {
    "batch": "sequences decoded together", "context": "prompt tokens per sequence",
    "decode_steps": "timed greedy decode steps per round, after an untimed prefill and step",
    "rounds": "rounds, each timing dense, SparF and sdpa in turn",
    "sdpa_*": "transformers sdpa over a DynamicCache (fp32 model and cache) in a process of its "
              "own, libgomp's default OpenMP settings, torch's default threads",
    "*_tokens_per_s_*": "batch x steps / wall time of the timed steps; best and median of rounds",
    "*_vs_sdpa_*": "drive tokens/s over sdpa tokens/s, best over best and median over median",
    "*_realtime_factor": "per step, the wall time of the drive commands as the client sees them "
                         "(appends, and attends with the step's token fused) over their modeled "
                         "device time; median of rounds",
    "*_step_ms": "the best round's step: host layers (torch, passive OpenMP), KV append, "
                 "attend round trips less the kernel, the kernel, and the modeled device time",
    "*_pages_read_flash_per_step": "flash pages the engine sensed per decode step (engine log)",
    "dense_*": "attention on the drive, fp16 KV, the drive's kernel threads = engine_threads",
    "sparf_1_8_*": "as dense_*, SparF at 1/8 with a window of a quarter of k",
    "engine_threads": "kernel threads of the drive started for the run",
    "target_vs_sdpa": "the issue's target for *_vs_sdpa_*",
}
