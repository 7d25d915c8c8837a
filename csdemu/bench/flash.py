"""Flash backend benchmark: emulator wall-clock speed against modeled speed.

`run_flash_bench()` drives a FlashNamespace directly (no transport) with a
closed loop of `qd` outstanding commands on the modeled clock: command i
arrives when command i - qd completed (arrival times never go backwards).
For each phase it reports

    wall_mbps      bytes / wall time spent in process_io (the flash backend;
                   read data comes back as a zero-copy view of the NAND file)
    wall_with_copy_mbps   the same plus copying read data into a host buffer,
                   which is what the controller's DMA does afterwards
    modeled_mbps   bytes / (last modeled completion - first arrival)

and ``realtime_factor_seq_read`` = wall time / modeled time of the
sequential read phase (<= 1 means the backend keeps up with the device it
models; ``realtime_factor_seq_read_with_copy`` includes the copy out). Sequential read data is in the page cache (written just before).
The WAF phase fills 90 % of a small copy of the profile (few lines so GC
runs soon) and overwrites it randomly with 4 KiB writes.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from csdemu.drive.flash.nvm_namespace import FlashNamespace
from csdemu.drive.namespace import Request
from csdemu.drive.profile import load_profile
from nvme_cmds.nvm import lba_cdws
from nvme_cmds.opcodes import NvmOpcode


def _cmd(op, slba, nlb, t, data=None):
    c = lba_cdws(slba, nlb)
    return Request(int(op), 1, (c["cdw10"], c["cdw11"], c["cdw12"], 0, 0, 0), t, data, 0)


def _phase(ns, op, lbas, nlb, qd, buf, t_start):
    """Run one closed-loop phase; returns (bytes, wall_s, modeled_ns, t_end)."""
    lba_size = ns.lba_size
    nbytes = nlb * lba_size
    mv = memoryview(buf)[:nbytes] if op == NvmOpcode.WRITE else None
    host = np.empty(nbytes, np.uint8)
    done = np.full(qd, t_start, np.int64)
    arrival = t_start
    last = t_start
    wall = copy = 0.0
    clock = time.perf_counter
    for i, lba in enumerate(lbas.tolist()):
        arrival = max(arrival, int(done[i % qd]))
        req = _cmd(op, lba, nlb, arrival, mv)
        t0 = clock()
        r = ns.process_io(req)
        t1 = clock()
        if op == NvmOpcode.READ and not r.status:
            np.copyto(host, r.data)             # what the controller's DMA out does
            copy += clock() - t1
        wall += t1 - t0
        if r.status:
            raise RuntimeError(f"bench: {op.name} at LBA {lba} failed with status {r.status:#x}")
        done[i % qd] = r.done_ns
        last = max(last, r.done_ns)
    return len(lbas) * nbytes, (wall, copy), last - t_start, last


def _rate(nbytes, walls, modeled_ns):
    wall_s, copy_s = walls
    out = {"wall_mbps": round(nbytes / wall_s / 1e6, 1) if wall_s else None,
           "modeled_mbps": round(nbytes / modeled_ns * 1e3, 1) if modeled_ns else None,
           "wall_s": round(wall_s, 4), "modeled_s": round(modeled_ns / 1e9, 6),
           "realtime_factor": round(wall_s / (modeled_ns / 1e9), 3) if modeled_ns else None}
    if copy_s:
        w = wall_s + copy_s
        out.update(wall_with_copy_mbps=round(nbytes / w / 1e6, 1),
                   realtime_factor_with_copy=round(w / (modeled_ns / 1e9), 3))
    return out


def run_flash_bench(profile_name: str = "instinfer", data_dir=None, *, seq_bytes: int = 256 << 20,
                    io_bytes: int = 128 << 10, rand_ios: int = 20000, qd: int = 32,
                    waf_overwrite: float = 1.0, waf_lines: int = 32, seed: int = 0,
                    overrides=None) -> dict:
    """Benchmark the flash backend; returns a JSON-able dict (see module doc).

    `data_dir` is a scratch directory (created; a temporary one if None); it
    is emptied first. `seq_bytes` is the sequential write/read volume,
    `rand_ios` the number of random 4 KiB writes, `waf_overwrite` how many
    times the filled 90 % is overwritten in the WAF phase.
    """
    prof = load_profile(profile_name, overrides)
    tmp = None
    if data_dir is None:
        tmp = data_dir = tempfile.mkdtemp(prefix="csdemu-flashbench-")
    base = Path(data_dir)
    out = {"profile": prof.name, "qd": qd, "io_bytes": io_bytes, "seed": seed}
    rng = np.random.default_rng(seed)
    try:
        d1 = base / "seq"
        shutil.rmtree(d1, ignore_errors=True)
        ns = FlashNamespace(1, prof, d1, sync_before_erase=False)
        lba = ns.lba_size
        nlb = io_bytes // lba
        cap = ns.nlbas * lba
        seq_bytes = min(seq_bytes, int(cap * 0.8)) // io_bytes * io_bytes
        buf = rng.integers(0, 256, io_bytes, dtype=np.uint8).tobytes()
        lbas = np.arange(0, seq_bytes // lba, nlb, dtype=np.int64)
        t = 1_000_000
        nb, w, m, t = _phase(ns, NvmOpcode.WRITE, lbas, nlb, qd, buf, t)
        out["seq_write"] = _rate(nb, w, m)
        t = ns.ftl.flush(t)
        t = ns.ftl.clocks.next_idle_ns() + 1
        nb, w, m, t = _phase(ns, NvmOpcode.READ, lbas, nlb, qd, buf, t)
        out["seq_read"] = _rate(nb, w, m)
        out["realtime_factor_seq_read"] = out["seq_read"]["realtime_factor"]
        out["realtime_factor_seq_read_with_copy"] = out["seq_read"]["realtime_factor_with_copy"]
        t = ns.ftl.clocks.next_idle_ns() + 1
        rl = rng.integers(0, ns.nlbas, rand_ios, dtype=np.int64)
        nb, w, m, t = _phase(ns, NvmOpcode.WRITE, rl, 1, qd, buf, t)
        out["rand_write_4k"] = _rate(nb, w, m)
        t = ns.ftl.clocks.next_idle_ns() + 1
        nb, w, m, t = _phase(ns, NvmOpcode.READ, rl, 1, qd, buf, t)
        out["rand_read_4k"] = _rate(nb, w, m)
        ns.close()
        shutil.rmtree(d1, ignore_errors=True)

        # WAF: a small copy of the profile, 90 % full, random 4 KiB overwrites
        g = prof.geometry
        ppb = max(g.pages_per_block // 8, prof.derive().pages_per_flash_page)
        ppb -= ppb % prof.derive().pages_per_flash_page
        small = dict(overrides or {})
        small.update({"geometry.blocks_per_plane": waf_lines, "geometry.pages_per_block": ppb})
        sp = load_profile(profile_name, small)
        d2 = base / "waf"
        shutil.rmtree(d2, ignore_errors=True)
        ns = FlashNamespace(1, sp, d2, sync_before_erase=False)
        fill = int(ns.nlbas * 0.9)
        fl = np.arange(0, fill - nlb + 1, nlb, dtype=np.int64)
        t = 1_000_000
        _, _, _, t = _phase(ns, NvmOpcode.WRITE, fl, nlb, qd, buf, t)
        before = ns.stats()
        ow = rng.integers(0, fill, int(fill * waf_overwrite), dtype=np.int64)
        nb, w, m, t = _phase(ns, NvmOpcode.WRITE, ow, 1, qd, buf, t)
        after = ns.stats()
        hw = after["host_pages_written"] - before["host_pages_written"]
        nw = after["nand_pages_written"] - before["nand_pages_written"]
        out["waf_random_overwrite_90pct"] = {
            "waf": round(nw / hw, 3) if hw else None, "gc_runs": after["gc_runs"] - before["gc_runs"],
            "geometry": ns.ftl.geom.describe(), "gc_policy": sp.gc.policy,
            "overwritten_pages": int(hw), **_rate(nb, w, m)}
        ns.close()
        shutil.rmtree(d2, ignore_errors=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    out["how"] = HOW
    return out


HOW = {
    "profile": "the drive profile modeled", "qd": "commands outstanding on the modeled clock",
    "io_bytes": "bytes per sequential command (random ones are 4 KiB)", "seed": "LBA order seed",
    "seq_*": "process_io of the flash namespace alone, in this process: no controller, transport "
             "or DMA (bench realtime has those); wall = time inside process_io (+ the copy out "
             "for _with_copy), modeled = last modeled completion - first arrival of a closed "
             "loop of qd on the modeled clock; data freshly written, so in the page cache",
    "rand_*": "as seq_*, 4 KiB commands at random LBAs",
    "realtime_factor_seq_read*": "wall / modeled of seq_read (backend alone; see bench realtime "
                                 "for the client's view)",
    "waf_random_overwrite_90pct": "a copy of the profile cut to few lines, filled to 90 % and "
                                  "overwritten once at random in 4 KiB: NAND pages / host pages",
}


if __name__ == "__main__":          # python -m csdemu.bench.flash [profile]
    import json
    import sys
    print(json.dumps(run_flash_bench(sys.argv[1] if len(sys.argv) > 1 else "instinfer"), indent=1))
