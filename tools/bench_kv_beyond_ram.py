"""KV beyond RAM, measured (issue 20, item 7). Not part of `make test`.

Appends KV of 1.3x the machine's RAM to one sparse drive, attends over all
of it in one command, and checks the output against a float64 reference
computed with an online softmax over chunked kv.read's. Reports the append
rate, the attend's wall time against its modeled time, and the error.

    .venv/bin/python tools/bench_kv_beyond_ram.py                # full size
    .venv/bin/python tools/bench_kv_beyond_ram.py --scale 0.02   # a quick run

The KV cannot stay in the page cache, so the attend reads most of it from
the backing disk. How much of the wall time that is: the same attend over
the first sequence alone, once cached, gives the engine's rate when no page
waits for the disk; the rest of the full attend's wall time is the disk's
(and the daemon's read_bytes from /proc/PID/io says how much it read).
The data dir is deleted at the end.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import csdemu  # noqa: E402
from csdemu.bench.machine import machine, write_json  # noqa: E402
from csdemu.host.spawn import DaemonProcess  # noqa: E402

# One layer of a Llama-2-13B-like GQA model: 40 q heads over 8 kv heads of
# 128, fp16 (the shapes of csdemu/bench; only the byte count matters here).
Q_HEADS, KV_HEADS, HEAD_DIM = 40, 8, 128
TOKEN_BYTES = 2 * KV_HEADS * HEAD_DIM * 2          # K and V, fp16
RAM_FACTOR = 1.3
# Raw flash per KV byte: KV namespaces may hold kv_pct of the lines, and a
# sequence's last line is partly empty.
KV_PCT = 90.0
RAW_PER_KV = 1.0 / (KV_PCT / 100.0) * 1.05


HOW = {
    "ram_bytes": "MemTotal of /proc/meminfo",
    "kv_bytes": "K and V appended: 1.3 x MemTotal x --scale, one layer, fp16",
    "seqs": "sequences, appended one after another and attended as one batch",
    "tokens_per_seq": "tokens of each sequence (40 q heads, 8 kv heads x 128)",
    "scale": "--scale",
    "capacity_bytes": "device.capacity of the sparse instinfer drive (kv_pct 90)",
    "start_s": "csdemu start until the socket answers",
    "append_s": "wall time of all kv.append calls",
    "append_gbps": "K and V bytes / wall time of the kv.append calls (64 MiB each, split by "
                   "the library into staging-sized commands)",
    "append_modeled_gbps": "K and V bytes / summed modeled device time of the appends",
    "cached_attend_gbps": "KV bytes / wall time of an attend over the first sequence alone, "
                          "run a second time so its pages are in the page cache: the engine's "
                          "rate when no page waits for the disk",
    "attend_wall_s": "wall time of one dense attend over all sequences (the caller's)",
    "attend_modeled_s": "kv.last.device_ns of that attend",
    "wall_over_modeled": "attend_wall_s / attend_modeled_s",
    "attend_disk_read_bytes": "read_bytes of the daemon in /proc/PID/io across the attend: what "
                              "the page cache did not hold",
    "attend_disk_gbps": "attend_disk_read_bytes / attend_wall_s",
    "attend_cached_estimate_s": "kv_bytes / cached_attend_gbps: the attend's wall time if every "
                                "page were cached",
    "disk_bound_fraction": "1 - attend_cached_estimate_s / attend_wall_s: the share of the "
                           "attend's wall time spent waiting for the backing disk",
    "max_rel_error": "max abs(attend - reference) / max abs(reference) per sequence, the "
                     "largest; the reference is float64, an online softmax over kv.read's of "
                     "65536 tokens; the engine sums in float32",
    "reference_read_gbps": "KV bytes / wall time of the reference (kv.read plus float64 math)",
    "daemon_rss": "VmRSS, VmHWM, RssAnon, RssFile of the daemon at the end, bytes. VmHWM "
                  "counts the KV pages mapped in, page cache the kernel reclaims: the attend "
                  "over the first sequence alone keeps its pages mapped for a next step; the "
                  "full attend (over a quarter of RAM) unmaps each piece when done, and "
                  "kv.read what it copied out. RssAnon: the sequences' page tables",
    "daemon_rss_after_append": "the same right after the appends",
    "disk_direct_read_gbps_qd1": "fio --rw=read --bs=1M --direct=1 --ioengine=libaio "
                                 "--iodepth=1 on a 4 GiB file beside the data dir, after the run",
    "disk_direct_read_gbps_qd32": "the same at --iodepth=32",
    "disk_mmap_4k_read_gbps": "fio --rw=read --bs=4k --ioengine=mmap --invalidate=1 on the same "
                              "file: a cold sequential read through a mapping, page by page",
    "load_average": "1-minute load average at the start and at the end of the run",
}


def mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def proc_io(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = int(v)
    return out


_BASE = np.random.default_rng(0).standard_normal((2, 4096, KV_HEADS, HEAD_DIM)).astype(np.float16)


def token_block(seq: int, t0: int, n: int):
    """K, V of tokens t0..t0+n-1 of a sequence: cheap, reproducible, varied
    (rows of one random block, in an order that depends on the sequence)."""
    idx = (np.arange(t0, t0 + n) * 7 + seq * 131) % _BASE.shape[1]
    return _BASE[0, idx][None], _BASE[1, idx][None]


def reference(kv, sid: int, q: np.ndarray, tokens: int, chunk: int):
    """Attention of q [q_heads, d] over the sequence, float64, by an online
    softmax over chunked kv.read's -> (out [q_heads, d], bytes read, seconds)."""
    g = Q_HEADS // KV_HEADS
    qq = q.astype(np.float64).reshape(KV_HEADS, g, HEAD_DIM) / math.sqrt(HEAD_DIM)
    m = np.full((KV_HEADS, g), -np.inf)
    l = np.zeros((KV_HEADS, g))
    acc = np.zeros((KV_HEADS, g, HEAD_DIM))
    t = time.perf_counter()
    for t0 in range(0, tokens, chunk):
        n = min(chunk, tokens - t0)
        k, v = kv.read(0, sid, t0, n)                       # [n, kv_heads, d]
        k = k.astype(np.float64).transpose(1, 2, 0)          # [kv_heads, d, n]
        v = v.astype(np.float64).transpose(1, 0, 2)          # [kv_heads, n, d]
        s = qq @ k
        m_new = np.maximum(m, s.max(axis=2))
        alpha = np.exp(m - m_new)
        p = np.exp(s - m_new[..., None])
        l = l * alpha + p.sum(axis=2)
        acc = acc * alpha[..., None] + p @ v
        m = m_new
    return (acc / l[..., None]).reshape(Q_HEADS, HEAD_DIM), tokens * TOKEN_BYTES, \
        time.perf_counter() - t


def disk_rates(parent: str) -> dict:
    """What the backing disk gives: fio on a 4 GiB file (the rates the
    attend's disk-bound wall time is set against)."""
    path = os.path.join(parent, f"csdemu-disk-rate-{os.getpid()}")
    runs = {"disk_direct_read_gbps_qd1": ["--direct=1", "--ioengine=libaio", "--iodepth=1",
                                          "--bs=1M"],
            "disk_direct_read_gbps_qd32": ["--direct=1", "--ioengine=libaio", "--iodepth=32",
                                           "--bs=1M"],
            "disk_mmap_4k_read_gbps": ["--ioengine=mmap", "--invalidate=1", "--bs=4k"]}
    out = {}
    try:
        with open(path, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(4096):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        for key, args in runs.items():
            r = subprocess.run(["fio", "--name=disk", f"--filename={path}", "--rw=read",
                                "--size=4G", "--output-format=json", *args],
                               capture_output=True, text=True, check=True)
            job = json.loads(r.stdout)["jobs"][0]["read"]
            out[key] = round(job["bw_bytes"] / 1e9, 3)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0,
                    help="fraction of the full size (1.3x RAM) to append [1.0]")
    ap.add_argument("--data-dir", default=f"/var/tmp/csdemu-beyond-ram-{os.getpid()}",
                    help="drive's data dir, on a disk (not tmpfs); deleted at the end")
    ap.add_argument("--seqs", type=int, default=16, help="sequences (the attend's batch) [16]")
    ap.add_argument("--out", metavar="FILE.json",
                    help="also write the figures there, with the machine and how each was "
                         "measured (bench/results/kv_beyond_ram.json feeds BENCHMARKS.md)")
    ap.add_argument("--json", action="store_true",
                    help="print the figures as JSON (progress goes to stderr)")
    a = ap.parse_args(argv)
    if not 0 < a.scale <= 4:
        ap.error(f"--scale must be in (0, 4], got {a.scale}")
    if a.seqs < 1:
        ap.error(f"--seqs must be at least 1, got {a.seqs}")
    ram = mem_total()
    kv_bytes = int(ram * RAM_FACTOR * a.scale)
    tokens = max(1, kv_bytes // TOKEN_BYTES // a.seqs)
    kv_bytes = tokens * a.seqs * TOKEN_BYTES
    parent = os.path.dirname(os.path.abspath(a.data_dir))
    free = shutil.disk_usage(parent).free
    if free < kv_bytes * 1.1:
        ap.error(f"--data-dir: {parent} has {free / 2**30:.1f} GiB free, the run needs "
                 f"{kv_bytes * 1.1 / 2**30:.1f} GiB")
    cap = int(kv_bytes * RAW_PER_KV) + (1 << 30)
    log = (lambda *x: print(*x, file=sys.stderr, flush=True)) if a.json else \
        (lambda *x: print(*x, flush=True))
    log(f"RAM {ram / 2**30:.1f} GiB; appending {kv_bytes / 2**30:.2f} GiB of KV "
        f"({a.seqs} seqs x {tokens} tokens, {Q_HEADS}/{KV_HEADS} heads x {HEAD_DIM}, fp16) "
        f"to a {cap / 2**30:.0f} GiB sparse drive in {a.data_dir}")
    d = DaemonProcess(data_dir=a.data_dir, profile="instinfer",
                      extra_args=["--set", f"device.capacity={cap}",
                                  "--set", f"device.kv_pct={KV_PCT}"])
    mach = machine()
    load0 = os.getloadavg()[0]
    res = {"ram_bytes": ram, "kv_bytes": kv_bytes, "seqs": a.seqs, "tokens_per_seq": tokens,
           "scale": a.scale, "capacity_bytes": cap}
    try:
        t = time.monotonic()
        d.start(timeout=120)
        res["start_s"] = time.monotonic() - t
        pid = d.proc.pid
        with csdemu.connect(d.socket_path, io_timeout=3600) as dev:
            kv = dev.create_kv_namespace(layers=1, q_heads=Q_HEADS, kv_heads=KV_HEADS,
                                         head_dim=HEAD_DIM)
            ids = list(range(1, a.seqs + 1))
            step = 16384                                   # tokens per append call (64 MiB)
            t = time.perf_counter()
            modeled = 0
            for sid in ids:
                for t0 in range(0, tokens, step):
                    k, v = token_block(sid, t0, min(step, tokens - t0))
                    modeled += kv.append(0, [sid], k, v)
                log(f"  seq {sid}/{a.seqs} appended, {time.perf_counter() - t:.0f} s")
            wall = time.perf_counter() - t
            res["daemon_rss_after_append"] = d.memory()
            res.update(append_s=wall, append_gbps=kv_bytes / wall / 1e9,
                       append_modeled_gbps=kv_bytes / (modeled / 1e9) / 1e9)
            log(f"append: {kv_bytes / 2**30:.2f} GiB in {wall:.1f} s = "
                f"{res['append_gbps']:.2f} GB/s (modeled {res['append_modeled_gbps']:.2f} GB/s)")
            q = np.random.default_rng(7).standard_normal((a.seqs, Q_HEADS, HEAD_DIM)) \
                .astype(np.float32)
            # the engine's own rate: one sequence, attended twice so the second is cached
            kv.attend(0, ids[:1], q[:1])
            t = time.perf_counter()
            kv.attend(0, ids[:1], q[:1])
            cached = time.perf_counter() - t
            res["cached_attend_gbps"] = tokens * TOKEN_BYTES / cached / 1e9
            io0 = proc_io(pid)
            t = time.perf_counter()
            out = kv.attend(0, ids, q)
            wall = time.perf_counter() - t
            io1 = proc_io(pid)
            model = kv.last.device_ns / 1e9
            disk = io1["read_bytes"] - io0["read_bytes"]
            compute = kv_bytes / (res["cached_attend_gbps"] * 1e9)
            res.update(attend_wall_s=wall, attend_modeled_s=model, wall_over_modeled=wall / model,
                       attend_disk_read_bytes=disk, attend_disk_gbps=disk / wall / 1e9,
                       attend_cached_estimate_s=compute,
                       disk_bound_fraction=max(0.0, 1.0 - compute / wall))
            log(f"attend: {wall:.1f} s wall, {model:.2f} s modeled (x{wall / model:.1f}); "
                f"{disk / 2**30:.1f} GiB read from disk at {disk / wall / 1e9:.2f} GB/s; "
                f"cached, the engine does {res['cached_attend_gbps']:.2f} GB/s "
                f"({compute:.1f} s for all): {res['disk_bound_fraction']:.0%} of the wall "
                f"is waiting for the disk")
            err, rbytes, rtime = 0.0, 0, 0.0
            for b, sid in enumerate(ids):
                ref, nb, dt = reference(kv, sid, q[b], tokens, 65536)
                err = max(err, float(np.abs(out[b] - ref).max() / np.abs(ref).max()))
                rbytes += nb
                rtime += dt
            res.update(max_rel_error=err, reference_read_gbps=rbytes / rtime / 1e9)
            log(f"error vs float64 online-softmax reference: {err:.2e} (max |diff| / max |ref|); "
                f"reference kv.read at {res['reference_read_gbps']:.2f} GB/s")
            res["daemon_rss"] = d.memory()
            log(f"daemon: VmRSS {res['daemon_rss']['VmRSS'] / 2**20:.0f} MiB "
                f"(anon {res['daemon_rss']['RssAnon'] / 2**20:.0f}, "
                f"file {res['daemon_rss']['RssFile'] / 2**20:.0f}), "
                f"VmHWM {res['daemon_rss']['VmHWM'] / 2**20:.0f} MiB")
            kv.delete()
    finally:
        d.cleanup()
        shutil.rmtree(a.data_dir, ignore_errors=True)
    if shutil.which("fio"):
        rates = disk_rates(parent)
        res.update(rates)
        log("disk: " + ", ".join(f"{k} {v}" for k, v in rates.items()))
    res["load_average"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    if a.out:
        write_json({**res, "machine": mach, "how": HOW}, a.out)
    if a.json:
        print(json.dumps(res, indent=1))
    return 0 if res.get("max_rel_error", 1.0) < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
