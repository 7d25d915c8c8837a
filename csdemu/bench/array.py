"""`csdemu bench array`: one OPT-13B-shaped layer on arrays of 1, 2, 4, 8 drives.

Per array size N (the first N of max(N) daemons of the `instinfer` profile,
started once): a KV namespace of one layer, 40 kv heads x 128 dims, fp16
(OPT-13B: no GQA), is filled with `batch` sequences of `context` tokens,
each appended whole (one prefill); after a second for the programs to
finish, the same dense attend is issued `repeat` times, as a decode loop
issues them (after one untimed attend that registers q and the output for
DMA).

* modeled: the array's modeled time of the attend (kv.last.device_ns: the
  slowest member + q out and outputs back over the shared host links,
  csdemu.topology); scaling efficiency = modeled(1) / (N x modeled(N)).
* wall: the caller's time per attend call, median; realtime factor = wall /
  modeled. On a machine with fewer cores than drives the members share the
  cores, so the wall time says how far the emulation lags, not what N
  drives would do; the modeled time is the result.
* sysmodel: csdemu.sysmodel.array_attend_ns for the same configuration
  (the daemon's page layout, an idle array); modeled_vs_sysmodel = the
  ratio (target: within +-10 %). The two share the split rule and the step
  time, so the ratio checks the live page layout and timing against the
  model's.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

HOW = {
    "rows": "per array size, the first N of max(N) instinfer daemons: modeled = the array's "
            "kv.last.device_ns of a dense attend (median of the timed repeats; modeled_spread = "
            "(max - min) / median); slowest_member_ms and host_links_us = its two parts; "
            "scaling_efficiency = modeled(first) x N(first) / (N x modeled); wall = the caller's "
            "time per attend call (median); realtime_factor = wall / modeled; sysmodel = "
            "csdemu.sysmodel.array_attend_ns for the same shape and N; modeled_vs_sysmodel = "
            "modeled / sysmodel; append_gb_per_s = K and V bytes appended / wall time of the appends",
    "shape": "the layer measured",
}


def _one(arr, drives, batch, context, heads, head_dim, repeat, prof, topology, K, V):
    from csdemu.sysmodel import array_attend_ns
    kv = arr.create_kv_namespace(layers=1, q_heads=heads, kv_heads=heads, head_dim=head_dim)
    try:
        t0 = time.perf_counter()
        for s in range(batch):
            kv.append(0, [s], K, V)
        append_s = time.perf_counter() - t0
        time.sleep(1.0)                    # let the programs finish: every drive is idle again
        q = np.random.default_rng(1).standard_normal((batch, heads, head_dim)).astype(np.float32)
        out = np.empty_like(q)
        kv.attend(0, list(range(batch)), q, out=out)       # registers q and out for DMA
        walls, modeled, slowest, host = [], [], [], []
        for _ in range(repeat):
            t = time.perf_counter_ns()
            kv.attend(0, list(range(batch)), q, out=out)
            walls.append(time.perf_counter_ns() - t)
            modeled.append(kv.last.device_ns)
            slowest.append(kv.last.slowest_ns)
            host.append(kv.last.host_ns)
    finally:
        kv.delete()
    T = prof.geometry.page_bytes // (head_dim * 2)
    model_ns = array_attend_ns(prof, topology, heads, heads, head_dim, [context] * batch, 2, T,
                               drives)
    m, w = statistics.median(modeled), statistics.median(walls)
    return {"drives": drives, "modeled_ms": m / 1e6,
            "modeled_spread": (max(modeled) - min(modeled)) / m,
            "slowest_member_ms": statistics.median(slowest) / 1e6,
            "host_links_us": statistics.median(host) / 1e3,
            "wall_ms": w / 1e6, "realtime_factor": w / m,
            "sysmodel_ms": model_ns / 1e6, "modeled_vs_sysmodel": m / model_ns,
            "append_gb_per_s": 2 * K.nbytes * batch / append_s / 1e9}


def run_array_bench(drives=(1, 2, 4, 8), batch: int = 16, context: int = 4096, heads: int = 40,
                    head_dim: int = 128, repeat: int = 5, profile: str = "instinfer",
                    topology=None, engine_threads: int = 1, progress=None) -> dict:
    from csdemu.drive.profile import load_profile
    from csdemu.host.array import connect_array
    from csdemu.host.array_spawn import ArrayProcesses
    from csdemu.topology import load_topology
    prof, topo = load_profile(profile), load_topology(topology)
    rng = np.random.default_rng(0)
    # one sequence's K and V, appended for every sequence: the timing does
    # not depend on the values, and drawing 1.3 GB of normals would dominate
    K = rng.standard_normal((1, context, heads, head_dim)).astype(np.float16)
    V = rng.standard_normal((1, context, heads, head_dim)).astype(np.float16)
    rows = []
    with ArrayProcesses(max(drives), profile=profile,
                        extra_args=["--engine-threads", str(engine_threads)]) as procs:
        for n in drives:
            with connect_array(sockets=procs.sockets[:n], topology=topo) as arr:
                row = _one(arr, n, batch, context, heads, head_dim, repeat, prof, topo, K, V)
            first = rows[0] if rows else row
            row["scaling_efficiency"] = (first["modeled_ms"] * first["drives"]
                                         / (n * row["modeled_ms"]))
            rows.append(row)
            if progress:
                progress(row)
    return {"shape": {"kv_heads": heads, "q_heads": heads, "head_dim": head_dim, "dtype": "float16",
                      "batch": batch, "context": context, "layers": 1, "model": "OPT-13B layer"},
            "profile": profile, "topology": topo.name, "engine_threads": engine_threads,
            "repeat": repeat, "rows": rows,
            "modeled_vs_sysmodel_worst": max(abs(r["modeled_vs_sysmodel"] - 1) for r in rows),
            "targets": {"modeled_vs_sysmodel_within": 0.10},
            "how": HOW | {"modeled_vs_sysmodel_worst": "the largest distance of modeled / sysmodel "
                                                       "from 1 over the rows",
                          "profile": "drive profile of every member", "topology": "host topology",
                          "engine_threads": "kernel threads per member daemon",
                          "repeat": "timed attends per array size"}}
