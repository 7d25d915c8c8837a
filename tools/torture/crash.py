"""Crash recovery: kill -9 the daemon at random moments, restart, verify.

One data dir lives across all trials. In each trial a writer thread drives
mixed block writes (1-8 blocks, some FUA), periodic flushes and KV appends
and reclaims (which share the FTL and its lines with the block data), while
the main thread sleeps a random time and sends SIGKILL to the daemon. The
next daemon is started on the same data dir with no profile (the stored
one is used) and recovers.

Every block carries a pattern unique to (LBA, version). After each restart
every LBA of the hot range is read back and classified against the writer's
log:

* a write whose Flush completed (or that was FUA and completed) must read
  back, or a later write to the same LBA: otherwise it is *lost*;
* any other LBA must hold one of the versions written to it since its last
  durable one (old or new contents), or zeros if it never was durable:
  otherwise (garbage, another LBA's data, a stale version) it is *corrupt*.

A cold region filled once at the start (and flushed) is sampled each trial
and must be intact. KV namespaces are volatile by design and are not checked
after a restart. A KV Append may be refused with Capacity Exceeded (each live
sequence holds a whole open line; counted as kv_capacity_exceeded); any other
non-zero KV status, and any on a Reclaim, is a failure (kv_errors).
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import threading
import time

import numpy as np

from tools.torture.common import (BS, SMALL_DRIVE, field_status, identify_block,
                                  part_main, patterns)

import csdemu
from csdemu.host.spawn import DaemonProcess
from nvme_cmds.kv import append_cdws
from nvme_cmds.opcodes import NvmOpcode as N, VendorIoOpcode as VI
from nvme_cmds.status import Status, status_name

SGL = 0x40
HOT = 8192                     # LBAs the writer overwrites (32 MiB)
COLD_VERSION = 1
KV_SEQS = 3
KV_SHAPE = dict(layers=2, q_heads=2, kv_heads=2, head_dim=64, dtype="float16")


class Model:
    """What the writer did to each hot LBA."""

    def __init__(self):
        self.hist: dict[int, list[int]] = {}     # lba -> versions in submission order
        self.durable: dict[int, int] = {}        # lba -> index in hist known durable
        self.acked: dict[int, int] = {}          # lba -> index of the last completed write
        self.dirty: set[int] = set()             # acked since the last flush was submitted
        self.fresh: set[int] = set()             # made durable by a Flush / FUA in this trial

    def baseline(self, lba, version):
        self.hist[lba] = [version]
        self.durable[lba] = 0
        self.acked[lba] = 0


class Writer(threading.Thread):
    def __init__(self, socket_path, model: Model, rnd: random.Random, versions, hot=HOT):
        super().__init__(daemon=True)
        self.socket_path, self.m, self.r, self.versions, self.hot = socket_path, model, rnd, versions, hot
        self.stop = threading.Event()
        self.ops = {"writes": 0, "fua_writes": 0, "flushes": 0, "kv_appends": 0, "kv_reclaims": 0,
                    "errors": 0, "kv_errors": 0, "kv_capacity_exceeded": 0}
        self.error = None
        self.error_statuses: dict[str, int] = {}

    def _cmd(self, q, **kw) -> int | None:
        """Submit and wait; None if the daemon went away (stop) or never answered."""
        q.submit(**kw)
        t0 = time.monotonic()
        while not self.stop.is_set() and time.monotonic() - t0 < 60:
            got = q.reap_until(1, 0.05)
            if got:
                st = field_status(got[0][5])
                if st:
                    key = f"{kw['opc']:#x}:{status_name(st)}"
                    self.error_statuses[key] = self.error_statuses.get(key, 0) + 1
                return st
        return None

    def run(self):
        self.dev = None
        try:
            self._run()
        except Exception as exc:          # noqa: BLE001 - the daemon was killed under us
            if not self.stop.is_set() and not isinstance(exc, csdemu.DeviceGone):
                self.error = repr(exc)
        finally:
            if self.dev is not None:
                self.dev.close()          # its fds, or a long run runs out of them

    def _run(self):
        dev = csdemu.connect(self.socket_path)
        self.dev = dev
        q, m, r = dev.io, self.m, self.r
        kv = dev.create_kv_namespace(**KV_SHAPE)
        kv_off = dev.alloc.alloc(1 << 20)
        seq_off = dev.alloc.alloc(4096)
        live_seqs = []
        while not self.stop.is_set():
            k = r.random()
            if k < 0.70:
                n = r.randint(1, 8)
                lba = r.randrange(0, self.hot - n + 1)
                v = next(self.versions)
                fua = r.random() < 0.1
                dev.arena.u8[dev.staging:dev.staging + n * BS] = patterns(lba, n, v)
                for i in range(n):
                    m.hist.setdefault(lba + i, []).append(v)
                st = self._cmd(q, opc=N.WRITE, nsid=1, flags=SGL, prp1=dev.staging, prp2=n * BS,
                               cdw10=lba, cdw12=(n - 1) | ((1 << 30) if fua else 0))
                if st is None:
                    return
                if st:
                    self.ops["errors"] += 1
                    continue
                for i in range(n):
                    idx = len(m.hist[lba + i]) - 1 - m.hist[lba + i][::-1].index(v)
                    m.acked[lba + i] = idx
                    if fua:
                        m.durable[lba + i] = max(m.durable.get(lba + i, -1), idx)
                        m.fresh.add(lba + i)
                    else:
                        m.dirty.add(lba + i)
                self.ops["writes"] += 1
                self.ops["fua_writes"] += fua
            elif k < 0.80:
                snap = {lba: m.acked[lba] for lba in m.dirty}
                m.dirty = set()
                st = self._cmd(q, opc=N.FLUSH, nsid=1)
                if st is None:
                    m.dirty |= set(snap)
                    return
                if st:
                    self.ops["errors"] += 1
                    continue
                for lba, idx in snap.items():
                    m.durable[lba] = max(m.durable.get(lba, -1), idx)
                    m.fresh.add(lba)
                self.ops["flushes"] += 1
            elif k < 0.93 or not live_seqs:
                # Few live sequences: each KV sequence holds a whole open line
                # (see docs/torture.md, "KV streams starve the block namespace").
                sid = r.randrange(KV_SEQS)
                tokens = r.randint(1, 40)
                nb = tokens * 2 * 64 * 2
                dev.arena.u8[kv_off:kv_off + 2 * nb] = np.frombuffer(r.randbytes(2 * nb), np.uint8)
                dev.arena.u8[seq_off:seq_off + 8] = np.array([sid], np.uint64).view(np.uint8)
                st = self._cmd(q, opc=VI.KV_APPEND, nsid=kv.nsid, flags=SGL, prp1=kv_off,
                               prp2=2 * nb, mptr=seq_off, **append_cdws(r.randrange(2), 1, tokens))
                if st is None:
                    return
                if st == Status.CAPACITY_EXCEEDED:
                    # the drive is out of lines for another open KV stream: a
                    # defined refusal, not a fault (docs/torture.md, Findings)
                    self.ops["kv_capacity_exceeded"] += 1
                elif st:
                    self.ops["kv_errors"] += 1
                else:
                    live_seqs.append(sid)
                    self.ops["kv_appends"] += 1
            else:
                sid = r.choice(live_seqs)
                live_seqs = [s for s in live_seqs if s != sid]
                dev.arena.u8[seq_off:seq_off + 8] = np.array([sid], np.uint64).view(np.uint8)
                st = self._cmd(q, opc=VI.RECLAIM, nsid=kv.nsid, cdw11=1, mptr=seq_off)
                if st is None:
                    return
                if st:
                    self.ops["kv_errors"] += 1
                else:
                    self.ops["kv_reclaims"] += 1


def _start(data_dir, first: bool, timeout=120) -> DaemonProcess:
    args = (list(SMALL_DRIVE) if first else []) + ["--poll-idle-us", "2000"]
    return DaemonProcess(data_dir=data_dir, extra_args=args).start(timeout)


def _read_range(dev, lba, n) -> np.ndarray:
    return dev.read(lba, n).reshape(n, BS)


def verify(dev, model: Model, hot: int, cold: tuple[int, int], rnd, res) -> None:
    """Read the hot range (and a cold sample) back and classify every block."""
    data = _read_range(dev, 0, hot)
    for lba in range(hot):
        got = identify_block(data[lba], lba)
        hist = model.hist.get(lba)
        d = model.durable.get(lba, -1)
        if hist is None:
            if got != 0:
                res["corrupt"] += 1
                res.setdefault("corrupt_examples", []).append((lba, got, "never written"))
            continue
        if d >= 0:
            res["flushed_checked"] += 1
            res["flushed_writes_checked"] += lba in model.fresh
        if got is None:
            res["corrupt"] += 1
            if len(res.setdefault("corrupt_examples", [])) < 10:
                res["corrupt_examples"].append((lba, None, hist[-3:], d))
            continue
        allowed_new = hist[d:] if d >= 0 else hist
        if got in allowed_new or (got == 0 and d < 0):
            if len(hist) - 1 > d:
                res["unflushed_checked"] += 1
                if got == hist[-1]:
                    res["unflushed_new"] += 1
            continue
        if d >= 0 and (got == 0 or got in hist[:d]):
            res["lost"] += 1
            if len(res.setdefault("lost_examples", [])) < 10:
                res["lost_examples"].append((lba, got, hist[max(0, d - 2):d + 3], d))
        else:
            res["corrupt"] += 1
            if len(res.setdefault("corrupt_examples", [])) < 10:
                res["corrupt_examples"].append((lba, got, hist[-3:], d))
    lo, hi = cold
    if hi > lo:
        for lba in rnd.sample(range(lo, hi), min(256, hi - lo)):
            got = identify_block(dev.read(lba, 1), lba)
            res["cold_checked"] += 1
            if got != COLD_VERSION:
                res["cold_bad"] += 1
    # Everything read back becomes the baseline of the next trial, made durable.
    for lba in range(hot):
        got = identify_block(data[lba], lba)
        if got:
            model.baseline(lba, got)
        else:
            model.hist.pop(lba, None)
            model.durable.pop(lba, None)
            model.acked.pop(lba, None)
    model.dirty = set()
    model.fresh = set()
    dev.flush()


def run_crash(trials: int, seed: int, cold: int = 16384, hot: int = HOT, max_run_s: float = 1.5,
              log=print, data_dir: str | None = None) -> dict:
    rnd = random.Random(seed)
    tmp = data_dir or tempfile.mkdtemp(prefix="csdemu-crash-")
    res = {"trials": 0, "flushed_writes_checked": 0, "flushed_checked": 0, "lost": 0, "corrupt": 0, "unflushed_checked": 0,
           "unflushed_new": 0, "cold_checked": 0, "cold_bad": 0, "writer_errors": 0, "kv_errors": 0,
           "kv_capacity_exceeded": 0,
           "restart_failures": 0, "writes": 0, "flushes": 0, "fua_writes": 0, "kv_appends": 0,
           "kv_reclaims": 0, "restart_s_max": 0.0, "seed": seed}
    model = Model()
    counter = iter(range(2, 1 << 32))
    t_start = time.monotonic()
    d = _start(tmp, True)
    try:
        with csdemu.connect(d.socket_path) as dev:
            nlbas = dev.identify_ns(1)["nsze"]
            cold_range = (hot, min(nlbas, hot + cold))
            step = 1024
            for lba in range(cold_range[0], cold_range[1], step):
                n = min(step, cold_range[1] - lba)
                dev.write(lba, patterns(lba, n, COLD_VERSION))
            dev.flush()
        for t in range(trials):
            w = Writer(d.socket_path, model, rnd, counter, hot)
            w.start()
            time.sleep(rnd.uniform(0.05, max_run_s))
            os.kill(d.proc.pid, signal.SIGKILL)
            d.proc.wait()
            w.stop.set()
            w.join(30)
            for k in ("writes", "flushes", "fua_writes", "kv_appends", "kv_reclaims"):
                res[k] += w.ops[k]
            res["writer_errors"] += w.ops["errors"] + (w.error is not None)
            res["kv_errors"] += w.ops["kv_errors"]
            res["kv_capacity_exceeded"] += w.ops["kv_capacity_exceeded"]
            for key, v in w.error_statuses.items():
                res.setdefault("writer_error_statuses", {})
                res["writer_error_statuses"][key] = res["writer_error_statuses"].get(key, 0) + v
            if w.error:
                res.setdefault("writer_error_examples", []).append(w.error)
            d.cleanup()
            t0 = time.monotonic()
            try:
                d = _start(tmp, False)
            except RuntimeError as exc:
                res["restart_failures"] += 1
                res.setdefault("restart_errors", []).append(str(exc)[-2000:])
                log(f"crash: trial {t}: restart failed: {str(exc)[-500:]}")
                d = None
                break
            res["restart_s_max"] = round(max(res["restart_s_max"], time.monotonic() - t0), 3)
            with csdemu.connect(d.socket_path) as dev:
                verify(dev, model, hot, cold_range, rnd, res)
            res["trials"] += 1
            if (t + 1) % 10 == 0:
                log(f"crash: {t + 1} trials, {res['flushed_checked']} flushed checked, "
                    f"{res['lost']} lost, {res['corrupt']} corrupt")
    finally:
        if d is not None:
            d.cleanup()
        if data_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    res["seconds"] = round(time.monotonic() - t_start, 1)
    return res


def main(argv=None):
    part_main(__doc__, run_crash, ("--trials", int, 100), seeded=True, argv=argv, name="crash", takes_log=True)


if __name__ == "__main__":
    main()
