"""`csdemu bench trace`: what `--trace` costs, off and on.

Model. One dense attend's charge in this process: `attend_time` over a
batch-8 layer of 8 kv heads x 128 dims at 8192 tokens (65,536 page reads,
channel-first striping on instinfer's 8 x 8 LUNs), on fresh clocks each
time, best of interleaved rounds: untraced (the header-only ring), traced
(the kernels fill the ring), and traced with the ring drained into a JSON
file as the daemon does after each command. With `--baseline DIR` the same
untraced charge also runs on the source tree DIR (e.g. a checkout from
before tracing existed) in a subprocess, in the same run.

The baseline is a directory or a git revision given as `--baseline`, by
default the commit before tracing existed, found in the checkout's history
and exported with `git archive`. Not part of `make bench`: like `bench
causal` it runs when named (`python -m csdemu.bench.run trace`) and shows
as a section of its own run.

Daemon. Two instinfer daemons, one started with `--trace`, the same
workload on each in alternating rounds: QD1 4 KiB reads (the per-command
hook matters most for the smallest command) and dense attends (batch 8,
32 q / 8 kv heads x 128, fp16, 2048 tokens). Wall per command as the
client sees it; the modeled device times of the two must agree.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

B, HKV, HQ, D, CONTEXT, T = 8, 8, 32, 128, 8192, 16
ROUNDS = 7
BASELINE_PAIRS = 3


def _attend_setup():
    from csdemu.drive.kv.attend_timing import EngineRates, dense_work, spread_pages
    from csdemu.drive.flash.timing import NandTiming
    from csdemu.drive.profile import load_profile
    p = load_profile("instinfer")
    g = p.geometry
    groups = CONTEXT // T
    ch, lun = [], []
    for _ in range(B * HKV):
        c, w = spread_pages(2 * groups, g.channels, g.ways)     # K then V pages of a head
        ch.append(c)
        lun.append(w)
    return (np.concatenate(ch), np.concatenate(lun), g, NandTiming.from_profile(p).packed(),
            EngineRates.from_profile(p), dense_work(np.full(B, CONTEXT), HQ, D), g.page_bytes)


def charge_untraced_ms(rounds: int = ROUNDS) -> float:
    """Best time of one dense attend's charge on fresh, untraced clocks (ms).
    Public API only, so it runs on a source tree from before tracing too."""
    from csdemu.drive.kv.attend_timing import EngineClock, attend_time
    from csdemu.drive.flash.timing import Clocks
    ch, lun, g, prm, rates, work, pb = _attend_setup()
    best = float("inf")
    for _ in range(rounds + 1):                       # the first one compiles
        clk = Clocks.create(g.channels, g.ways)
        t0 = time.perf_counter()
        attend_time(0, ch, lun, pb, work, clk, prm, rates, EngineClock())
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def model_section(baseline: str | None = None, rounds: int = ROUNDS) -> dict:
    from csdemu.drive.flash import trace_ring
    from csdemu.drive.flash.timing import Clocks
    from csdemu.drive.kv.attend_timing import EngineClock, attend_time
    from csdemu.drive.trace import Tracer
    ch, lun, g, prm, rates, work, pb = _attend_setup()
    ring = trace_ring.new_ring(1 << 18)              # one charge's 131,090 rows fit
    tmp = tempfile.mkdtemp(prefix="csdemu-trace-bench-")
    path = os.path.join(tmp, "t.json")
    times = {"off": [], "on": [], "on_tracer": []}
    tracer = None
    rows = 0
    try:
        for r in range(rounds + 1):
            for mode in times:
                clk = Clocks.create(g.channels, g.ways)
                if mode == "on":
                    ring[0, trace_ring.H_N] = 0
                    clk.trace = ring
                elif mode == "on_tracer":
                    # a fresh ring as a daemon's rows are: their pages are touched first here
                    tracer = Tracer(path, clk, {"ways": g.ways}, {})
                t0 = time.perf_counter()
                if mode == "on_tracer":
                    tracer.begin(1, 1, (0x83,) + (0,) * 14)
                done = attend_time(0, ch, lun, pb, work, clk, prm, rates, EngineClock())
                if mode == "on_tracer":
                    tracer.note(1, 0, 0, 0, done.done_ns)
                    tracer.end()
                t1 = time.perf_counter()
                if mode == "on":
                    rows = int(ring[0, trace_ring.H_N])
                if r:                                 # the first round compiles
                    times[mode].append(t1 - t0)
        tracer.close()                                # the last round's: its JSON
        file_bytes = os.path.getsize(path)
    finally:
        for fn in os.listdir(tmp):
            os.unlink(os.path.join(tmp, fn))
        os.rmdir(tmp)
    out = {f"model_charge_{m}_ms": min(v) * 1e3 for m, v in times.items()}
    out["model_pages"] = int(ch.size)
    out["model_intervals"] = rows
    out["trace_bytes_per_interval"] = file_bytes / max(1, rows)
    out["model_on_vs_off"] = out["model_charge_on_ms"] / out["model_charge_off_ms"]
    out["model_tracer_vs_off"] = out["model_charge_on_tracer_ms"] / out["model_charge_off_ms"]
    if baseline:
        # the same function on both trees, alternating, best of each: one
        # process's best against another's moves with where each landed in
        # memory, so a single pair is not enough
        env = dict(os.environ, PYTHONPATH=os.path.abspath(baseline))
        here, base = [], []
        for _ in range(BASELINE_PAIRS):
            # run from the baseline tree: `-c` puts the working directory first on sys.path
            r = subprocess.run([sys.executable, "-c", _baseline_script(rounds)], env=env,
                               cwd=os.path.abspath(baseline), capture_output=True, text=True,
                               timeout=1800)
            if r.returncode:
                raise RuntimeError(f"baseline run failed: {r.stderr.strip()[-500:]}")
            base.append(json.loads(r.stdout.strip().splitlines()[-1]))
            here.append(charge_untraced_ms(rounds))
        out["model_charge_baseline_ms"] = min(base)
        out["model_charge_untraced_here_ms"] = min(here)
        out["model_off_vs_baseline"] = min(here) / min(base)
    return out


def _baseline_script(rounds: int) -> str:
    """Runs in a process whose `csdemu` is the baseline tree: this module's
    timing function, loaded from its file, against that tree's public API."""
    return ("import importlib.util, json\n"
            f"spec = importlib.util.spec_from_file_location('trace_cost_bench', {__file__!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "import csdemu.drive.flash.timing as t\n"
            "assert t.__file__.startswith(__import__('os').environ['PYTHONPATH'].split(':')[0]), t.__file__\n"
            f"print(json.dumps(m.charge_untraced_ms({rounds})))\n")


WRITTEN = 16 << 20          # bytes written at LBA 0 for the reads


def _reads_us(dev, n: int) -> float:
    per = 4096 // dev.lba_size(1)
    pages = WRITTEN // 4096
    t0 = time.perf_counter()
    for i in range(n):
        dev.read((i * 977) % pages * per, per)
    return (time.perf_counter() - t0) / n * 1e6


def daemon_section(reads: int = 2800, attends: int = 8, rounds: int = 7, progress=None) -> dict:
    import csdemu
    from csdemu.host.spawn import DaemonProcess
    tmp = tempfile.mkdtemp(prefix="csdemu-trace-bench-")
    path = os.path.join(tmp, "drive.json")
    rng = np.random.default_rng(2)
    ctx = 2048
    q = rng.standard_normal((B, HQ, D)).astype(np.float32)
    res = {"off": {"read": [], "attend": [], "device_ns": []},
           "on": {"read": [], "attend": [], "device_ns": []}}
    procs = {"off": DaemonProcess(profile="instinfer"),
             "on": DaemonProcess(profile="instinfer", extra_args=["--trace", path])}
    try:
        devs, kvs = {}, {}
        for mode, d in procs.items():
            d.start()
            dev = devs[mode] = csdemu.connect(d.socket_path)
            dev.write(0, np.full(WRITTEN, 7, np.uint8))
            kv = kvs[mode] = dev.create_kv_namespace(layers=1, q_heads=HQ, kv_heads=HKV,
                                                     head_dim=D)
            for b in range(B):
                k = np.random.default_rng(b).standard_normal((1, ctx, HKV, D)).astype(np.float16)
                kv.append(0, [b], k, k)
            kv.attend(0, list(range(B)), q)            # untimed: first calls
            _reads_us(dev, 50)
        time.sleep(0.5)
        for r in range(rounds):
            for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                dev, kv = devs[mode], kvs[mode]
                res[mode]["read"].append(_reads_us(dev, reads // rounds))
                t = 0.0
                for _ in range(attends):
                    t0 = time.perf_counter()
                    kv.attend(0, list(range(B)), q)
                    t += time.perf_counter() - t0
                    res[mode]["device_ns"].append(kv.last.device_ns)
                    time.sleep(kv.last.device_ns / 1e9 + 1e-3)     # the next on an idle drive
                res[mode]["attend"].append(t / attends * 1e3)
            if progress:
                progress(f"bench trace: daemon round {r + 1}/{rounds}")
        for mode in procs:
            kvs[mode].delete()
            devs[mode].close()
    finally:
        for d in procs.values():
            d.cleanup()
        for fn in os.listdir(tmp):
            os.unlink(os.path.join(tmp, fn))
        os.rmdir(tmp)
    out = {}
    for mode in ("off", "on"):
        # best round: on a shared 2-core machine a round's mean moves 2x with the load
        out[f"daemon_read_4k_{mode}_us"] = float(min(res[mode]["read"]))
        out[f"daemon_attend_{mode}_ms"] = float(min(res[mode]["attend"]))
    out["daemon_read_on_vs_off"] = out["daemon_read_4k_on_us"] / out["daemon_read_4k_off_us"]
    out["daemon_attend_on_vs_off"] = out["daemon_attend_on_ms"] / out["daemon_attend_off_ms"]
    out["daemon_device_ns_equal"] = res["on"]["device_ns"] == res["off"]["device_ns"]
    out["daemon_attend_modeled_ms"] = float(np.median(res["off"]["device_ns"])) / 1e6
    return out


HOW = {
    "model_*_vs_*": "ratios of the model_charge_* best times, same run",
    "model_off_vs_baseline": "untraced charge here / the same on --baseline's tree: best "
                             "of 3 alternating pairs (this process, a subprocess on the "
                             "baseline), each best of 7",
    "model_charge_baseline_ms": "model_charge_off_ms's measure on --baseline's tree (the "
                                "pairs above)",
    "model_charge_untraced_here_ms": "the same measure on this tree, in those pairs",
    "model_charge_on_tracer_ms": "as model_charge_on_ms, with the daemon's Tracer recording "
                                 "the command around it (the JSON is written at shutdown, "
                                 "untimed)",
    "model_charge_*": "in process: one dense attend's charge (attend_time) of a batch-8, 8 kv "
                      "head x 128 layer at 8192 tokens on instinfer, fresh clocks each time, "
                      "untraced (off) or filling a trace ring (on); best of 7 rounds that run "
                      "off, on and on_tracer in turn (first untimed)",
    "model_pages": "page reads the charge books",
    "model_intervals": "rows one traced charge writes (a sense and a transfer per page, "
                       "the link, engine stages)",
    "trace_bytes_per_interval": "JSON bytes the file grows by per interval",
    "baseline_tree": "the tree model_off_vs_baseline compares with: --baseline DIR or REV, "
                     "by default the commit before tracing (the parent of the one that added "
                     "csdemu/drive/flash/trace_ring.py), exported with git archive",
    "daemon_device_ns_equal": "every traced attend's modeled time equals the untraced one's",
    "daemon_attend_modeled_ms": "median modeled device time of those attends",
    "daemon_*": "two instinfer daemons (one with --trace), alternating rounds; best of 7 "
                "rounds of 400 QD1 4 KiB reads (dev.read) and 8 dense attends (batch 8, "
                "32 q / 8 kv heads x 128, fp16, 2048 tokens, each on an idle drive); wall as "
                "the client sees it, per command",
}


#: the file whose first commit brought tracing: its parent is the baseline
FIRST_TRACED = "csdemu/drive/flash/trace_ring.py"


def before_tracing(repo: str) -> str | None:
    """The commit before tracing existed in the git checkout `repo`, or None."""
    try:
        r = subprocess.run(["git", "-C", repo, "log", "--diff-filter=A", "--format=%H", "--",
                            FIRST_TRACED], capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    added = r.stdout.split()
    return f"{added[-1]}^" if r.returncode == 0 and added else None


@contextlib.contextmanager
def baseline_tree(spec: str | None):
    """Yield (directory, what it is) for --baseline: a directory as it is,
    else a git revision (by default the commit before tracing) exported
    with `git archive` into a temporary directory; (None, reason) if none."""
    if spec and os.path.isdir(spec):
        yield os.path.abspath(spec), os.path.abspath(spec)
        return
    repo = os.getcwd()
    rev = spec or before_tracing(repo)
    if rev is None:
        yield None, "no --baseline, and no git history here to find the commit before tracing"
        return
    r = subprocess.run(["git", "-C", repo, "rev-parse", "--short=12", rev], capture_output=True,
                       text=True, timeout=60)
    if r.returncode:
        raise RuntimeError(f"--baseline {rev}: {r.stderr.strip() or 'not a revision'}")
    sha = r.stdout.strip()
    tmp = tempfile.mkdtemp(prefix="csdemu-trace-baseline-")
    try:
        archive = subprocess.Popen(["git", "-C", repo, "archive", sha], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", tmp], stdin=archive.stdout, check=True, timeout=600)
        if archive.wait(60):
            raise RuntimeError(f"git archive {sha} failed")
        yield tmp, f"commit {sha} (git archive)"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_trace_bench(baseline: str | None = None, progress=None) -> dict:
    with baseline_tree(baseline) as (tree, what):
        res = model_section(tree)
        res["baseline_tree"] = what
    if progress:
        progress(f"bench trace: model on/off {res['model_on_vs_off']:.3f}, off vs baseline "
                 f"{res.get('model_off_vs_baseline', float('nan')):.3f}")
    res.update(daemon_section(progress=progress))
    res["how"] = HOW
    return res
