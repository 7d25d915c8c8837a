"""`csdemu stress`: a load generator for the KV vendor commands, in fio's spirit.

A job file is INI: a [global] section with defaults and one section per job.
Jobs run one after another (as if every job had fio's `stonewall`), so the
drive's counter deltas of a job are that job's alone; the `numjobs` clones of
one job run at once (threads, each its own csdemu client and KV namespace) and
are reported together (fio's group_reporting). Every clone keeps `iodepth`
commands in flight on one queue pair; each in-flight slot owns `batch`
sequences, so the commands of one slot never race each other.

Per slot the commands are: an initial prefill (`context` tokens per sequence
on every layer, in chunks; not timed), then commands drawn from `mix`:
append (`append_tokens` new tokens on the next layer), attend (dense or SparF
on the next layer) or reclaim (free the slot's sequences; the slot re-prefills,
reported as `prefill`). A sequence that reaches `context_max` tokens is
reclaimed. The run stops after `runtime` seconds or `steps` commands per clone.

Output: JSON shaped like fio's (per job: per command kind iops, bw, lat_ns
with percentiles, plus the modeled device latency `device_lat_ns`; per job the
engine's bytes read per channel and the drive's SMART / flash / engine deltas).
"""
from __future__ import annotations

import math
import threading
import time

import numpy as np

from csdemu.host.counters import counter_deltas, device_counters, format_deltas
from csdemu.stress.jobs import OPS
from csdemu.transport.qpair import CQ_DEVICE_NS, CQ_STATUS


PERCENTILES = (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.5, 99.9, 99.95, 99.99)
KINDS = ("append", "attend", "reclaim", "prefill")
PREFILL_CHUNK_BYTES = 1 << 20          # K+V bytes per prefill command


class StressError(RuntimeError):
    pass


class _Slot:
    __slots__ = ("idx", "ids", "meta", "data", "q", "out", "length", "a_layer", "t_layer",
                 "prefill_left", "cmd", "t0")

    def __init__(self, idx):
        self.idx = idx


class Clone:
    """One client: a Device, a KV namespace, one queue pair, `iodepth` slots."""

    def __init__(self, socket_path: str, job: dict, clone: int):
        self.job, self.clone, self.socket_path = job, clone, socket_path
        self.done = 0                      # timed commands completed (for the progress bar)
        self.error = None
        self.lat = {k: [] for k in KINDS}  # host-observed latency, ns
        self.dev_lat = {k: [] for k in KINDS}
        self.bytes = dict.fromkeys(KINDS, 0)
        self.prefill_done = False
        self.t_start = self.t_end = None

    # -------------------------------------------------------- set-up
    def _setup(self):
        from csdemu.host.device import Device
        from nvme_cmds.kv import DTYPE_BYTES, DTYPE_NAMES
        j = self.job
        B, D, Hq, Hkv = j["batch"], j["head_dim"], j["q_heads"], j["kv_heads"]
        self.eb = DTYPE_BYTES[DTYPE_NAMES[j["dtype"]]]
        self.tok_bytes = Hkv * D * self.eb                 # one token of K (or V), one sequence
        self.chunk = max(1, min(j["context"], 65535,
                                PREFILL_CHUNK_BYTES // max(1, 2 * B * self.tok_bytes)))
        self.kv_tokens = max(self.chunk, j["append_tokens"])
        kv_bytes = 2 * B * self.kv_tokens * self.tok_bytes
        q_bytes = B * Hq * D * 4
        per_slot = ((B * 8 + 63) // 64 * 64) + ((kv_bytes + 63) // 64 * 64) + 2 * ((q_bytes + 63) // 64 * 64)
        depth = j["iodepth"] + 1
        need = per_slot * j["iodepth"] + depth * 88 + (64 << 10)
        arena = (max(4 << 20, int(need * 1.1) + (4 << 20)) + 4095) // 4096 * 4096
        self.dev = Device(self.socket_path, arena_bytes=arena,
                          io_depth=2)
        self.q = self.dev.create_queue(max(2, depth))
        nseq = B * j["iodepth"]
        try:
            self.kv = self.dev.create_kv_namespace(j["layers"], Hq, Hkv, D, j["dtype"],
                                                   sparse_layout=j["attention"] == "sparf",
                                                   max_seqs=nseq)
        except Exception as exc:
            raise StressError(f"[{j['name']}] create KV namespace "
                              f"(layers {j['layers']}, q_heads {Hq}, kv_heads {Hkv}, head_dim {D}, "
                              f"{j['dtype']}, {nseq} sequences): {exc}") from None
        rng = np.random.default_rng(j["seed"] * 1000 + self.clone)
        self.rng = rng
        store_dt = {"float16": np.float16, "float32": np.float32}.get(j["dtype"])
        u8 = self.dev.arena.u8
        self.slots = []
        for i in range(j["iodepth"]):
            s = _Slot(i)
            s.ids = np.arange(i * B, (i + 1) * B, dtype=np.uint64)
            s.meta = self.dev.alloc.alloc(B * 8)
            u8[s.meta:s.meta + B * 8] = s.ids.view(np.uint8)
            s.data = self.dev.alloc.alloc(kv_bytes)
            vals = rng.standard_normal(kv_bytes // self.eb).astype(np.float32) * 0.5
            if store_dt is None:                            # bfloat16: top half of float32
                raw = (vals.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
            else:
                raw = vals.astype(store_dt).view(np.uint8)
            u8[s.data:s.data + kv_bytes] = raw
            s.q = self.dev.alloc.alloc(q_bytes)
            u8[s.q:s.q + q_bytes] = rng.standard_normal(q_bytes // 4).astype(np.float32).view(np.uint8)
            s.out = self.dev.alloc.alloc(q_bytes)
            s.length = [0] * j["layers"]
            s.a_layer = s.t_layer = 0
            s.prefill_left = None
            s.cmd = None
            self.slots.append(s)
        self.q_bytes = q_bytes
        weights = np.array([j["mix"][k] for k in OPS], float)
        self.cum = np.cumsum(weights / weights.sum())

    # -------------------------------------------------------- commands
    def _prefill_plan(self, s):
        """Commands (layer, tokens) that bring every layer of the slot to `context`."""
        plan = []
        for layer in range(self.job["layers"]):
            left = self.job["context"] - s.length[layer]
            while left > 0:
                n = min(self.chunk, left)
                plan.append((layer, n))
                left -= n
        plan.reverse()
        return plan

    def _next(self, s):
        """-> (kind, opcode, submit kwargs, on_done) for the slot's next command."""
        j = self.job
        if s.prefill_left:
            layer, n = s.prefill_left.pop()
            return self._append(s, "prefill", layer, n)
        if j["context_max"] and max(s.length) + j["append_tokens"] > j["context_max"]:
            return self._reclaim(s)
        op = OPS[int(np.searchsorted(self.cum, self.rng.random(), side="right"))]
        if op == "append":
            layer = s.a_layer
            s.a_layer = (s.a_layer + 1) % j["layers"]
            return self._append(s, "append", layer, j["append_tokens"])
        if op == "attend":
            layer = s.t_layer
            s.t_layer = (s.t_layer + 1) % j["layers"]
            return self._attend(s, layer)
        return self._reclaim(s)

    def _append(self, s, kind, layer, n):
        from nvme_cmds.kv import append_cdws
        from nvme_cmds.opcodes import VendorIoOpcode
        from csdemu.host.device import SGL_FLAGS
        B = self.job["batch"]
        nb = B * n * self.tok_bytes
        # K is the first nb bytes of the slot's buffer and V the next nb (any valid values do)
        s.length[layer] += n
        return (kind, VendorIoOpcode.KV_APPEND,
                dict(nsid=self.kv.nsid, flags=SGL_FLAGS, prp1=s.data, prp2=2 * nb, mptr=s.meta,
                     **append_cdws(layer, B, n)), 2 * nb)

    def _attend(self, s, layer):
        from nvme_cmds.kv import AttendMode, attend_cdws
        from nvme_cmds.opcodes import VendorIoOpcode
        from csdemu.host.device import SGL_FLAGS
        j, B = self.job, self.job["batch"]
        if j["attention"] == "sparf":
            r = j["sparf_r"] or max(1, round(j["sparf_ratio"] * j["head_dim"]))
            k = j["sparf_k"] or max(1, math.ceil(j["sparf_ratio"] * s.length[layer]))
            cd = attend_cdws(layer, B, AttendMode.SPARF, r, k, j["sparf_window"])
        else:
            cd = attend_cdws(layer, B)
        return ("attend", VendorIoOpcode.ATTEND,
                dict(nsid=self.kv.nsid, flags=SGL_FLAGS, prp1=s.q, prp2=self.q_bytes,
                     mptr=s.meta, cdw15=s.out, **cd), 2 * self.q_bytes)

    def _reclaim(self, s):
        from nvme_cmds.opcodes import VendorIoOpcode
        s.length = [0] * self.job["layers"]
        s.prefill_left = self._prefill_plan(s)
        return ("reclaim", VendorIoOpcode.RECLAIM,
                dict(nsid=self.kv.nsid, cdw11=self.job["batch"], mptr=s.meta), 0)

    # -------------------------------------------------------- the loop
    def _wait(self):
        return self.q.wait_some(spins=32, stop=lambda: self.stop_now)

    def _submit(self, s, cmd):
        kind, opc, kw, nbytes = cmd
        s.cmd = (kind, nbytes)
        s.t0 = time.perf_counter_ns()
        cid = self.q.submit(opc, ring=False, **kw)
        self.by_cid[cid] = s

    def _drive(self, deadline_ns, steps, timed: bool):
        """Run commands until every slot is idle and the stop condition holds."""
        from nvme_cmds.status import decode_status_field, status_name
        self.by_cid = {}
        issued = 0
        for s in self.slots:
            cmd = self._next(s) if timed else (self._append(s, "prefill", *s.prefill_left.pop())
                                               if s.prefill_left else None)
            if cmd is not None:
                self._submit(s, cmd)
                issued += 1
        self.q.ring()
        while self.by_cid:
            batch = self._wait()
            # Take every completion of the batch off by_cid before submitting
            # again: the reaped CIDs are already free for reuse.
            finished = [(self.by_cid.pop(e[4]), e) for e in batch]
            now = time.perf_counter_ns()
            for s, e in finished:
                kind, nbytes = s.cmd
                if e[CQ_STATUS] & 0xFFFE:
                    st = decode_status_field(e[CQ_STATUS])[0]
                    if self.error is None:
                        self.error = f"[{self.job['name']}] {kind} failed: {status_name(st)}"
                    continue
                if timed:
                    self.lat[kind].append(now - s.t0)
                    self.dev_lat[kind].append(e[CQ_DEVICE_NS])
                    self.bytes[kind] += nbytes
                    self.done += 1
            for s, e in finished:
                if self.error or self.stop_now:
                    break
                if timed:
                    if (steps and issued >= steps) or (deadline_ns and now >= deadline_ns):
                        break
                    cmd = self._next(s)
                elif s.prefill_left:
                    cmd = self._append(s, "prefill", *s.prefill_left.pop())
                else:
                    continue
                self._submit(s, cmd)
                issued += 1
            self.q.ring()

    def run(self, start_evt: threading.Event, ready_evt: threading.Event):
        self.stop_now = False
        try:
            self._setup()
            for s in self.slots:
                s.prefill_left = self._prefill_plan(s)
            self._drive(0, 0, timed=False)
            self.prefill_done = True
            ready_evt.set()
            start_evt.wait()
            if self.error is None:
                j = self.job
                self.t_start = time.perf_counter_ns()
                deadline = self.t_start + int(j["runtime"] * 1e9) if j["runtime"] else 0
                self._drive(deadline, j["steps"], timed=True)
                self.t_end = time.perf_counter_ns()
        except Exception as exc:          # reported as the job's error
            if self.error is None:
                self.error = str(exc) if isinstance(exc, StressError) else \
                    f"[{self.job['name']}] clone {self.clone}: {type(exc).__name__}: {exc}"
        finally:
            ready_evt.set()
            dev = getattr(self, "dev", None)
            if dev is not None:
                dev.close()


# ---------------------------------------------------------------- a job, a run
def _lat_stats(values) -> dict:
    if not len(values):
        return {"min": 0, "max": 0, "mean": 0.0, "stddev": 0.0, "N": 0}
    a = np.asarray(values, np.float64)
    pct = np.percentile(a, PERCENTILES)
    return {"min": int(a.min()), "max": int(a.max()), "mean": float(a.mean()),
            "stddev": float(a.std()), "N": int(a.size),
            "percentile": {f"{p:.6f}": int(v) for p, v in zip(PERCENTILES, pct)}}


def run_job(socket_path: str, job: dict, progress=None) -> dict:
    """Run one job section (its numjobs clones at once); -> its fio-shaped result."""
    before = device_counters(socket_path)
    clones = [Clone(socket_path, job, i) for i in range(job["numjobs"])]
    start = threading.Event()
    readies = [threading.Event() for _ in clones]
    threads = [threading.Thread(target=c.run, args=(start, r), daemon=True,
                                name=f"stress-{job['name']}-{c.clone}")
               for c, r in zip(clones, readies)]
    for t in threads:
        t.start()
    for r in readies:
        while not r.wait(0.1):
            pass
    start.set()
    t0 = time.monotonic()
    total = job["steps"] * job["numjobs"] if job["steps"] else None
    last = 0
    try:
        while any(t.is_alive() for t in threads):
            next(t for t in threads if t.is_alive()).join(0.2)
            if progress is not None:
                done = sum(c.done for c in clones)
                progress(job, done - last, done, total, time.monotonic() - t0)
                last = done
    except KeyboardInterrupt:
        for c in clones:
            c.stop_now = True
        for t in threads:
            t.join(5)
        raise
    if progress is not None:
        done = sum(c.done for c in clones)
        progress(job, done - last, done, total, time.monotonic() - t0)
    deltas = counter_deltas(before, device_counters(socket_path))
    errors = [c.error for c in clones if c.error]
    starts = [c.t_start for c in clones if c.t_start]
    ends = [c.t_end for c in clones if c.t_end]
    elapsed_ns = (max(ends) - min(starts)) if starts and ends else 0
    sec = elapsed_ns / 1e9
    res = {"jobname": job["name"], "groupid": 0, "error": 1 if errors else 0,
           "error_msg": errors[0] if errors else "",
           "job options": {k: (",".join(f"{a}:{w:g}" for a, w in v.items()) if k == "mix" else v)
                           for k, v in job.items() if k != "name"},
           "job_runtime": int(elapsed_ns / 1e6), "elapsed_s": round(sec, 3) if elapsed_ns else 0}
    total_ios = 0
    for kind in KINDS:
        lat = [x for c in clones for x in c.lat[kind]]
        dev = [x for c in clones for x in c.dev_lat[kind]]
        nbytes = sum(c.bytes[kind] for c in clones)
        n = len(lat)
        total_ios += n
        res[kind] = {"io_bytes": nbytes, "bw_bytes": int(nbytes / sec) if n and sec else 0,
                     "iops": n / sec if n and sec else 0.0, "total_ios": n,
                     "lat_ns": _lat_stats(lat), "device_lat_ns": _lat_stats(dev)}
    res["total_ios"] = total_ios
    res["iops"] = total_ios / sec if total_ios and sec else 0.0
    eng = deltas["engine"]
    nch = before["engine"]["nchannels"]
    res["channel_bytes_read"] = eng["channel_bytes"][:nch]
    res["channel_pages_read"] = eng["channel_pages"][:nch]
    res["device_deltas"] = deltas
    return res


def run_stress(socket_path: str, jobs: list[dict], progress=None, jobfile: str = "") -> dict:
    """Run every job in turn; -> fio-shaped JSON (a dict)."""
    from csdemu import __version__
    before = device_counters(socket_path)
    t = time.time()
    out = {"csdemu stress version": __version__, "timestamp": int(t),
           "time": time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(t)),
           "jobfile": jobfile, "jobs": []}
    for job in jobs:
        out["jobs"].append(run_job(socket_path, job, progress))
    out["device_deltas"] = counter_deltas(before, device_counters(socket_path))
    return out


def _us(ns) -> str:
    return f"{ns / 1000:.1f}"


def format_result(res: dict) -> str:
    """A fio-like text report of run_stress()'s result."""
    lines = []
    for j in res["jobs"]:
        o = j["job options"]
        lines.append(f"{j['jobname']}: numjobs={o['numjobs']} iodepth={o['iodepth']} batch={o['batch']} "
                     f"{o['attention']} layers={o['layers']} heads={o['q_heads']}/{o['kv_heads']}x"
                     f"{o['head_dim']} {o['dtype']} context={o['context']}: "
                     f"{j['total_ios']} commands in {j['elapsed_s']} s"
                     + (f"  ERROR: {j['error_msg']}" if j["error"] else ""))
        for kind in KINDS:
            s = j[kind]
            if not s["total_ios"]:
                continue
            lat, dl = s["lat_ns"], s["device_lat_ns"]
            p = lat["percentile"]
            dp = dl["percentile"]
            lines.append(f"  {kind:<8} IOPS={s['iops']:.1f}, BW={s['bw_bytes'] / 2**20:.2f}MiB/s "
                         f"({s['total_ios']} cmds)")
            lines.append(f"    lat (usec): min={_us(lat['min'])}, avg={_us(lat['mean'])}, "
                         f"p50={_us(p['50.000000'])}, p99={_us(p['99.000000'])}, max={_us(lat['max'])}")
            lines.append(f"    device (usec, modeled): p50={_us(dp['50.000000'])}, "
                         f"p99={_us(dp['99.000000'])}, max={_us(dl['max'])}")
        ch = j["channel_bytes_read"]
        if any(ch):
            lines.append("  flash bytes read per channel: " + ", ".join(str(b) for b in ch))
        lines.append("  " + format_deltas(j["device_deltas"]).replace("\n", "\n  "))
    return "\n".join(lines)
