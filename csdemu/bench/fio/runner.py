#!/usr/bin/env python3
"""`make fio`: run fio (ioengine=nbd) against csdemu through nbdkit.

Starts a throwaway daemon (unless --socket names a running one), serves
namespace 1 with `csdemu nbd`'s plugin, runs the job files beside this module in
order (seq fills 90 % of the drive first, so the random jobs read real flash
pages), keeps fio's JSON per job file under bench/results/fio/, and prints
each job's IOPS and latency plus the drive's SMART / flash-log deltas for it
(WAF, GC runs, pages copied). Exit status 1 if any fio job failed (a verify
mismatch is a failure: the verify job runs with verify_fatal=1).

    .venv/bin/python -m csdemu.bench.fio.runner [--jobs seq,randread] [--runtime 10]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

from csdemu.nbd.server import NbdServer
from csdemu.host.spawn import DaemonProcess
from csdemu.host.counters import counter_deltas, device_counters, format_deltas

JOBS = ["seq", "randread", "randwrite", "randrw", "verify"]
# A drive small enough that 90 % fill and GC come within a minute or two:
# the instinfer profile with 2 ways and 16 lines (32 MiB raw, 26 MiB user).
DEFAULT_SET = ["geometry.ways=2", "geometry.blocks_per_plane=16", "device.kv_pct=0"]  # block only
OUT_DIR = os.path.join("bench", "results", "fio")


def run_fio(jobfile: str, uri: str, out_json: str, runtime: float = 10,
            verify_loops: int = 1, extra=()) -> tuple[int, dict | None, str]:
    """Run one fio job file against `uri`; -> (exit status, fio's JSON or None, stderr)."""
    env = dict(os.environ, NBD_URI=uri, FIO_RUNTIME=str(int(max(1, runtime))),
               FIO_VERIFY_LOOPS=str(verify_loops))
    os.makedirs(os.path.dirname(out_json) or ".", exist_ok=True)
    r = subprocess.run(["fio", "--output-format=json", f"--output={out_json}", *extra, jobfile],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    data = None
    try:
        text = open(out_json).read()
        data = json.loads(text[text.index("{"):])      # fio may print a line before the JSON
    except (OSError, ValueError):
        pass
    return r.returncode, data, (r.stderr + r.stdout).strip()


def _pct(clat: dict, p: str) -> float | None:
    v = (clat.get("percentile") or {}).get(p)
    return None if v is None else v / 1000.0


def job_rows(data: dict) -> list[dict]:
    """Per fio job: iops, bandwidth and clat percentiles of what it did."""
    rows = []
    for j in data.get("jobs", []):
        row = {"job": j["jobname"], "error": j.get("error", 0)}
        for d in ("read", "write"):
            s = j[d]
            if s["total_ios"]:
                row[d] = {"iops": round(s["iops"], 1), "bw_MiBps": round(s["bw_bytes"] / 2**20, 2),
                          "clat_p50_us": _pct(s["clat_ns"], "50.000000"),
                          "clat_p99_us": _pct(s["clat_ns"], "99.000000"),
                          "ios": s["total_ios"]}
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    out = []
    for r in rows:
        for d in ("read", "write"):
            if d in r:
                s = r[d]
                out.append(f"  {r['job']:<12} {d:<5} IOPS {s['iops']:>9.1f}  BW {s['bw_MiBps']:>8.2f} MiB/s"
                           f"  clat p50 {s['clat_p50_us']} us  p99 {s['clat_p99_us']} us"
                           + (f"  ERROR {r['error']}" if r["error"] else ""))
        if not any(d in r for d in ("read", "write")):
            out.append(f"  {r['job']:<12} no I/O" + (f"  ERROR {r['error']}" if r["error"] else ""))
    return "\n".join(out)


def run_jobs(socket_path: str, jobs, out_dir: str, runtime: float, verify_loops: int = 1,
             threads: int = 16, echo=print) -> dict:
    """Run the named job files against the daemon at `socket_path`; -> summary dict."""
    summary = {"jobs": {}, "ok": True}
    with NbdServer(socket_path, threads=threads) as srv:
        echo(f"nbd: {srv.uri}")
        for name in jobs:
            jobfile = os.path.join(HERE, f"{name}.fio")
            before = device_counters(socket_path)
            rc, data, err = run_fio(jobfile, srv.uri, os.path.join(out_dir, f"{name}.json"),
                                    runtime, verify_loops)
            deltas = counter_deltas(before, device_counters(socket_path))
            rows = job_rows(data) if data else []
            ok = rc == 0 and data is not None and all(r["error"] == 0 for r in rows)
            summary["jobs"][name] = {"ok": ok, "fio_rc": rc, "jobs": rows, "deltas": deltas}
            summary["ok"] &= ok
            echo(f"{name}.fio: {'ok' if ok else 'FAILED (fio status %d)' % rc}")
            echo(format_rows(rows))
            echo(format_deltas(deltas))
            if not ok:
                tail = "\n".join(err.splitlines()[-15:])
                echo(tail)
                echo("nbdkit log tail:\n" + "\n".join(srv.log_text().splitlines()[-15:]))
    return summary


def positive(kind):
    """argparse type: a number of `kind` (int or float) above zero."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            v = 0
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be a positive {kind.__name__}, got {text!r}")
        return v
    return parse


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", help="use this running daemon instead of a throwaway one")
    ap.add_argument("--profile", default=None, help="profile of the throwaway daemon")
    ap.add_argument("--set", dest="overrides", action="append", default=None,
                    metavar="SECTION.KEY=VALUE",
                    help=f"profile override for the throwaway daemon (default: {' '.join(DEFAULT_SET)})")
    ap.add_argument("--jobs", default=",".join(JOBS), help="comma-separated job files to run, in order")
    ap.add_argument("--runtime", type=positive(float), default=10, help="seconds per time-based job")
    ap.add_argument("--verify-loops", type=positive(int), default=1, help="overwrite passes in verify.fio")
    ap.add_argument("--out-dir", default=OUT_DIR, help="where fio's JSON goes")
    a = ap.parse_args(argv)
    jobs = [j.strip() for j in a.jobs.split(",") if j.strip()]
    bad = [j for j in jobs if not os.path.exists(os.path.join(HERE, f"{j}.fio"))]
    if bad:
        ap.error(f"--jobs: no job file {bad[0]}.fio in {HERE}")
    os.makedirs(a.out_dir, exist_ok=True)
    if a.socket:
        summary = run_jobs(a.socket, jobs, a.out_dir, a.runtime, a.verify_loops)
    else:
        extra = []
        for s in (DEFAULT_SET if a.overrides is None else a.overrides):
            extra += ["--set", s]
        with DaemonProcess(profile=a.profile, extra_args=extra) as d:
            summary = run_jobs(d.socket_path, jobs, a.out_dir, a.runtime, a.verify_loops)
    with open(os.path.join(a.out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"fio JSON in {os.path.relpath(a.out_dir, os.getcwd())}/")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
