"""Slow, obviously-correct references and small helpers for the flash tests."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from csdemu.drive.flash.nvm_namespace import FlashNamespace
from csdemu.drive.namespace import Request
from csdemu.drive.profile import load_profile
from nvme_cmds.nvm import lba_cdws
from nvme_cmds.opcodes import NvmOpcode

TINY = {  # 2 ch x 2 ways x 8 lines x 16 pages = 512 pages (2 MiB), 25 % OP
    "geometry.channels": 2, "geometry.ways": 2, "geometry.blocks_per_plane": 8,
    "geometry.pages_per_block": 16, "device.over_provisioning_pct": 25.0,
    "device.write_buffer_bytes": 65536,
    "device.kv_pct": 0.0,          # block-FTL tests: every line is the host's
}
SMALL = {  # 4 ch x 2 ways x 16 lines x 16 pages = 2048 pages (8 MiB), 20 % OP
    "geometry.channels": 4, "geometry.ways": 2, "geometry.blocks_per_plane": 16,
    "geometry.pages_per_block": 16, "device.over_provisioning_pct": 20.0,
    "device.kv_pct": 0.0,
}


def profile(base="instinfer", **over):
    ov = dict(SMALL)
    ov.update({k.replace("__", "."): v for k, v in over.items()})
    return load_profile(base, ov)


def tiny_profile(base="instinfer", **over):
    ov = dict(TINY)
    ov.update({k.replace("__", "."): v for k, v in over.items()})
    return load_profile(base, ov)


def rw_cmd(opcode, slba, nlb, *, data=None, t=0, fua=False, lba_size=4096, cdw12_extra=0):
    c = lba_cdws(slba, nlb, fua)
    return Request(int(opcode), 1, (c["cdw10"], c["cdw11"], c["cdw12"] | cdw12_extra, 0, 0, 0), t,
                   memoryview(data) if data is not None else None,
                   nlb * lba_size if opcode == NvmOpcode.READ else 0)


def pattern(lba: int, version: int, nbytes: int = 4096) -> bytes:
    """Distinct, recognisable content for (lba, version)."""
    a = np.full(nbytes // 8, (version << 32) | (lba & 0xFFFFFFFF), dtype="<u8")
    a[1::2] ^= 0x5A5A5A5A5A5A5A5A
    return a.tobytes()


def blob(lba: int, n: int, version: int, lba_size: int = 4096) -> bytes:
    """pattern() of n consecutive LBAs from `lba`."""
    return b"".join(pattern(lba + i, version, lba_size) for i in range(n))


class Host:
    """A tiny synchronous host: issues commands with a monotonic clock."""

    def __init__(self, ns: FlashNamespace):
        self.ns = ns
        self.now = 0
        self.lba = ns.lba_size

    def _go(self, req):
        r = self.ns.process_io(req)
        assert r.done_ns >= req.arrival_ns
        self.now = max(self.now + 1, req.arrival_ns + 1)
        return r

    def write(self, slba, data: bytes, fua=False):
        return self._go(rw_cmd(NvmOpcode.WRITE, slba, len(data) // self.lba, data=data,
                               t=self.now, fua=fua, lba_size=self.lba))

    def read(self, slba, nlb):
        return self._go(rw_cmd(NvmOpcode.READ, slba, nlb, t=self.now, lba_size=self.lba))

    def zeroes(self, slba, nlb):
        return self._go(rw_cmd(NvmOpcode.WRITE_ZEROES, slba, nlb, t=self.now, lba_size=self.lba))

    def flush(self):
        return self._go(Request(int(NvmOpcode.FLUSH), 1, (0,) * 6, self.now))

    def trim(self, ranges, ad=True):
        rec = np.zeros(len(ranges), [("cattr", "<u4"), ("nlb", "<u4"), ("slba", "<u8")])
        for i, (s, n) in enumerate(ranges):
            rec[i] = (0, n, s)
        cdw = (len(ranges) - 1, 4 if ad else 0, 0, 0, 0, 0)
        return self._go(Request(int(NvmOpcode.DATASET_MANAGEMENT), 1, cdw, self.now,
                                memoryview(rec.tobytes())))


class DictFTL:
    """The reference: a dict from LBA to its bytes; missing = zeros.

    It also models what survives a crash: every write reaches the NAND files
    at once, deallocations become durable at the next flush."""

    def __init__(self, nlbas: int, lba_size: int):
        self.nlbas, self.lba_size = nlbas, lba_size
        self.data: dict[int, bytes] = {}
        self.clock = 0
        self.last_write: dict[int, tuple[int, bytes]] = {}
        self.durable_trim: dict[int, int] = {}
        self.pending_trim: dict[int, int] = {}

    def write(self, lba, blob):
        for i in range(len(blob) // self.lba_size):
            self.clock += 1
            b = blob[i * self.lba_size:(i + 1) * self.lba_size]
            self.data[lba + i] = b
            self.last_write[lba + i] = (self.clock, b)

    def trim(self, lba, n):
        self.clock += 1
        for x in range(lba, lba + n):
            self.data.pop(x, None)
            self.pending_trim[x] = self.clock

    def flush(self):
        self.durable_trim.update(self.pending_trim)
        self.pending_trim.clear()

    def read(self, lba, n):
        z = bytes(self.lba_size)
        return b"".join(self.data.get(x, z) for x in range(lba, lba + n))

    def crash(self) -> dict[int, set[bytes]]:
        """State after a crash: each LBA reads its newest write unless a
        durable deallocation is newer. An LBA whose newest deallocation was
        not flushed may read either way (the FTL journals deallocations early
        when GC erases the pages they freed): returns {lba: allowed values}."""
        z = bytes(self.lba_size)
        either = {}
        for x, c in self.pending_trim.items():
            if c > self.durable_trim.get(x, -1):
                w = self.last_write.get(x)
                if w is not None and w[0] < c:
                    either[x] = {w[1], z}
        self.pending_trim.clear()
        self.data = {}
        for x, (c, b) in self.last_write.items():
            if c > self.durable_trim.get(x, -1):
                self.data[x] = b
        return either

    def settle(self, lba: int, value: bytes) -> None:
        """Adopt the value the device chose for an ambiguous LBA."""
        z = bytes(self.lba_size)
        if value == z:
            self.data.pop(lba, None)
            self.durable_trim[lba] = self.clock
        else:
            self.data[lba] = value


@contextmanager
def scratch_dir():
    """A temporary data dir, on tmpfs when there is one: the flash tests
    fsync a lot, and on a busy disk each fsync can take many milliseconds.
    (Durability against kill -9 does not need the disk: the tests simulate
    crashes in-process.)"""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    d = tempfile.mkdtemp(prefix="csdemu-flash-test-", dir=base)
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def tmp_path():
    """Overrides pytest's tmp_path in the flash test modules that import it:
    data dirs on tmpfs when available (see scratch_dir)."""
    with scratch_dir() as d:
        yield d
