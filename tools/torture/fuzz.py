"""Fuzz the command path of a real daemon through real shared memory.

Three kinds of abuse, all from ordinary client processes:

* I/O queue: well-formed NVM and KV commands, the same with mutated fields
  (bit flips, boundary values, random opcodes, CIDs and flags), and 64 random
  bytes; data pointers are valid SGL offsets, valid PRP addresses of a
  registered buffer, misaligned, past the end, or random addresses.
* admin queue: every admin opcode with random and mutated fields (queue
  create/delete at random arena offsets, features, log pages, Abort, AER, KV
  namespace create/delete, DMA Map of random addresses and lengths).
* rings: a client scribbling over its own doorbells, rings and flag page.

Oracle, per command: a completion must arrive before a deadline (else a
*hang*), carry the SQ id and a CID that was submitted, and a status that
nvme_cmds.status defines (else *undefined*). The daemon process must still
be alive after every batch (else a *crash*, and it is restarted). Internal
Error completions are counted apart: each is an exception the daemon caught.
A second client owns a KV namespace that the fuzzers try to touch; its data
is checked at the end.

Safety filters (the fuzzer must not corrupt itself, only the daemon may be
blamed): SGL data addresses never overlap the fuzzing client's own rings, and
DMA Map only ever names the client's sandbox buffer (with lengths that may run
into its guard pages), non-canonical or unmappable low addresses.

    python -m tools.torture.fuzz --commands 1000000 --seed 1
"""
from __future__ import annotations

import os
import random
import struct
import time

import numpy as np

from tools.torture.fuzz_gen import Gen
from tools.torture.fuzz_record import Sandbox, Stats
from tools.torture.common import DEFINED_STATUSES, field_status, small_daemon, part_main

import csdemu
from csdemu.transport.control import request
from csdemu.transport.qpair import CQ_STATUS, cq_bytes, sq_bytes
from nvme_cmds.opcodes import AdminOpcode as A, VendorAdminOpcode as VA, VendorIoOpcode as VI
from nvme_cmds.status import Status, status_name

IO_BATCH = 128
ADMIN_BATCH = 16
IO_DEADLINE_S = 30.0        # a batch of 128 commands: far beyond any modeled time
ADMIN_DEADLINE_S = 10.0
KV_SHAPE = dict(layers=2, q_heads=4, kv_heads=2, head_dim=64, dtype="float16", sparse_layout=True)


def _hex(e: bytes) -> str:
    return e.hex()


# ====================================================================== the target
class FuzzTarget:
    """A daemon plus the clients that fuzz it and the one that checks it."""

    def __init__(self, seed: int, socket_path: str | None = None, daemon=None, log=print):
        self.seed = seed
        self.rnd = random.Random(seed)
        self.log = log
        self.stats = Stats()
        self.daemon = daemon
        self.socket_path = socket_path or daemon.socket_path
        self.io_dev = self.adm_dev = self.ring_dev = self.ctl = None
        self.sandbox = Sandbox()
        self.prp = np.zeros(2 << 20, np.uint8)
        self._connect_control()
        self._connect_io()
        self._connect_admin()

    # ------------------------------------------------------------ clients
    def _connect_control(self):
        self.ctl = csdemu.connect(self.socket_path)
        kv = self.ctl.create_kv_namespace(**KV_SHAPE)
        rng = np.random.default_rng(self.seed)
        self.ctl_k = rng.standard_normal((2, 40, 2, 64)).astype(np.float16)
        self.ctl_v = rng.standard_normal((2, 40, 2, 64)).astype(np.float16)
        kv.append(0, [11, 12], self.ctl_k, self.ctl_v)
        q = rng.standard_normal((2, 4, 64)).astype(np.float32)
        # Warm up (JIT-compile) both attention kernels before any deadline runs.
        kv.attend(0, [11, 12], q)
        kv.attend(0, [11, 12], q, sparse=csdemu.SparF(r=8, k=16, window=4))
        self.ctl_kv = kv
        self.nlbas = self.ctl.identify_ns(1)["nsze"]

    def _connect_io(self):
        if self.io_dev is not None:
            try:
                self.io_dev.close()
            except Exception:
                pass
        d = self.io_dev = csdemu.connect(self.socket_path, arena_bytes=32 << 20)
        self.io_kv = d.create_kv_namespace(**KV_SHAPE)
        d.register(self.prp)
        self.io_q = d.create_queue(256)
        protected = [(q.sq.off, q.sq.off + sq_bytes(q.depth)) for q in d.queues.values()]
        protected += [(q.cq.off, q.cq.off + cq_bytes(q.depth)) for q in d.queues.values()]
        lo = d.alloc.alloc(16 << 20)
        d.arena.u8[lo:lo + 64] = np.array([0, 1, 2, 3, 7, 11, 12, 5], np.uint64).view(np.uint8)
        self.io_gen = Gen(self.rnd, self.nlbas, [self.io_kv.nsid, self.ctl_kv.nsid], d.arena.size,
                          (lo, lo + (16 << 20)), (self.prp.ctypes.data, self.prp.nbytes), protected)
        self.io_gen.seq_off = lo

    def _connect_admin(self):
        if self.adm_dev is not None:
            try:
                self.adm_dev.close()
            except Exception:
                pass
        d = self.adm_dev = csdemu.connect(self.socket_path, arena_bytes=8 << 20)
        lo = d.alloc.alloc(2 << 20)
        protected = [(q.sq.off, q.sq.off + sq_bytes(q.depth)) for q in d.queues.values()]
        protected += [(q.cq.off, q.cq.off + cq_bytes(q.depth)) for q in d.queues.values()]
        g = self.adm_gen = Gen(self.rnd, self.nlbas, [self.ctl_kv.nsid], d.arena.size,
                               (lo, lo + (2 << 20)), (self.sandbox.addr, 1 << 20), protected)
        g.sandbox = (self.sandbox.addr, self.sandbox.size)
        g.prp_addr, g.prp_len = self.sandbox.addr, self.sandbox.size
        self.held_aers: set[int] = set()

    def close(self):
        for d in (self.io_dev, self.adm_dev, self.ring_dev, self.ctl):
            if d is not None:
                try:
                    d.close()
                except Exception:
                    pass

    # ------------------------------------------------------------ running
    def daemon_alive(self) -> bool:
        return self.daemon is None or self.daemon.proc.poll() is None

    def _after_batch(self, kind, batch):
        if self.daemon_alive():
            return True
        st = self.stats
        st.crashes += 1
        st.example("crash", {"kind": kind, "batch": [_hex(e) for e in batch],
                             "log": self.daemon.log_text()[-3000:]})
        self.log(f"fuzz: daemon died (rc {self.daemon.proc.returncode}); restarting")
        self.close()
        self.io_dev = self.adm_dev = self.ring_dev = None
        self.daemon.start()
        self._connect_control()
        self._connect_io()
        self._connect_admin()
        return False

    def _check(self, q, batch, got, expected, kind):
        st = self.stats
        st.completions += len(got)
        cids = {}
        for e in batch:
            cid = struct.unpack_from("<H", e, 2)[0]
            cids[cid] = e
        for c in got:
            status = field_status(c[CQ_STATUS])
            st.statuses[status] += 1
            if status not in DEFINED_STATUSES:
                st.undefined += 1
                st.example("undefined", {"kind": kind, "status": status, "sqe": _hex(cids.get(c[4], b""))})
            if kind == "admin" and c[4] not in cids and c[4] in self.held_aers \
                    and status == Status.ABORT_REQUESTED:
                # an Abort in this batch answered an AER held from an earlier one
                self.held_aers.discard(c[4])
                continue
            if c[3] != q.qid or c[4] not in cids:
                st.bogus += 1
                st.example("bogus", {"kind": kind, "cqe": list(c)})
            e = cids.get(c[4])
            if e is not None and status != Status.CID_CONFLICT and self._foreign(kind, e, status):
                st.isolation += 1
                st.example("isolation", {"kind": kind, "status": status_name(status), "sqe": _hex(e)})
            if status == Status.INTERNAL_ERROR:
                st.internal += 1
                st.example("internal", {"kind": kind, "sqe": _hex(cids.get(c[4], b""))})
        if len(got) < expected:
            st.hangs += expected - len(got)
            st.example("hang", {"kind": kind, "missing": expected - len(got),
                                "batch": [_hex(e) for e in batch]})
            return False
        return True

    def _foreign(self, kind, e, status) -> bool:
        """True if `e` targeted the control client's KV namespace and was not
        refused with Access Denied (vendor I/O, or Delete KV Namespace)."""
        opc, flags, nsid = e[0], e[1], struct.unpack_from("<I", e, 4)[0]
        if nsid != self.ctl_kv.nsid:
            return False
        if kind == "io" and opc > VI.NOP:
            return status != Status.ACCESS_DENIED
        if kind == "admin" and opc == VA.DELETE_KV_NAMESPACE and not (flags & 0x3F or flags >> 6 > 1):
            return status != Status.ACCESS_DENIED
        return False

    def _unique_cids(self, batch, avoid=()):
        """Give every SQE of a batch its own CID, so each completion can be
        matched to its command (a CID reused while in flight is covered by
        tests/live/test_bad_input.py)."""
        used = set(avoid)
        for e in batch:
            cid = struct.unpack_from("<H", e, 2)[0]
            while cid in used:
                cid = self.rnd.getrandbits(16)
            used.add(cid)
            struct.pack_into("<H", e, 2, cid)
        return batch

    def run_io_batch(self, batch: list[bytes] | None = None, n: int = IO_BATCH) -> bool:
        if batch is None:
            batch = [self.io_gen.io() for _ in range(n)]
        batch = self._unique_cids([bytearray(e) for e in batch])
        q = self.io_q
        for e in batch:
            q.sq.push_raw(bytes(e))
        q.ring()
        self.stats.commands += len(batch)
        got = q.reap_until(len(batch), IO_DEADLINE_S)
        ok = self._check(q, batch, got, len(batch), "io")
        if not self._after_batch("io", batch):
            return False
        if not ok:
            self._connect_io()
        return ok

    def _aer_held(self, e) -> bool:
        opc, flags, cid = e[0], e[1], struct.unpack_from("<H", e, 2)[0]
        if opc != A.ASYNC_EVENT_REQUEST or flags & 0x3F or flags >> 6 > 1:
            return False
        if cid in self.held_aers or len(self.held_aers) >= 4:
            return False
        self.held_aers.add(cid)
        return True

    def run_admin_batch(self, batch: list[bytes] | None = None, n: int = ADMIN_BATCH) -> bool:
        g = self.adm_gen
        if batch is None:
            batch = []
            for _ in range(n):
                e = g.admin()
                if g.pending_desc:
                    off, desc = g.pending_desc
                    if g.data_lo <= off <= g.data_hi - 64:
                        self.adm_dev.arena.u8[off:off + 64] = np.frombuffer(desc, np.uint8)
                batch.append(e)
        batch = self._unique_cids([bytearray(e) for e in batch], self.held_aers)
        q = self.adm_dev.admin
        expected = 0
        for e in batch:
            if not self._aer_held(e):
                expected += 1
            q.sq.push_raw(bytes(e))
        q.ring()
        self.stats.commands += len(batch)
        got = q.reap_until(expected, ADMIN_DEADLINE_S)
        ok = self._check(q, batch, got, expected, "admin")
        if not self._after_batch("admin", batch):
            return False
        # Undo global side effects (timing mode, fault injection) for the others.
        try:
            self.ctl.set_feature(0xC0, 0)
            self.ctl.set_feature(0xC1, 0, 0, 0)
        except Exception as exc:     # noqa: BLE001 - recorded as a hang of the control client
            self.stats.hangs += 1
            self.stats.example("hang", {"kind": "control", "error": repr(exc)})
        if not ok:
            self._connect_admin()
        return ok

    def ring_abuse_round(self) -> bool:
        """A client scribbles over its own doorbells, rings and flags; another
        client must still be served (and its data intact)."""
        r = self.rnd
        st = self.stats
        if self.ring_dev is None or r.random() < 0.1:
            if self.ring_dev is not None:
                self.ring_dev.close()
            self.ring_dev = csdemu.connect(self.socket_path, arena_bytes=2 << 20)
            self.ring_q = self.ring_dev.create_queue(64)
        d, q = self.ring_dev, self.ring_q
        u32 = d.arena.u32
        for _ in range(r.randint(1, 4)):
            k = r.random()
            if k < 0.2:
                u32[2 * q.qid] = r.choice((q.depth, q.depth + 1, 0xFFFFFFFF, r.getrandbits(32)))
            elif k < 0.4:
                u32[2 * q.qid] = r.randrange(q.depth)              # tail over stale entries
            elif k < 0.5:
                u32[2 * q.qid + 1] = r.choice((q.depth, 0xFFFFFFFF, r.getrandbits(32), r.randrange(q.depth)))
            elif k < 0.65:
                off = q.sq.off + r.randrange(sq_bytes(q.depth) - 64)
                d.arena.u8[off:off + 64] = np.frombuffer(r.randbytes(64), np.uint8)
            elif k < 0.75:
                off = q.cq.off + r.randrange(cq_bytes(q.depth) - 16)
                d.arena.u8[off:off + 16] = np.frombuffer(r.randbytes(16), np.uint8)
            elif k < 0.85:
                d.arena.u8[4096:8192] = np.frombuffer(r.randbytes(4096), np.uint8)
            elif k < 0.92:
                d.arena.u8[0:4096] = np.frombuffer(r.randbytes(4096), np.uint8)     # every doorbell
            else:
                for _ in range(50):
                    os.eventfd_write(d.kick_fd, 1)
        st.ring_rounds += 1
        ok = True
        try:
            self.ctl.io.submit(VI.NOP)
            got = self.ctl.io.reap_until(1, ADMIN_DEADLINE_S)
            ok = len(got) == 1 and field_status(got[0][5]) == 0
            k2, _ = self.ctl_kv.read(0, 11, 0, 40)
            ok = ok and np.array_equal(k2.view(np.uint16), self.ctl_k[0].view(np.uint16))
        except Exception as exc:      # noqa: BLE001
            ok = False
            st.example("ring", repr(exc))
        if not ok:
            st.ring_failures += 1
            self.ctl.close()
            self._connect_control()
        if not self._after_batch("ring", []):
            return False
        return ok

    def control_data_intact(self) -> bool:
        k, v = self.ctl_kv.read(0, 12, 0, 40)
        return (np.array_equal(k.view(np.uint16), self.ctl_k[1].view(np.uint16))
                and np.array_equal(v.view(np.uint16), self.ctl_v[1].view(np.uint16)))


def run_fuzz(commands: int, seed: int, ring_rounds: int | None = None, log=print,
             time_limit_s: float | None = None) -> dict:
    """Fuzz a fresh small drive with about `commands` commands (3/4 on I/O
    queues, 1/4 on the admin queue) plus ring-abuse rounds."""
    t0 = time.monotonic()
    d = small_daemon().start()
    rss0 = None
    try:
        from tools.torture.common import rss_kib
        target = FuzzTarget(seed, daemon=d, log=log)
        rss0 = rss_kib(d.proc.pid)
        if ring_rounds is None:
            ring_rounds = max(20, commands // 2000)
        st = target.stats
        last = time.monotonic()
        i = 0
        while st.commands < commands:
            if time_limit_s and time.monotonic() - t0 > time_limit_s:
                break
            i += 1
            target.run_io_batch()
            target.run_admin_batch()
            target.run_admin_batch()
            if i % 40 == 0:
                target._connect_admin()       # drop its KV namespaces, queues, registrations
            if ring_rounds and i % max(1, (commands // IO_BATCH) // ring_rounds) == 0:
                target.ring_abuse_round()
            if time.monotonic() - last > 10:
                last = time.monotonic()
                log(f"fuzz: {st.commands} commands, {st.hangs} hangs, {st.crashes} crashes, "
                    f"{st.undefined} undefined, {st.internal} internal errors "
                    f"({st.commands / (last - t0):.0f} cmd/s)")
        intact = target.control_data_intact()
        alive = target.daemon_alive()
        jit = request(d.socket_path, "status") if alive else {}
        target.close()
        out = st.as_dict()
        out.update(seed=seed, seconds=round(time.monotonic() - t0, 1), daemon_alive_at_end=alive,
                   others_kv_data_intact=intact, daemon_rss_kib_start=rss0,
                   daemon_rss_kib_end=rss_kib(d.proc.pid),
                   daemon_tracebacks=d.log_text().count("Traceback"),
                   daemon_jit_compiles=jit.get("jit_compiles"), daemon_jit_seconds=jit.get("jit_seconds"),
                   daemon_jit_recent=jit.get("jit_recent"))
        out["commands_per_s"] = round(out["commands"] / max(out["seconds"], 1e-9))
        return out
    finally:
        d.cleanup()


def main(argv=None):
    part_main(__doc__, run_fuzz, ("--commands", int, 100_000), seeded=True, argv=argv, name="fuzz", takes_log=True)


if __name__ == "__main__":
    main()
