"""Client death: clients killed with SIGKILL in the middle of their commands.

A bystander client keeps writing, reading back and verifying its own blocks
and appending to / reading back its own KV namespace the whole time. Victim
processes attach, create three I/O queues, register 4 MiB for PRP DMA,
create a KV namespace, then keep hundreds of commands in flight (PRP reads
and writes, KV appends, attends, NOPs) until they are killed at a random
moment. For each victim the harness measures how long the daemon takes to
drop its session (queues, arena, registrations) and its KV namespace (the
daemon's status op and the active namespace list). Figures: reclaim time
(max must be < 1 s), bystander errors and data mismatches (0), bystander
throughput alone before, during the churn and alone after (after/before
should be about 1: dead sessions cost nothing), and the daemon's RSS and
open fds before and after (no leak per dead client).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from tools.torture.common import ROOT, patterns, rss_kib, small_daemon, part_main

import csdemu
from csdemu.transport.control import request

VICTIM = r"""
import json, os, sys, random, numpy as np
import csdemu
from nvme_cmds.kv import append_cdws, attend_cdws
sock, seed, base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = random.Random(seed)
d = csdemu.connect(sock)
qs = [d.create_queue(256) for _ in range(3)]
buf = np.zeros(4 << 20, np.uint8); d.register(buf)
qbuf = np.ones((2, 4, 64), np.float32); obuf = np.zeros_like(qbuf)
kv = d.create_kv_namespace(layers=2, q_heads=4, kv_heads=2, head_dim=64)
k = np.ones((2, 64, 2, 64), np.float16)
kv.append(0, [1, 2], k, k)
kv.attend(0, [1, 2], qbuf, out=obuf)     # registers qbuf and obuf
off = d.alloc.alloc(1 << 20)
meta = kv.meta_off
print(json.dumps({{"client_id": d.client_id, "kv_nsid": kv.nsid, "pid": os.getpid()}}), flush=True)
while True:
    for q in qs:
        for _ in range(min(64, q.depth - 1 - q.outstanding)):
            x = r.random()
            if x < 0.3:
                lba = base + r.randrange(1024)
                q.submit(0x02 if x < 0.15 else 0x01, nsid=1, prp1=buf.ctypes.data + 4096 * r.randrange(512),
                         cdw10=lba, cdw12=r.randrange(8), ring=False)
            elif x < 0.5:
                q.submit(0x81, nsid=kv.nsid, flags=0x40, prp1=off, prp2=2 * 2 * 2 * 2 * 64 * 2,
                         mptr=meta, ring=False, **append_cdws(1, 2, 2))
            elif x < 0.6:
                q.submit(0x83, nsid=kv.nsid, prp1=qbuf.ctypes.data, prp2=obuf.ctypes.data,
                         mptr=meta, ring=False, **attend_cdws(0, 2))
            else:
                q.submit(0x80, ring=False)
        q.ring()
        q.reap_raw(32)       # leave plenty in flight
"""


def daemon_status(path) -> dict:
    return request(path, "status")


class Bystander(threading.Thread):
    """Writes, reads back and verifies its own blocks and KV data, counting ops."""

    def __init__(self, path, base_lba=40000, nblocks=256):
        super().__init__(daemon=True)
        self.path, self.base, self.n = path, base_lba, nblocks
        self.stop = threading.Event()
        self.ops = 0
        self.errors = 0
        self.mismatches = 0
        self.error_examples: list[str] = []
        self.ready = threading.Event()

    def run(self):
        r = random.Random(5)
        version = 2
        try:
            dev = csdemu.connect(self.path)
            # Stay inside the namespace whatever its size (profiles differ).
            self.base = min(self.base, dev.identify_ns(1)["nsze"] - self.n)
            kv = dev.create_kv_namespace(layers=1, q_heads=2, kv_heads=2, head_dim=64)
            written = {}
            kk = np.random.default_rng(1).standard_normal((1, 16, 2, 64)).astype(np.float16)
            tokens = 0
            self.ready.set()
            while not self.stop.is_set():
                try:
                    lba = self.base + r.randrange(self.n - 4)
                    dev.write(lba, patterns(lba, 4, version))
                    for i in range(4):
                        written[lba + i] = version
                    version += 1
                    back = dev.read(lba, 4)
                    if not np.array_equal(back, patterns(lba, 4, version - 1)):
                        self.mismatches += 1
                    if tokens >= 1024:            # constant work per op: start over
                        kv.reclaim([9])
                        tokens = 0
                    kv.append(0, [9], kk, kk)
                    tokens += 16
                    k, _ = kv.read(0, 9, tokens - 16, 16)
                    if not np.array_equal(k.view(np.uint16), kk[0].view(np.uint16)):
                        self.mismatches += 1
                    self.ops += 1
                except Exception as exc:     # noqa: BLE001
                    self.errors += 1
                    if len(self.error_examples) < 5:
                        self.error_examples.append(repr(exc))
                    time.sleep(0.01)
            # Final check of every block this client wrote.
            for lba, v in written.items():
                if not np.array_equal(dev.read(lba, 1), patterns(lba, 1, v)):
                    self.mismatches += 1
            dev.close()
        except Exception as exc:             # noqa: BLE001
            self.errors += 1
            self.error_examples.append(repr(exc))
            self.ready.set()

    def rate(self, seconds: float) -> float:
        o0, t0 = self.ops, time.monotonic()
        time.sleep(seconds)
        return (self.ops - o0) / (time.monotonic() - t0)


def _fd_count(pid) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def run_client_death(victims: int, seed: int, window_s: float = 3.0, log=print) -> dict:
    rnd = random.Random(seed)
    # 4x the small drive (832 MiB): the victims' writes (up to 128 MiB) then
    # leave the bystander's writes clear of GC copies, so its throughput after
    # the churn measures what dead sessions cost, not a fuller drive.
    d = small_daemon(extra=["--set", "geometry.blocks_per_plane=64"]).start()
    res = {"victims": 0, "reclaim_ms_max": 0.0, "reclaim_ms_mean": 0.0, "not_reclaimed_1s": 0,
           "kv_namespaces_left": 0, "sessions_left": 0, "seed": seed}
    try:
        by = Bystander(d.socket_path)
        by.start()
        by.ready.wait(120)
        by.rate(1.0)                                 # warm up
        rss0, fds0 = rss_kib(d.proc.pid), _fd_count(d.proc.pid)
        probe = csdemu.connect(d.socket_path)
        res["bystander_ops_per_s_before"] = round(by.rate(window_s), 1)
        gc_before = probe.flash_log()
        times = []
        code = VICTIM.format(root=ROOT)
        ops_churn0, t_churn0 = by.ops, time.monotonic()
        for i in range(victims):
            p = subprocess.Popen([sys.executable, "-c", code, d.socket_path, str(rnd.getrandbits(32)),
                                  str(1024 * (i % 32))], stdout=subprocess.PIPE, text=True)
            line = p.stdout.readline()
            if not line:
                p.wait()
                raise RuntimeError(f"victim {i} failed to start (rc {p.returncode})")
            info = json.loads(line)
            time.sleep(rnd.uniform(0.0, 0.3))        # mid-command: hundreds in flight
            os.kill(p.pid, signal.SIGKILL)
            t_kill = time.monotonic()
            p.wait()
            p.stdout.close()
            reclaimed = None
            while time.monotonic() - t_kill < 5.0:
                st = daemon_status(d.socket_path)
                ids = {c["id"] for c in st["clients"]}
                nsids = {n["nsid"] for n in st["namespaces"]}
                if info["client_id"] not in ids and info["kv_nsid"] not in nsids:
                    reclaimed = time.monotonic() - t_kill
                    break
                time.sleep(0.005)
            if reclaimed is None or reclaimed > 1.0:
                res["not_reclaimed_1s"] += 1
            times.append(5.0 if reclaimed is None else reclaimed)
            res["victims"] += 1
        res["bystander_ops_per_s_during"] = round((by.ops - ops_churn0) / (time.monotonic() - t_churn0), 1)
        gc_churn = probe.flash_log()
        res["bystander_ops_per_s_after"] = round(by.rate(window_s), 1)
        gc_after = probe.flash_log()
        probe.close()
        # Victims' writes fill the drive, so the bystander's writes may now
        # trigger GC: that is the drive's state, not a cost of dead sessions.
        for key in ("gc_runs", "gc_pages_copied"):
            res[f"{key}_before_churn"] = gc_before[key]
            res[f"{key}_during_churn"] = gc_churn[key] - gc_before[key]
            res[f"{key}_during_after_window"] = gc_after[key] - gc_churn[key]
        res["free_lines_after"] = gc_after["free_lines"]
        st = daemon_status(d.socket_path)
        res["sessions_left"] = len(st["clients"]) - 1          # the bystander
        res["kv_namespaces_left"] = sum(1 for n in st["namespaces"] if n["kind"] == "kv") - 1
        by.stop.set()
        by.join(120)
        res.update(bystander_ops=by.ops, bystander_errors=by.errors,
                   bystander_mismatches=by.mismatches, bystander_error_examples=by.error_examples)
        res["reclaim_ms_max"] = round(1000 * max(times), 2) if times else 0.0
        res["reclaim_ms_mean"] = round(1000 * sum(times) / len(times), 2) if times else 0.0
        res["throughput_after_over_before"] = round(
            res["bystander_ops_per_s_after"] / max(res["bystander_ops_per_s_before"], 1e-9), 3)
        res.update(daemon_rss_kib_before=rss0, daemon_rss_kib_after=rss_kib(d.proc.pid),
                   daemon_fds_before=fds0, daemon_fds_after=_fd_count(d.proc.pid),
                   daemon_alive=d.proc.poll() is None)
    finally:
        d.cleanup()
    return res


def main(argv=None):
    part_main(__doc__, run_client_death, ("--victims", int, 20), seeded=True, argv=argv, name="client_death")


if __name__ == "__main__":
    main()
