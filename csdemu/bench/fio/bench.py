#!/usr/bin/env python3
"""fio benchmark: csdemu through nbdkit against two nbdkit baselines.

    .venv/bin/python -m csdemu.bench.fio.bench [--seconds 10] [--rounds 4] [--read-only]

`run_fio_bench()` returns one flat dict (each figure's "how" is in it):
- 4 KiB random read at QD8 (csdemu/bench/fio/randread.fio) through nbdkit into
  csdemu, against nbdkit's Python plugin serving a bytearray of the same size
  (csdemu/bench/fio/bytearray_plugin.py: Python in nbdkit as csdemu's plugin
  has, so both pay nbdkit's GIL hand-offs across CPUs) and against nbdkit's C
  memory plugin (no Python: the ceiling of the NBD path), rounds interleaved
  and the best round of each kept, with every round's ratio and the median;
- the same, pinned like for like: the daemon alone on the last CPU, either
  nbdkit on the others;
- where the CPU goes in each run: CPU microseconds per I/O of fio, nbdkit and
  (csdemu only) the daemon, from /proc/PID/stat and fio's children times;
- 4 KiB random write at QD8 over 90 % of the namespace once it has been
  filled to 90 % (csdemu/bench/fio/randwrite.fio), with the drive's WAF, GC runs
  and pages copied during that run (vendor log C0h deltas).
The drive is the instinfer profile cut to 2 ways x 16 lines (32 MiB raw,
26 MiB user) so 90 % fill and GC come within seconds.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

FIO_DIR = os.path.dirname(os.path.abspath(__file__))

BENCH_SET = ["geometry.ways=2", "geometry.blocks_per_plane=16", "device.kv_pct=0"]  # block only
TARGET_RATIO = 1.0


def _iops(data: dict, kind: str) -> float:
    return float(sum(j[kind]["iops"] for j in data["jobs"]))


def _clat_us(data: dict, kind: str, p: str) -> float:
    j = data["jobs"][0][kind]["clat_ns"].get("percentile", {})
    return round(j.get(p, 0) / 1000.0, 1)


def _cpu_s(pid: int) -> float:
    """utime + stime of a live process, seconds (/proc/PID/stat fields 14, 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _fio_cpu_s() -> float:
    t = os.times()
    return t.children_user + t.children_system


def cpu_per_io(before: dict, after: dict, ios: int, wall_s: float) -> dict:
    """CPU microseconds per I/O of each process between two snapshots
    ({name: CPU seconds}), and the cores they kept busy together."""
    used = {k: after[k] - before[k] for k in before}
    out = {f"{k}_us_per_io": round(v / ios * 1e6, 1) for k, v in used.items()} if ios else {}
    out["cores_busy"] = round(sum(used.values()) / wall_s, 2) if wall_s > 0 else None
    return out


def _pair_figures(key: str, best_c: dict, best_b: dict, pairs: list) -> dict:
    ci, bi = _iops(best_c, "read"), _iops(best_b, "read")
    return {
        f"{key}_4k_qd8_iops_csdemu": round(ci, 1),
        f"{key}_4k_qd8_iops_bytearray": round(bi, 1),
        f"{key}_ratio_csdemu_over_bytearray": round(ci / bi, 4) if bi else None,
        f"{key}_ratio_rounds": [round(x, 3) for x in pairs],
        f"{key}_ratio_median": round(statistics.median(pairs), 4),
        f"{key}_p50_us_csdemu": _clat_us(best_c, "read", "50.000000"),
        f"{key}_p50_us_bytearray": _clat_us(best_b, "read", "50.000000"),
        f"{key}_cpu_csdemu": best_c["cpu"],
        f"{key}_cpu_bytearray": best_b["cpu"],
    }


def _memory_figures(key: str, best_c: dict, best_m: dict, pairs: list) -> dict:
    mi = _iops(best_m, "read")
    return {
        f"{key}_4k_qd8_iops_memory": round(mi, 1),
        f"{key}_ratio_csdemu_over_memory": round(_iops(best_c, "read") / mi, 4) if mi else None,
        f"{key}_ratio_memory_rounds": [round(x, 3) for x in pairs],
        f"{key}_ratio_memory_median": round(statistics.median(pairs), 4),
        f"{key}_p50_us_memory": _clat_us(best_m, "read", "50.000000"),
        f"{key}_cpu_memory": best_m["cpu"],
    }


HOW = {
    "randread_*": "fio randread.fio (4 KiB random reads, QD8, libnbd engine) for --seconds per "
                  "run through nbdkit (16 threads) on one machine, rounds interleaved: csdemu, "
                  "bytearray, memory; best round of each, ratios of the best and per round",
    "*_bytearray": "nbdkit's python plugin serving a bytearray: as csdemu's plugin, Python in "
                   "nbdkit, so its GIL hand-offs across CPUs limit both alike",
    "*_over_bytearray": "csdemu IOPS / the bytearray plugin's, the best runs of the same rounds",
    "*memory*": "nbdkit's C memory plugin (allocator=malloc): no Python at all, the NBD path's "
                "ceiling; csdemu has a Python plugin and a second process in the path",
    "*_cpu_*": "CPU microseconds per I/O of fio, nbdkit and the daemon (/proc/PID/stat), and "
               "the cores they kept busy",
    "pinned_*": "as randread_*, the daemon pinned alone to the last CPU and nbdkit (either "
                "plugin) to the others: like for like, each nbdkit on the same CPUs",
    "pinned_cpus": "the CPUs of the pinned runs", "pinned_gain_*": "pinned IOPS / unpinned IOPS",
    "randwrite_*": "fio randwrite.fio (4 KiB random writes, QD8) over 90 % of the namespace "
                   "once filled to 90 %; WAF, GC runs and pages copied from vendor log C0h deltas",
    "namespace_bytes": "the block namespace's size", "seconds_per_job": "fio runtime of each job",
    "rounds": "interleaved rounds of the read comparison",
    "geometry": "the drive: instinfer cut small so the fill and GC come within seconds",
}


def run_fio_bench(seconds: float = 10.0, rounds: int = 4, echo=None,
                  read_only: bool = False) -> dict:
    from csdemu.bench.fio import runner as run_fio
    from csdemu.bench.machine import machine
    from csdemu.nbd.server import NbdServer
    from csdemu.host.spawn import DaemonProcess
    from csdemu.host.counters import counter_deltas, device_counters
    from csdemu.drive.cpus import format_cpu_list, pin_process

    def say(msg):
        if echo:
            echo(msg)

    tmp = tempfile.mkdtemp(prefix="csdemu-bench-fio-")
    out = {}
    extra = [a for s in BENCH_SET for a in ("--set", s)]

    def fio(name, uri, procs=None):
        """Run a job file; with `procs` ({name: pid}) also the CPU each used."""
        snap = lambda: {"fio": _fio_cpu_s(), **{k: _cpu_s(p) for k, p in (procs or {}).items()}}
        c0, t0 = snap(), time.monotonic()
        rc, data, err = run_fio.run_fio(os.path.join(FIO_DIR, f"{name}.fio"), uri,
                                        os.path.join(tmp, f"{name}.json"), seconds)
        if rc or data is None or any(j.get("error") for j in data["jobs"]):
            raise RuntimeError(f"fio {name}.fio failed ({rc}): {err[-500:]}")
        if procs is not None:
            ios = sum(j[k]["total_ios"] for j in data["jobs"] for k in ("read", "write"))
            data["cpu"] = cpu_per_io(c0, snap(), ios, time.monotonic() - t0)
        return data

    def compare(c_srv, bases: dict, daemon_pid, label):
        """`rounds` interleaved randread runs against csdemu and each baseline
        server ({name: server}) -> (best csdemu run, {name: best run},
        {name: every round's csdemu / baseline ratio})."""
        best_c, best, pairs = None, dict.fromkeys(bases), {n: [] for n in bases}
        for r in range(rounds):
            say(f"{label}round {r + 1}: randread.fio against csdemu")
            c = fio("randread", c_srv.uri, {"nbdkit": c_srv.proc.pid, "daemon": daemon_pid})
            if best_c is None or _iops(c, "read") > _iops(best_c, "read"):
                best_c = c
            for name, srv in bases.items():
                say(f"{label}round {r + 1}: randread.fio against the {name} plugin")
                b = fio("randread", srv.uri, {"nbdkit": srv.proc.pid})
                pairs[name].append(_iops(c, "read") / _iops(b, "read"))
                if best[name] is None or _iops(b, "read") > _iops(best[name], "read"):
                    best[name] = b
        return best_c, best, pairs

    with DaemonProcess(extra_args=extra) as d:
        with NbdServer(d.socket_path) as srv:
            size = None
            say("fill: seq.fio (90 % of the namespace)")
            fio("seq", srv.uri)
            from csdemu.host.device import Device
            with Device(d.socket_path, arena_bytes=1 << 20, io_depth=4) as dev:
                ns = dev.identify_ns(1)
                size = ns["nsze"] << ns["lbaf0_lbads"]
            base_plugin = os.path.join(FIO_DIR, "bytearray_plugin.py")
            # nbdkit's own C memory plugin, its memory allocated for real:
            # the NBD path's ceiling, with no Python in nbdkit at all
            mem_args = [f"size={size}", "allocator=malloc"]
            with NbdServer(None, plugin=base_plugin, extra=[f"size={size}"]) as base, \
                    NbdServer(None, plugin="memory", extra=mem_args) as mem:
                best_c, best, pairs = compare(srv, {"bytearray": base, "memory": mem}, d.proc.pid, "")
            out.update(_pair_figures("randread", best_c, best["bytearray"], pairs["bytearray"]))
            out.update(_memory_figures("randread", best_c, best["memory"], pairs["memory"]))
            out["randread_ratio_target"] = TARGET_RATIO
            cpus = sorted(os.sched_getaffinity(0))
            if len(cpus) >= 2:
                # The daemon alone on the last CPU, nbdkit (either plugin) on the others.
                dcpu, ncpus = {cpus[-1]}, set(cpus[:-1])
                pin_process(dcpu, d.proc.pid)
                try:
                    with NbdServer(d.socket_path, cpus=ncpus) as psrv, \
                            NbdServer(None, plugin=base_plugin, extra=[f"size={size}"],
                                      cpus=ncpus) as pbase:
                        best_pc, pbest, ppairs = compare(psrv, {"bytearray": pbase}, d.proc.pid,
                                                         "pinned: ")
                finally:
                    pin_process(set(cpus), d.proc.pid)
                best_pb = pbest["bytearray"]
                out.update(_pair_figures("pinned_randread", best_pc, best_pb, ppairs["bytearray"]))
                out["pinned_cpus"] = {"daemon": format_cpu_list(dcpu),
                                      "nbdkit": format_cpu_list(ncpus), "fio": "any"}
                out["pinned_gain_csdemu"] = round(_iops(best_pc, "read") / _iops(best_c, "read"), 4)
                out["pinned_gain_bytearray"] = round(_iops(best_pb, "read") / _iops(best["bytearray"], "read"), 4)
            if read_only:
                out["machine"] = machine()
                out["how"] = HOW
                return out
            say("randwrite.fio at 90 % fill")
            before = device_counters(d.socket_path)
            w = fio("randwrite", srv.uri)
            delta = counter_deltas(before, device_counters(d.socket_path))["flash"]
            out.update({
                "randwrite_4k_qd8_iops_90pct_fill": round(_iops(w, "write"), 1),
                "randwrite_p99_us": _clat_us(w, "write", "99.000000"),
                "randwrite_waf_90pct_fill": round(delta["waf"], 3) if delta["waf"] else None,
                "randwrite_gc_runs": delta["gc_runs"],
                "randwrite_gc_pages_copied": delta["gc_pages_copied"],
                "namespace_bytes": size,
                "seconds_per_job": seconds,
                "rounds": rounds,
                "geometry": "instinfer, " + ", ".join(BENCH_SET),
            })
    out["machine"] = machine()
    out["how"] = HOW
    return out


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from csdemu.bench.fio.runner import positive
    ap.add_argument("--seconds", type=positive(float), default=10.0, help="seconds per fio job")
    ap.add_argument("--rounds", type=positive(int), default=4, help="interleaved rounds of the read comparison")
    ap.add_argument("--read-only", action="store_true",
                    help="only the randread comparison (skip randwrite at 90 %% fill)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args()
    res = run_fio_bench(a.seconds, a.rounds, echo=lambda m: print("+", m, file=sys.stderr),
                        read_only=a.read_only)
    text = json.dumps(res, indent=2)
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
