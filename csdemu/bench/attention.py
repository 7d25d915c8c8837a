"""`csdemu bench attention`: the attention kernels against this machine and
against numpy and torch, then the Attend command through a live daemon.

Kernel section: batch 8, 32 q heads over 8 kv heads x 128 dims, fp16 pages
of 16 tokens in a shuffled pool, K pages dims-major as a namespace without
the SparF layout stores them, contexts 1k..16k; the pool, the streaming
buffer and the references' K and V are all backed by transparent huge pages
(csdemu.bench.hugepages: the daemon's NAND file mapping gets large folios); the
machine's streaming read bandwidth is a parallel Numba sum over a buffer as
large as the largest KV; the page-order rate the same sum over exactly the
pages the kernel reads, in its order, prefetched one page ahead (what
reading them costs before any arithmetic).  Per context the kernel, numpy,
torch, the page-order sum and (at the largest context) the streaming sum
run in turn, `--repeat` rounds, best of each: the ratios then compare
figures taken under the same host noise.  The peak FMA rate a Numba loop of independent FMA
chains in registers on every kernel thread.  The roofline is min(stream
bytes/s, peak FMA/s / FMA per KV byte): each K element feeds g multiply-adds
(one score per q head of its kv head) and each V element g more, so g/2 FMA
per byte of fp16 K+V, taken from the kernel's own MAC and byte counters.
The cache-resident rate is the same attend at the largest context with
every flash page reference folded onto 128 pages (512 KiB, in each core's
L2): the same work and page sequence, no DRAM; `no_overlap_bytes_per_s` = 1 / (1 / that + 1 /
page-order rate) is what the kernel would reach if reading pages and doing
arithmetic never overlapped, and `kernel_vs_no_overlap` how far above it the
kernel gets.  `ideal_overlap_bytes_per_s` is the other bound: the page-order
walk with the kernel's FMA count per byte done on register chains no load
feeds (csdemu/bench/overlap.py), i.e. reads and arithmetic overlapping as well as
this machine and this prefetch let them.

Daemon section: one layer on the `instinfer` profile, dense and SparF 1/8 on
the same data: attends/s, wall ÷ modeled time (each attend started on an idle
drive, so modeled is one command's service time), flash pages sensed and bytes
moved over the flash channels (SparF's exact pass moves only the selected
tokens' rows of a page; `sparf_bytes_vs_dense` compares moved bytes), and
`dense_kernel_bytes_per_s`, the dense kernel's rate in the daemon over the
pages where its FTL put them.
"""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np

B, HQ, HKV, D, T, NCH = 8, 32, 8, 128, 16, 8

#: the storage dtypes torch's CPU SDPA is timed in (bf16 reads the kernel's
#: bytes; fp16 too, but CPU SDPA is slow in it; fp32 twice as many bytes)
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


#: pause after each timed call: numpy's OpenBLAS workers spin ~2^28 cycles
#: after a call, and the next figure measured beside them lost a third of
#: the machine (streaming read 34 -> 23 GB/s right after a matmul)
SETTLE_S = 0.15


def _best_interleaved(fns: dict, rounds: int) -> dict:
    """Best time of each function over ``rounds`` rounds that call them in
    turn: a noisy host slows all of them alike within a round, so the
    ratios of the best times compare like with like."""
    best = dict.fromkeys(fns, math.inf)
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
            time.sleep(SETTLE_S)
    return best


def _kv_bytes(ctx: int) -> int:
    return 2 * B * HKV * ctx * D * 2


#: distinct pages of the cache-resident kernel figure: 512 KiB, which each
#: core's L2 holds
CACHED_PAGES = 128


def kernel_section(contexts=(1024, 2048, 4096, 8192, 16384), repeat: int = 5,
                   progress=None) -> dict:
    import numba

    from kernels import counters as C
    from kernels.attention import dense_attention
    from csdemu.bench.kernels import (measure_peak_gflops, overlap_reader, page_order_reader,
                               stream_reader)
    from csdemu.bench.hugepages import hugepage_empty
    from csdemu.bench.paged_kv import random_paged_kv
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        torch = None
    stream_read, stream_bytes = stream_reader(nbytes=_kv_bytes(max(contexts)))
    peak_fma = measure_peak_gflops() * 1e9 / 2
    rows = []
    rng = np.random.default_rng(0)
    for ctx in contexts:
        lay = random_paged_kv(B, HKV, D, [ctx] * B, T, NCH, "fp16", seed=ctx,
                              hugepages=True, k_dims_major=True)
        q = rng.standard_normal((B, HQ, D)).astype(np.float32)
        out = np.empty_like(q)

        def kernel():
            return dense_attention(q, lay.pool, lay.dram_pool, lay.k_pages, lay.v_pages,
                                   lay.seq_lens, lay.group_channel, NCH, out, kv_dtype="fp16",
                                   k_dims_major=True)
        ctr = kernel()
        fma_per_byte = ctr[:, C.MACS].sum() / (ctr[:, C.FLASH_BYTES].sum() + ctr[:, C.DRAM_BYTES].sum())
        # the same pages in the kernel's order (each unit's K pages, then its
        # V pages), summed with no attention arithmetic
        order = np.concatenate([np.concatenate([lay.k_pages[b, h], lay.v_pages[b, h]])
                                for b in range(B) for h in range(HKV)])
        order = order[order >= 0]                   # flash pages only
        page_read, page_bytes = page_order_reader(lay.pool, order)
        # The same K and V as float32 dense arrays for the references.
        K = hugepage_empty((B, HKV, ctx, D), np.float32)
        V = hugepage_empty((B, HKV, ctx, D), np.float32)
        for b in range(B):
            for h in range(HKV):
                kp = lay.pool[lay.k_pages[b, h, :ctx // T]].reshape(-1, D, T)     # dims-major
                K[b, h] = kp.transpose(0, 2, 1).reshape(ctx, D).view(np.float16)
                V[b, h] = lay.pool[lay.v_pages[b, h, :ctx // T]].reshape(ctx, D).view(np.float16)
        qg = q.reshape(B, HKV, HQ // HKV, D)

        def numpy_ref():
            s = np.matmul(qg, K.transpose(0, 1, 3, 2)) / np.float32(math.sqrt(D))
            s -= s.max(axis=-1, keepdims=True)
            p = np.exp(s)
            p /= p.sum(axis=-1, keepdims=True)
            return np.matmul(p, V)
        ref = numpy_ref().reshape(B, HQ, D)
        err = float(np.abs(ref - out).max())
        fns = {"kernel": kernel, "numpy": numpy_ref, "page_order": page_read}
        if ctx == max(contexts):
            fns["stream"] = stream_read
            # the same attend with every flash page reference folded onto
            # CACHED_PAGES pages: the same work, its pages in cache
            kpc, vpc = (np.where(p >= 0, p % CACHED_PAGES, p) for p in (lay.k_pages, lay.v_pages))

            def cached():
                return dense_attention(q, lay.pool, lay.dram_pool, kpc, vpc, lay.seq_lens,
                                       lay.group_channel, NCH, out, kv_dtype="fp16",
                                       k_dims_major=True)
            cached()
            fns["cached"] = cached
            overlap_read, _ = overlap_reader(lay.pool, order, fma_per_byte)
            fns["overlap"] = overlap_read
        if torch is not None:
            # q grouped by its kv head, [B, kv_heads, g, D]: one plain SDPA per
            # kv head. (enable_gqa=True takes a path 2.6x slower on CPU.) Each
            # storage dtype torch has; its best is the baseline.
            qt = torch.from_numpy(qg)
            kt, vt = torch.from_numpy(K), torch.from_numpy(V)
            for name, dt in TORCH_DTYPES.items():
                args = tuple(x.to(getattr(torch, dt)) for x in (qt, kt, vt))
                fns[f"torch_{name}"] = (lambda a=args: F.scaled_dot_product_attention(*a))
                fns[f"torch_{name}"]()
        with torch.no_grad() if torch is not None else contextlib.nullcontext():
            best = _best_interleaved(fns, repeat)
        row = {"context": ctx, "kv_bytes": _kv_bytes(ctx), "kernel_s": best["kernel"],
               "page_order_bytes_per_s": page_bytes / best["page_order"],
               "numpy_s": best["numpy"], "max_abs_err_vs_numpy": err}
        if torch is not None:
            row.update({f"torch_{n}_s": best[f"torch_{n}"] for n in TORCH_DTYPES})
            row["torch_best"] = min(TORCH_DTYPES, key=lambda n: best[f"torch_{n}"])
            row["torch_s"] = best[f"torch_{row['torch_best']}"]
        if "stream" in best:
            stream = stream_bytes / best["stream"]
            cached_rate = _kv_bytes(ctx) / best["cached"]
            overlap_rate = page_bytes / best["overlap"]
        rows.append(row)
        if progress:
            progress(f"bench attention: context {ctx}: kernel {best['kernel'] * 1e3:.2f} ms, "
                     f"numpy {best['numpy'] * 1e3:.2f} ms")
        del K, V, lay, fns
    big = max(rows, key=lambda r: r["context"])
    res = {
        "stream_bytes_per_s": stream,
        "kernel_bytes_per_s": big["kv_bytes"] / big["kernel_s"],
        "kernel_threads": numba.get_num_threads(),
        "contexts": rows,
    }
    res["kernel_vs_stream"] = res["kernel_bytes_per_s"] / stream
    # Pages sit shuffled in the pool as the FTL scatters them; a 4 KiB page
    # read out of order costs more than streaming here, kernel or not
    res["page_order_bytes_per_s"] = big["page_order_bytes_per_s"]
    res["page_order_vs_stream"] = big["page_order_bytes_per_s"] / stream
    res["kernel_vs_page_order"] = res["kernel_bytes_per_s"] / big["page_order_bytes_per_s"]
    res["peak_fma_per_s"] = peak_fma
    res["fma_per_kv_byte"] = float(fma_per_byte)
    res["roofline_bytes_per_s"] = min(stream, peak_fma / fma_per_byte)
    res["kernel_vs_roofline"] = res["kernel_bytes_per_s"] / res["roofline_bytes_per_s"]
    # Where the time goes: the kernel with its pages in cache is its
    # arithmetic alone; with no overlap of reads and arithmetic, a page costs
    # its page-order read time plus that.
    res["kernel_cached_bytes_per_s"] = cached_rate
    res["no_overlap_bytes_per_s"] = 1.0 / (1.0 / cached_rate + 1.0 / res["page_order_bytes_per_s"])
    res["kernel_vs_no_overlap"] = res["kernel_bytes_per_s"] / res["no_overlap_bytes_per_s"]
    # ... and with reads and the kernel's FMA count overlapping as well as
    # the machine lets them when no FMA waits for a load (csdemu/bench/overlap.py)
    res["ideal_overlap_bytes_per_s"] = overlap_rate
    res["ideal_overlap_vs_stream"] = overlap_rate / stream
    res["kernel_vs_ideal_overlap"] = res["kernel_bytes_per_s"] / overlap_rate
    res["kernel_vs_numpy"] = big["numpy_s"] / big["kernel_s"]
    if "torch_s" in big:
        import torch
        res["kernel_vs_torch"] = big["torch_s"] / big["kernel_s"]
        res["torch_best_dtype"] = big["torch_best"]
        res["torch_threads"] = torch.get_num_threads()
    return res


def daemon_section(socket_path: str, context: int = 4096, attends: int = 20,
                   progress=None) -> dict:
    import csdemu
    rng = np.random.default_rng(1)
    ids = list(range(B))
    out = {"daemon_context": context}
    with csdemu.connect(socket_path) as dev:
        kv = dev.create_kv_namespace(layers=1, q_heads=HQ, kv_heads=HKV, head_dim=D,
                                     sparse_layout=True)
        try:
            for b in ids:
                k = rng.standard_normal((1, context, HKV, D)).astype(np.float16)
                v = rng.standard_normal((1, context, HKV, D)).astype(np.float16)
                kv.append(0, [b], k, v)
            time.sleep(0.5)                  # let the programs drain: an idle drive
            q = rng.standard_normal((B, HQ, D)).astype(np.float32)
            res = np.empty_like(q)
            for name, sparse in (("dense", None),
                                 ("sparf", csdemu.SparF.ratio(1 / 8, D, context, window=T))):
                kv.attend(0, ids, q, sparse=sparse, out=res)
                before = dev.engine_log()
                wall, modeled = 0.0, 0
                for _ in range(attends):
                    t0 = time.perf_counter()
                    kv.attend(0, ids, q, sparse=sparse, out=res)
                    t1 = time.perf_counter()
                    wall += t1 - t0
                    modeled += kv.last.device_ns
                    # Virtual timing posts at once: an emulator ahead of the model
                    # would queue the next attend behind this one on the modeled
                    # drive, and its device time would count that wait. Each
                    # attend starts on an idle drive, so modeled = service time.
                    idle_at = t0 + kv.last.device_ns / 1e9 + 1e-3
                    if idle_at > t1:
                        time.sleep(idle_at - t1)
                after = dev.engine_log()
                if progress:
                    progress(f"bench attention: daemon {name}: {attends / wall:.1f} attends/s")
                out[f"{name}_attends_per_s"] = attends / wall
                out[f"{name}_realtime_factor"] = wall / (modeled / 1e9)
                out[f"{name}_modeled_ms"] = modeled / 1e6 / attends
                out[f"{name}_flash_bytes"] = (after["bytes_read_flash"] - before["bytes_read_flash"]) / attends
                out[f"{name}_pages_sensed"] = (after["pages_read_flash"] - before["pages_read_flash"]) / attends
                # where the wall time goes: the kernel, and charging the timing model
                for key in ("kernel", "charge"):
                    out[f"{name}_{key}_ms"] = (after[f"{key}_wall_ns"] - before[f"{key}_wall_ns"]) / attends / 1e6
        finally:
            kv.delete()
    # the dense kernel inside the daemon, over the pages where the FTL put
    # them (a prefilled sequence's pages follow each other) rather than a
    # shuffled pool; this namespace has the SparF layout, so K is token-major
    out["dense_kernel_bytes_per_s"] = out["dense_flash_bytes"] / (out["dense_kernel_ms"] / 1e3)
    out["realtime_factor"] = out["dense_realtime_factor"]
    out["sparf_bytes_vs_dense"] = out["sparf_flash_bytes"] / out["dense_flash_bytes"]
    # the other two sides of SparF's saving: sensing still reads whole pages,
    # and the modeled time follows the slower of sensing and moving
    out["sparf_pages_vs_dense"] = out["sparf_pages_sensed"] / out["dense_pages_sensed"]
    out["sparf_modeled_vs_dense"] = out["sparf_modeled_ms"] / out["dense_modeled_ms"]
    return out


TARGETS = {"kernel_vs_stream": 0.9, "kernel_vs_numpy": 5.0, "kernel_vs_torch": 1.5,
           "realtime_factor": 1.0, "sparf_bytes_vs_dense": 0.25}


_BEST = ("best of --repeat rounds that call kernel, numpy, torch and the readers in turn "
         "(a 0.15 s pause after each); first calls (JIT, allocation) untimed")
HOW = {
    "stream_bytes_per_s": "parallel Numba sum over a hugepage buffer as large as the largest KV; " + _BEST,
    "kernel_bytes_per_s": "dense kernel, largest context, fp16 K/V bytes read / time, "
                          "kernel_threads threads; " + _BEST,
    "kernel_threads": "Numba threads of the kernel (and the readers)",
    "kernel_vs_*": "ratio of rates (or of times) at the largest context, same rounds",
    "page_order_*": "the Numba sum over exactly the kernel's pages in its order, prefetched "
                    "one page ahead; " + _BEST,
    "peak_fma_per_s": "independent FMA chains in registers on every kernel thread",
    "fma_per_kv_byte": "the kernel's own MAC and byte counters",
    "roofline_bytes_per_s": "min(stream, peak FMA / FMA per byte)",
    "kernel_cached_bytes_per_s": "the kernel with every page reference folded onto 128 pages "
                                 "(in L2): its arithmetic alone",
    "no_overlap_bytes_per_s": "1 / (1 / cached + 1 / page order)",
    "ideal_overlap_*": "page-order walk plus the kernel's FMA count on chains no load feeds",
    "kernel_vs_numpy": "numpy matmul/exp/matmul with q grouped by kv head, over float32 K/V "
                       "(numpy has no fp16 BLAS: twice the kernel's bytes), numpy's BLAS threads; "
                       + _BEST,
    "kernel_vs_torch": "torch CPU SDPA with q grouped [B, kv_heads, g, D] (no enable_gqa, a "
                       "slower path), K/V in fp32, bf16 and fp16 each, the fastest "
                       "(torch_best_dtype) with torch_threads threads; " + _BEST,
    "torch_best_dtype": "the storage dtype of torch's fastest run at the largest context",
    "torch_threads": "torch.get_num_threads() during the run",
    "daemon_context": "tokens per sequence in the daemon section",
    "dense_*": "live daemon (instinfer, virtual timing), one layer, batch 8, 32 q / 8 kv heads "
               "x 128, fp16, SparF layout; 20 attends each started on an idle drive after one "
               "untimed; wall as the client sees it, modeled = the completion's device_ns, "
               "flash bytes/pages from the engine log",
    "sparf_*": "as dense_*, SparF at r and k for 1/8 with a 16-token window",
    "realtime_factor": "dense_realtime_factor",
    "engine_threads": "kernel threads of the daemon",
    "contexts": "per context: kernel_s, numpy_s and torch_<dtype>_s best times, " + _BEST,
}


def run_attention_bench(socket_path: str, repeat: int = 5, contexts=(1024, 2048, 4096, 8192, 16384),
                        progress=None) -> dict:
    res = kernel_section(contexts, repeat, progress)
    res.update(daemon_section(socket_path, progress=progress))
    res["targets"] = TARGETS
    res["how"] = HOW
    return res
