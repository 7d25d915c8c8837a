"""Soak: mixed fio (through nbdkit) and attention stress for a long time.

One daemon (instinfer profile with 4 ways and 128 lines of 16 MiB: 2 GiB)
serves fio's randrw-with-verify job over NBD and `csdemu stress` decode jobs
(dense and SparF) at the same time, restarting each as it finishes, for
`--seconds` (an hour by default; not part of CI). The daemon's RSS is
sampled every 10 s. Figures: RSS at start and end (and max), fio and stress
runs and their errors (verify mismatches count as fio errors), daemon alive.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

from tools.torture.common import ROOT, rss_kib, part_main

from csdemu.host.spawn import DaemonProcess

FIO_JOB = """
[global]
ioengine=nbd
uri={uri}
size=30%
time_based=1
runtime={runtime}
group_reporting=1
[soak-randrw-verify]
rw=randrw
rwmixread=60
bs=4k
iodepth=4
numjobs=1
verify=crc32c
verify_fatal=1
do_verify=1
verify_state_save=0
"""
# Few sequences: every KV sequence holds whole open lines (see docs/torture.md).
STRESS_JOB = """
[global]
layers=4
q_heads=16
kv_heads=4
head_dim=128
dtype=float16
batch=2
context=256
context_max=1024
append_tokens=1
mix=append:1,attend:1
numjobs=1
iodepth=2
runtime=30
[{name}]
attention={attention}
"""


def run_soak(seconds: float, log=print) -> dict:
    from csdemu.nbd.server import NbdServer
    tmp = tempfile.mkdtemp(prefix="csdemu-soak-")
    res = {"seconds": seconds, "fio_runs": 0, "fio_errors": 0, "stress_runs": 0, "stress_errors": 0,
           "errors": 0, "rss_kib_samples": []}
    d = DaemonProcess(profile="instinfer",
                      extra_args=["--set", "geometry.ways=4", "--set", "geometry.blocks_per_plane=128"])
    d.start()
    fio_ok = shutil.which("fio") is not None and shutil.which("nbdkit") is not None
    try:
        res["rss_kib_start"] = rss_kib(d.proc.pid)
        srv = NbdServer(d.socket_path).start() if fio_ok else None
        t0 = time.monotonic()
        fio = stress = None
        fio_log = os.path.join(tmp, "fio.log")
        st_log = os.path.join(tmp, "stress.log")
        jobs = []
        for name, att in (("soak-dense", "dense"), ("soak-sparf", "sparf\nsparf_ratio=0.125\nsparf_window=16")):
            jobs.append(os.path.join(tmp, name + ".ini"))
            with open(jobs[-1], "w") as f:
                f.write(STRESS_JOB.format(name=name, attention=att))
        last_sample = 0.0
        errors_seen = []
        while time.monotonic() - t0 < seconds:
            left = max(5, int(seconds - (time.monotonic() - t0)))
            if fio_ok and (fio is None or fio.poll() is not None):
                if fio is not None:
                    res["fio_runs"] += 1
                    if fio.returncode:
                        res["fio_errors"] += 1
                        errors_seen.append(("fio", fio.returncode, open(fio_log).read()[-1000:]))
                job = os.path.join(tmp, "soak.fio")
                with open(job, "w") as f:
                    f.write(FIO_JOB.format(uri=srv.uri, runtime=min(60, left)))
                fio = subprocess.Popen(["fio", job], stdout=open(fio_log, "w"), stderr=subprocess.STDOUT)
            if stress is None or stress.poll() is not None:
                if stress is not None:
                    res["stress_runs"] += 1
                    if stress.returncode:
                        res["stress_errors"] += 1
                        errors_seen.append(("stress", stress.returncode, open(st_log).read()[-1000:]))
                stress = subprocess.Popen([sys.executable, "-m", "csdemu", "stress", "--socket", d.socket_path,
                                           "--no-progress", jobs[res["stress_runs"] % 2]],
                                          stdout=open(st_log, "w"), stderr=subprocess.STDOUT, cwd=ROOT)
            if time.monotonic() - last_sample > 10:
                last_sample = time.monotonic()
                res["rss_kib_samples"].append(rss_kib(d.proc.pid))
            if d.proc.poll() is not None:
                errors_seen.append(("daemon", d.proc.returncode, d.log_text()[-2000:]))
                break
            time.sleep(0.5)
        for p, kind in ((fio, "fio"), (stress, "stress")):
            if p is not None:
                rc = p.wait(300)
                res[f"{kind}_runs"] += 1
                if rc:
                    res[f"{kind}_errors"] += 1
        res["rss_kib_end"] = rss_kib(d.proc.pid)
        res["rss_kib_max"] = max(res["rss_kib_samples"] + [res["rss_kib_end"]])
        res["daemon_alive"] = d.proc.poll() is None
        res["fio"] = "ran" if fio_ok else "skipped: fio or nbdkit missing (make apt)"
        if srv is not None:
            srv.stop()
    finally:
        d.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    res["errors"] = res["fio_errors"] + res["stress_errors"] + (not res.get("daemon_alive", False))
    res["error_examples"] = errors_seen[:5]
    samples = res.pop("rss_kib_samples")
    res["rss_kib_trace"] = samples[:: max(1, len(samples) // 30)]
    return res


def main(argv=None):
    part_main(__doc__, run_soak, ("--seconds", float, 3600), seeded=False, argv=argv, name="soak")


if __name__ == "__main__":
    main()
