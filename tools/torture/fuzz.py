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

import mmap
import os
import random
import struct
import time
from collections import Counter

import numpy as np

from tools.torture.common import DEFINED_STATUSES, field_status, small_daemon, wait_completions, part_main

import csdemu  # noqa: E402
from csdemu.control import request  # noqa: E402
from csdemu.qpair import CONTROL_BYTES, cq_bytes, sq_bytes  # noqa: E402
from nvme_cmds.opcodes import AdminOpcode as A, NvmOpcode as N, VendorAdminOpcode as VA, VendorIoOpcode as VI  # noqa: E402
from nvme_cmds.spec import SQE_STRUCT  # noqa: E402
from nvme_cmds.status import Status, status_name  # noqa: E402

SGL = 0x40
IO_BATCH = 128
ADMIN_BATCH = 16
IO_DEADLINE_S = 30.0        # a batch of 128 commands: far beyond any modeled time
ADMIN_DEADLINE_S = 10.0
BOUNDARY32 = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
              0xFFFFFFFE, 0xFFFFFFFF)
KV_SHAPE = dict(layers=2, q_heads=4, kv_heads=2, head_dim=64, dtype="float16", sparse_layout=True)
GUARD = 1 << 20
SANDBOX = 8 << 20
_U32 = struct.Struct("<I")


def _hex(e: bytes) -> str:
    return e.hex()


class Stats:
    def __init__(self):
        self.commands = 0
        self.completions = 0
        self.hangs = 0              # commands without a completion before the deadline
        self.undefined = 0          # completions with a status nvme_cmds does not define
        self.bogus = 0              # completions with a wrong SQ id or a CID never submitted
        self.internal = 0           # Internal Error completions (caught daemon exceptions)
        self.isolation = 0          # a command on another client's KV namespace not refused
        self.crashes = 0
        self.ring_rounds = 0
        self.ring_failures = 0      # another client not served after a ring-abuse round
        self.statuses: Counter = Counter()
        self.examples: dict[str, list] = {}

    def example(self, kind: str, what) -> None:
        lst = self.examples.setdefault(kind, [])
        if len(lst) < 8:
            lst.append(what)

    def as_dict(self) -> dict:
        return {"commands": self.commands, "completions": self.completions, "hangs": self.hangs,
                "undefined_status": self.undefined, "bogus_completions": self.bogus,
                "internal_errors": self.internal,
                "isolation_violations": self.isolation, "crashes": self.crashes,
                "ring_abuse_rounds": self.ring_rounds, "ring_abuse_failures": self.ring_failures,
                "statuses": {status_name(k): v for k, v in self.statuses.most_common()},
                "examples": self.examples}


# ====================================================================== generators
class Gen:
    """Builds SQEs (64 bytes) for one fuzzing client from a seeded generator."""

    def __init__(self, rnd: random.Random, nlbas: int, kv_nsids, arena_size: int,
                 data_span: tuple[int, int], prp_buf: tuple[int, int], protected):
        self.r = rnd
        self.nlbas = nlbas
        self.kv_nsids = list(kv_nsids)
        self.arena_size = arena_size
        self.data_lo, self.data_hi = data_span
        self.prp_addr, self.prp_len = prp_buf
        self.protected = list(protected)       # arena spans SGL data must not touch
        self.seq_off = self.data_lo            # sequence ids for KV commands live here
        self.sandbox = None                    # (addr, len) for DMA Map (admin)

    # ------------------------------------------------------------ pieces
    def u32(self) -> int:
        r = self.r.random()
        if r < 0.3:
            return self.r.choice(BOUNDARY32)
        if r < 0.6:
            return self.r.getrandbits(self.r.randint(1, 16))
        return self.r.getrandbits(32)

    def nsid(self) -> int:
        r = self.r.random()
        if r < 0.65:
            return 1
        if r < 0.85 and self.kv_nsids:
            return self.r.choice(self.kv_nsids)
        return self.r.choice((0, 2, 3, 17, 1023, 1024, 0xFFFFFFFE, 0xFFFFFFFF, self.r.getrandbits(32)))

    def lba(self) -> int:
        r = self.r.random()
        if r < 0.7:
            return self.r.randrange(self.nlbas)
        if r < 0.9:
            return max(0, self.nlbas - self.r.randint(1, 20))
        return self.r.getrandbits(64)

    def nlb(self) -> int:
        r = self.r.random()
        if r < 0.8:
            return self.r.randint(0, 15)
        if r < 0.95:
            return self.r.randint(0, 2047)
        return self.r.choice((0xFFFF, 2048, 4096, self.r.getrandbits(16)))

    def dptr(self, nbytes: int):
        """-> (flags, prp1, prp2) for a transfer of about nbytes."""
        r = self.r.random()
        if r < 0.5:                                  # SGL in the arena data area
            room = self.data_hi - self.data_lo
            n = min(nbytes, room)
            off = self.data_lo + (self.r.randrange(0, max(1, room - n)) & ~63)
            length = nbytes if self.r.random() < 0.9 else self.u32()
            if self.r.random() < 0.03:
                length |= self.r.randint(1, 15) << 60          # bad descriptor type
            return SGL, off, length
        if r < 0.85:                                 # PRP into the registered buffer
            room = self.prp_len - min(nbytes, self.prp_len)
            off = (self.r.randrange(0, room + 1) & ~3) if room else 0
            if self.r.random() < 0.05:
                off += self.r.randint(1, 3)                     # misaligned
            if self.r.random() < 0.05:
                off = self.prp_len - self.r.randint(0, 4096)    # runs off the end
            return 0, self.prp_addr + off, 0
        if r < 0.95:                                 # random addresses
            return (self.r.choice((0, SGL, 0x80, 0xC0)),
                    self.r.choice((0, 8, 0x1000, 0xdead0000, 1 << 47, self.r.getrandbits(64))),
                    self.r.getrandbits(64))
        return 0, 0, 0

    def sqe(self, opc, flags=0, cid=None, nsid=0, cdw2=0, cdw3=0, mptr=0, prp1=0, prp2=0,
            c10=0, c11=0, c12=0, c13=0, c14=0, c15=0) -> bytearray:
        if cid is None:
            cid = self.r.getrandbits(16)
        return bytearray(SQE_STRUCT.pack(opc & 0xFF, flags & 0xFF, cid & 0xFFFF, nsid & 0xFFFFFFFF,
                                         cdw2 & 0xFFFFFFFF, cdw3 & 0xFFFFFFFF, mptr & (2**64 - 1),
                                         prp1 & (2**64 - 1), prp2 & (2**64 - 1),
                                         *(c & 0xFFFFFFFF for c in (c10, c11, c12, c13, c14, c15))))

    # ------------------------------------------------------------ I/O
    def io_valid(self) -> bytearray:
        r = self.r
        k = r.random()
        if k < 0.10:
            return self.sqe(VI.NOP)
        if k < 0.55:
            opc = r.choice((N.READ, N.WRITE, N.READ, N.WRITE, N.WRITE_ZEROES))
            lba, nlb = self.lba(), self.nlb()
            flags, p1, p2 = self.dptr((nlb + 1) * 4096)
            c12 = nlb | (r.choice((0, 0, 0, 1 << 30, 1 << 31)) if r.random() < 0.2 else 0)
            return self.sqe(opc, flags, nsid=self.nsid(), prp1=p1, prp2=p2,
                            c10=lba & 0xFFFFFFFF, c11=lba >> 32, c12=c12)
        if k < 0.62:
            return self.sqe(N.FLUSH, nsid=self.nsid())
        if k < 0.70:
            nr = r.randint(0, 7) if r.random() < 0.9 else r.randint(0, 255)
            flags, p1, p2 = self.dptr((nr + 1) * 16)
            return self.sqe(N.DATASET_MANAGEMENT, flags, nsid=self.nsid(), prp1=p1, prp2=p2,
                            c10=nr, c11=r.choice((4, 4, 0, 2, 7, self.u32())))
        # KV commands on a KV namespace (or a wrong one)
        nsid = r.choice(self.kv_nsids) if self.kv_nsids and r.random() < 0.85 else self.nsid()
        layer = r.choice((0, 1, 1, 2, 0xFFFF))
        batch = r.choice((1, 1, 2, 3, 0, 4096, 5000))
        if k < 0.80:
            tokens = r.choice((1, 2, 15, 16, 17, 33, 0))
            nbytes = 2 * max(batch, 1) * tokens * 2 * 64 * 2
            flags, p1, p2 = self.dptr(min(nbytes, 1 << 20))
            return self.sqe(VI.KV_APPEND, flags, nsid=nsid, mptr=self.seq_off, prp1=p1, prp2=p2,
                            c10=layer | (tokens << 16), c11=batch)
        if k < 0.86:
            count = r.choice((1, 2, 16, 40, 0, 1000))
            flags, p1, p2 = self.dptr(2 * count * 2 * 64 * 2)
            sid = r.choice((0, 1, 2, 3, 7, r.getrandbits(64)))
            return self.sqe(VI.KV_READ, flags, nsid=nsid, prp1=p1, prp2=p2, c10=layer,
                            c11=sid & 0xFFFFFFFF, c12=sid >> 32, c13=r.choice((0, 0, 5, 1 << 20)),
                            c14=count)
        if k < 0.95:
            mode = r.choice((0, 0, 1, 1, 2))
            qbytes = max(batch, 1) * 4 * 64 * 4
            flags, p1, p2 = self.dptr(min(2 * qbytes, 1 << 20))
            c15 = 0
            if flags == SGL:
                c15 = self.data_lo + (r.randrange(0, (self.data_hi - self.data_lo) // 2) & ~63)
            elif r.random() < 0.8:
                p2 = self.prp_addr + (self.prp_len // 2 if r.random() < 0.9 else r.getrandbits(20))
            c12 = 0
            c13 = 0
            if mode == 1:
                c12 = r.choice((1, 8, 64, 0, 65)) | (r.choice((0, 4, 16)) << 16)
                c13 = r.choice((1, 16, 64, 0, 10 ** 6))
            return self.sqe(VI.ATTEND, flags, nsid=nsid, mptr=self.seq_off, prp1=p1, prp2=p2,
                            c10=layer | (mode << 16), c11=batch, c12=c12, c13=c13, c15=c15)
        return self.sqe(VI.RECLAIM, nsid=nsid, mptr=self.seq_off, c11=r.choice((1, 2, 0, 4096)))

    def mutate(self, e: bytearray) -> bytearray:
        r = self.r
        for _ in range(r.randint(1, 3)):
            k = r.random()
            if k < 0.35:
                bit = r.randrange(512)
                e[bit >> 3] ^= 1 << (bit & 7)
            elif k < 0.65:
                i = r.randrange(16)
                _U32.pack_into(e, 4 * i, self.u32())
            elif k < 0.75:
                e[0] = r.getrandbits(8)
            elif k < 0.85:
                e[1] = r.choice((0x01, 0x02, 0x04, 0x40, 0x80, 0xC0, r.getrandbits(8)))
            else:
                e[r.randrange(64)] = r.getrandbits(8)
        return e

    def io(self) -> bytearray:
        k = self.r.random()
        if k < 0.55:
            e = self.io_valid()
        elif k < 0.93:
            e = self.mutate(self.io_valid())
        else:
            e = bytearray(self.r.randbytes(64))
        return self.safe_io(e)

    def safe_io(self, e: bytearray) -> bytearray:
        """Keep SGL data off the client's own rings (the ring-abuse mode does that)."""
        flags = e[1]
        if flags >> 6 == 1:
            addr, length = struct.unpack_from("<QQ", e, 24)
            n = min(length & 0xFFFFFFFF, 1 << 24)
            out = _U32.unpack_from(e, 60)[0]
            for s, t in self.protected:
                if addr < t and addr + max(n, 1) > s:
                    struct.pack_into("<Q", e, 24, self.data_lo)
                if out < t and out + (1 << 24) > s and e[0] & 3 == 3:
                    _U32.pack_into(e, 60, self.data_lo)
        return e

    # ------------------------------------------------------------ admin
    def admin_valid(self) -> bytearray:
        r = self.r
        k = r.random()
        if k < 0.14:
            flags, p1, p2 = self.dptr(4096)
            return self.sqe(A.IDENTIFY, flags, nsid=self.nsid(), prp1=p1, prp2=p2,
                            c10=r.choice((0, 1, 2, 2, 3, 0x10, self.u32())))
        if k < 0.26:
            numd = r.choice((127, 1023, 0, 3, 1, self.r.getrandbits(16), 2047))
            flags, p1, p2 = self.dptr((numd + 1) * 4)
            return self.sqe(A.GET_LOG_PAGE, flags, prp1=p1, prp2=p2,
                            c10=r.choice((1, 2, 0xC0, 0xC1, 0x7A, 0xFF)) | (numd << 16),
                            c11=0 if r.random() < 0.9 else self.u32(),
                            c12=r.choice((0, 0, 4, 512, 4096, 3)), c13=0 if r.random() < 0.95 else 1)
        if k < 0.38:
            fid = r.choice((1, 2, 6, 7, 8, 0xC0, 0xC1, 0x05, 0x80, 0xFF))
            return self.sqe(A.SET_FEATURES, c10=fid | (r.choice((0, 0, 0, 1)) << 31),
                            c11=r.choice((0, 1, 2, 1000, 10 ** 6, 10 ** 6 + 1, self.u32())),
                            c12=r.choice((0, 100, 10 ** 6, 10 ** 7, self.u32())), c13=self.u32())
        if k < 0.46:
            return self.sqe(A.GET_FEATURES, c10=r.choice((1, 2, 6, 7, 8, 0xC0, 0xC1, 0x77))
                            | (r.randint(0, 7) << 8))
        if k < 0.60:
            qid = r.choice((1, 2, 3, 5, 31, 63, 64, 0, 0xFFFF))
            depth = r.choice((2, 4, 64, 1024, 1025, 1, 0x10000))
            off = r.choice((CONTROL_BYTES, self.data_lo, self.data_hi - 4096,
                            r.randrange(self.arena_size) & ~63, r.getrandbits(64), 0))
            if r.random() < 0.5:
                return self.sqe(A.CREATE_IO_CQ, prp1=off, c10=((depth - 1) << 16) | qid,
                                c11=r.choice((1, 3, 0, 2, 5)) | (r.choice((0, 1, 15, 16, 999)) << 16))
            return self.sqe(A.CREATE_IO_SQ, prp1=off, c10=((depth - 1) << 16) | qid,
                            c11=r.choice((1, 0, 3, 9)) | (r.choice((0, 1, 2, 3, 63, 64)) << 16))
        if k < 0.68:
            return self.sqe(r.choice((A.DELETE_IO_SQ, A.DELETE_IO_CQ)),
                            c10=r.choice((0, 1, 2, 3, 63, 0x10001)))
        if k < 0.72:
            return self.sqe(A.ABORT, c10=r.choice((0, 1, 2, 63)) | (r.getrandbits(16) << 16))
        if k < 0.76:
            return self.sqe(A.ASYNC_EVENT_REQUEST)
        if k < 0.79:
            return self.sqe(A.KEEP_ALIVE)
        if k < 0.88:
            return self.dma_map_sqe(self.sqe(VA.DMA_MAP))
        if k < 0.91:
            return self.sqe(VA.DMA_UNMAP, prp1=r.choice((self.sandbox[0], self.sandbox[0] + 4096,
                                                          0, r.getrandbits(64))))
        if k < 0.97:
            desc = np.zeros(64, np.uint8)
            vals = [r.choice((1, 2, 4, 0, 0xFFFF)), r.choice((1, 2, 8, 0, 3)), r.choice((1, 2, 0, 3)),
                    r.choice((64, 128, 32, 0, 100, 4096)), r.choice((0, 1, 2, 3, 255)),
                    r.choice((0, 1, 2, 255))]
            struct.pack_into("<HHHHBB", desc, 0, *vals)
            struct.pack_into("<HHII", desc, 10, r.choice((0, 0, 16, 32, 7)), r.choice((0, 0, 1, 3, 64)),
                             r.choice((0, 1, 16, 4096, 4097, 0xFFFFFFFF)), 0)
            flags, p1, p2 = self.dptr(64)
            if flags == SGL:
                self.pending_desc = (p1, desc.tobytes())
            return self.sqe(VA.CREATE_KV_NAMESPACE, flags, prp1=p1, prp2=p2)
        return self.sqe(VA.DELETE_KV_NAMESPACE, nsid=self.nsid())

    def dma_map_sqe(self, e: bytearray) -> bytearray:
        """DMA Map only of memory the client may expose: its sandbox (length may
        run into the PROT_NONE guards), non-canonical or unmappable low addresses."""
        r = self.r
        base, size = self.sandbox
        k = r.random()
        if k < 0.5:
            addr = base + (r.randrange(size) & ~r.choice((0, 3, 4095)))
            length = r.choice((1, 64, 4096, size, size + 1, GUARD // 2, r.randint(1, size)))
            length = min(length, base + size + GUARD - addr)       # stay inside the guard
        elif k < 0.75:
            addr = r.choice((1 << 47, 1 << 63, 0xFFFF800000000000, (1 << 64) - 4096)) + r.getrandbits(12)
            length = r.choice((1, 4096, 1 << 40, r.getrandbits(64)))
        else:
            addr = r.randrange(0, 0x10000)                       # below mmap_min_addr
            length = r.choice((0, 1, 4096, 0xF000))
        addr &= 2 ** 64 - 1
        struct.pack_into("<Q", e, 24, addr)
        _U32.pack_into(e, 40, length & 0xFFFFFFFF)
        _U32.pack_into(e, 44, (length >> 32) & 0xFFFFFFFF)
        return e

    def admin(self) -> bytearray:
        k = self.r.random()
        self.pending_desc = None
        if k < 0.55:
            e = self.admin_valid()
        elif k < 0.93:
            e = self.mutate(self.admin_valid())
        else:
            e = bytearray(self.r.randbytes(64))
        if e[0] == VA.DMA_MAP:
            e = self.dma_map_sqe(e)
        return self.safe_io(e)


# ====================================================================== the target
class Sandbox:
    """An anonymous mapping with PROT_NONE guards on both sides."""

    def __init__(self, size=SANDBOX):
        import ctypes
        total = size + 2 * GUARD
        self.mm = mmap.mmap(-1, total, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.buf = np.frombuffer(self.mm, np.uint8)
        base = self.buf.ctypes.data
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        assert libc.mprotect(base, GUARD, 0) == 0
        assert libc.mprotect(base + GUARD + size, GUARD, 0) == 0
        self.addr, self.size = base + GUARD, size


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
            status = field_status(c[5])
            st.statuses[status] += 1
            if status not in DEFINED_STATUSES:
                st.undefined += 1
                st.example("undefined", {"kind": kind, "status": status, "sqe": _hex(cids.get(c[4], b""))})
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
        tests/test_bad_input.py)."""
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
        got = wait_completions(q, len(batch), IO_DEADLINE_S)
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
        got = wait_completions(q, expected, ADMIN_DEADLINE_S)
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
            got = wait_completions(self.ctl.io, 1, ADMIN_DEADLINE_S)
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
