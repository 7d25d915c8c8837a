"""Seeded generators of fuzzed SQEs for tools/torture/fuzz.py: well-formed
NVM, KV and admin commands, their mutations, and data pointers that are valid,
misaligned, past the end or random. A generator only builds bytes; the target
decides where they go."""
from __future__ import annotations

import random
import struct

import numpy as np

from csdemu.transport.qpair import CONTROL_BYTES
from nvme_cmds.nvm import lba_cdws
from nvme_cmds.opcodes import AdminOpcode as A, NvmOpcode as N, VendorAdminOpcode as VA, VendorIoOpcode as VI
from nvme_cmds.spec import SQE_STRUCT

SGL = 0x40
BOUNDARY32 = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
              0xFFFFFFFE, 0xFFFFFFFF)
GUARD = 1 << 20             # PROT_NONE bytes on each side of the DMA sandbox
_U32 = struct.Struct("<I")


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
            c = lba_cdws(lba, 1)
            return self.sqe(opc, flags, nsid=self.nsid(), prp1=p1, prp2=p2,
                            c10=c["cdw10"], c11=c["cdw11"], c12=c12)
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
