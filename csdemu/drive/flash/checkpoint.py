"""Checkpoints of the L2P table and the journal of deallocations.

checkpoint.bin   64-byte header + the L2P as of write sequence number `seq`:
                 per logical page the int32 PPN, bit-inverted so that an
                 unmapped page (-1) is stored as 0 and runs of them are
                 holes (a big drive's checkpoint is as large as what is
                 mapped, not as its capacity). Version 1 had plain int64
                 entries and is still read. Written to a
                 temporary file, fsync'ed, then renamed over the old one, so
                 a crash leaves either the old or the new checkpoint, never a
                 mix. The header carries a CRC32 of the table.
trim.journal     64-byte header (the checkpoint seq it starts from, how many
                 records it holds, a CRC32 of them, the last seq a Flush made
                 durable, a CRC32 of itself), then records (seq, first lpn,
                 count) of deallocations. Programs need no journal: their
                 OOB records are the log.

A checkpoint rewrites the journal to start from it with a *base*: one
record per run of LBAs the checkpoint has unmapped, stamped seq S + 1. So the
journal alone says which LBAs were deallocated, and losing checkpoint.bin
costs a full OOB scan, never a trimmed LBA's old data: recovery from the OOB
records and the journal gives the same L2P.

The record count and CRC in the header make a truncated or edited journal
an error (JournalError) rather than trims silently lost; records past the
count are the tail of a commit a crash interrupted, and are ignored.
`synced_seq` tells recovery which pages no crash can have torn: one up to
it that fails its CRC is corrupt, and its LBA fails to read rather than
falling back to an older version.

Recovery (recovery.py) = checkpoint + OOB records with seq > checkpoint seq +
journal records with seq > checkpoint seq.
"""
from __future__ import annotations

import errno
import os
import zlib
from pathlib import Path

import numpy as np

from csdemu.drive.flash.files import BackingError, open_private, write_atomic, write_atomic_at

CKPT_NAME = "checkpoint.bin"
JOURNAL_NAME = "trim.journal"
MAGIC = 0x54504B43_4D454443        # "CDEMCKPT" little-endian-ish tag
VERSION = 2
# The L2P's entry: 4 B per 4 KiB page, as real FTLs keep their map (an int64
# table cost a 1 TiB drive 2 GB of RAM). It maps up to 2^31 - 1 pages, 8 TiB
# of 4 KiB pages; profile_rules refuses larger geometries.
L2P_DTYPE = np.dtype("<i4")
_BODY_DTYPE = {1: np.dtype("<i8"), 2: L2P_DTYPE}
_RUNS_CHUNK = 1 << 24       # LPNs per step of unmapped_runs: bounded temporaries
_CKPT_CHUNK = 1 << 20       # entries per piece of a checkpoint (4 MiB): holes or data
JOURNAL_MAGIC = 0x314A5254_4D454443    # "CDEMTRJ1"
JOURNAL_VERSION = 2                     # 1 had no header: records from byte 0

HEADER = np.dtype([("magic", "<u8"), ("version", "<u4"), ("clean", "<u4"),
                   ("seq", "<u8"), ("nlpns", "<u8"), ("crc", "<u4"),
                   ("_pad", "u1", (28,))])
assert HEADER.itemsize == 64

JHEADER = np.dtype([("magic", "<u8"), ("version", "<u4"), ("hcrc", "<u4"),
                    ("base_seq", "<u8"), ("count", "<u8"), ("crc", "<u4"),
                    ("_pad0", "<u4"), ("synced_seq", "<u8"), ("_pad", "u1", (16,))])
assert JHEADER.itemsize == 64

TRIM_REC = np.dtype([("seq", "<u8"), ("lpn", "<u8"), ("count", "<u8")])


class JournalError(ValueError):
    """trim.journal is missing, truncated or corrupt (the message says which)."""


def save_checkpoint(data_dir, l2p: np.ndarray, seq: int, clean: bool) -> None:
    """Raises OSError (nothing replaced) if it cannot be written."""
    hdr = np.zeros(1, HEADER)
    hdr["magic"], hdr["version"], hdr["clean"] = MAGIC, VERSION, int(clean)
    hdr["seq"], hdr["nlpns"] = seq, l2p.size
    body = np.ascontiguousarray(l2p, dtype=L2P_DTYPE)

    def pieces():
        crc = 0
        for c0 in range(0, body.size, _CKPT_CHUNK):
            stored = np.invert(body[c0:c0 + _CKPT_CHUNK])
            crc = zlib.crc32(stored, crc)
            if stored.any():
                yield HEADER.itemsize + c0 * L2P_DTYPE.itemsize, stored
        hdr["crc"] = crc
        yield 0, hdr.tobytes()
    write_atomic_at(Path(data_dir) / CKPT_NAME, pieces(),
                    HEADER.itemsize + body.size * L2P_DTYPE.itemsize)


def read_checkpoint(data_dir, nlpns: int):
    """-> ((l2p, seq, clean), None), or (None, why it cannot be used). The
    table is read straight into the L2P array (no second copy of it)."""
    p = Path(data_dir) / CKPT_NAME
    try:
        f = open(p, "rb")
    except FileNotFoundError:
        return None, f"{CKPT_NAME} is missing"
    with f:
        raw = f.read(HEADER.itemsize)
        size = os.fstat(f.fileno()).st_size
        if len(raw) < HEADER.itemsize:
            return None, f"{CKPT_NAME} is {size} bytes, shorter than its header"
        hdr = np.frombuffer(raw, HEADER, count=1)[0]
        body_dt = _BODY_DTYPE.get(int(hdr["version"]))
        if int(hdr["magic"]) != MAGIC or body_dt is None or int(hdr["nlpns"]) != nlpns:
            return None, f"{CKPT_NAME} has a bad header"
        want = HEADER.itemsize + body_dt.itemsize * nlpns
        if size != want:
            return None, f"{CKPT_NAME} is {size} bytes, not {want}"
        body = np.empty(nlpns, body_dt)
        if f.readinto(memoryview(body).cast("B")) != body.nbytes:
            return None, f"{CKPT_NAME} is shorter than its table"
    if zlib.crc32(body) != int(hdr["crc"]):
        return None, f"{CKPT_NAME} fails its CRC"
    if body_dt != L2P_DTYPE:
        body = body.astype(L2P_DTYPE)
    else:
        np.invert(body, out=body)
    return (body, int(hdr["seq"]), bool(hdr["clean"])), None


def load_checkpoint(data_dir, nlpns: int):
    """-> (l2p, seq, clean) or None if absent/corrupt/of another size."""
    return read_checkpoint(data_dir, nlpns)[0]


def mark_unclean(data_dir) -> None:
    """Clear the clean flag in place (done right after opening)."""
    p = Path(data_dir) / CKPT_NAME
    if not p.exists():
        return
    with open(p, "r+b") as f:
        raw = f.read(HEADER.itemsize)
        if len(raw) < HEADER.itemsize:
            return
        hdr = np.frombuffer(raw, HEADER).copy()
        if hdr["clean"][0]:
            hdr["clean"] = 0
            f.seek(0)
            f.write(hdr.tobytes())
            f.flush()
            os.fsync(f.fileno())


def unmapped_runs(l2p: np.ndarray, seq: int) -> np.ndarray:
    """A journal base: one record (seq, lpn, count) per run of unmapped LPNs.
    Found a chunk of the table at a time, so a big L2P needs no temporaries
    of its own size."""
    los, his = [], []
    open_lo = -1                    # start of a run still open at the chunk's end
    for c0 in range(0, l2p.size, _RUNS_CHUNK):
        un = (l2p[c0:c0 + _RUNS_CHUNK] < 0).view(np.int8)
        edges = np.diff(un, prepend=np.int8(0), append=np.int8(0))
        lo = np.flatnonzero(edges == 1) + c0
        hi = np.flatnonzero(edges == -1) + c0
        if open_lo >= 0 and lo.size and lo[0] == c0:
            lo[0] = open_lo         # the run goes on from the previous chunk
        elif open_lo >= 0:
            los.append(np.array([open_lo]))
            his.append(np.array([c0]))
        open_lo = -1
        if hi.size and hi[-1] == c0 + un.size and c0 + un.size < l2p.size:
            open_lo = int(lo[-1])   # carried into the next chunk
            lo, hi = lo[:-1], hi[:-1]
        los.append(lo)
        his.append(hi)
    lo = np.concatenate(los) if los else np.zeros(0, np.int64)
    hi = np.concatenate(his) if his else np.zeros(0, np.int64)
    rec = np.empty(lo.size, TRIM_REC)
    rec["seq"], rec["lpn"], rec["count"] = seq, lo, hi - lo
    return rec


class TrimJournal:
    """Deallocation records, buffered in memory until `commit()`."""

    def __init__(self, data_dir):
        self.path = Path(data_dir) / JOURNAL_NAME
        self.pending: list[tuple[int, int, int]] = []
        self.base_seq = 0
        self.count = 0              # committed records
        self.crc = 0                # CRC32 of the committed records
        self.synced_seq = 0         # every page programmed up to it was msynced

    def _header(self) -> bytes:
        h = np.zeros(1, JHEADER)
        h["magic"], h["version"] = JOURNAL_MAGIC, JOURNAL_VERSION
        h["base_seq"], h["count"], h["crc"] = self.base_seq, self.count, self.crc
        h["synced_seq"] = self.synced_seq
        h["hcrc"] = zlib.crc32(h.tobytes())
        return h.tobytes()

    def rewrite(self, base_seq: int, base: np.ndarray) -> None:
        """Start afresh from a checkpoint at `base_seq` (everything up to it
        synced) with records `base`."""
        body = np.ascontiguousarray(base, TRIM_REC)
        old = (self.base_seq, self.count, self.crc, self.synced_seq)
        self.base_seq, self.count, self.crc = base_seq, body.size, zlib.crc32(body)
        self.synced_seq = max(self.synced_seq, base_seq)
        try:
            write_atomic(self.path, (self._header(), body))
        except OSError:
            self.base_seq, self.count, self.crc, self.synced_seq = old
            raise

    def load(self) -> np.ndarray:
        """-> the committed records; JournalError if the file cannot be trusted."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raise JournalError(f"{JOURNAL_NAME} is missing") from None
        if len(raw) < JHEADER.itemsize:
            raise JournalError(f"{JOURNAL_NAME} is {len(raw)} bytes, shorter than its header")
        h = np.frombuffer(raw, JHEADER, count=1).copy()
        hcrc = int(h["hcrc"][0])
        h["hcrc"] = 0
        if int(h["magic"][0]) != JOURNAL_MAGIC or int(h["version"][0]) != JOURNAL_VERSION:
            raise JournalError(f"{JOURNAL_NAME} has no version-{JOURNAL_VERSION} header")
        if zlib.crc32(h.tobytes()) != hcrc:
            raise JournalError(f"{JOURNAL_NAME}: its header fails its CRC")
        count = int(h["count"][0])
        have = (len(raw) - JHEADER.itemsize) // TRIM_REC.itemsize
        if have < count:
            raise JournalError(f"{JOURNAL_NAME} is truncated: {have} of {count} records")
        body = np.frombuffer(raw, TRIM_REC, count=count, offset=JHEADER.itemsize)
        if zlib.crc32(body) != int(h["crc"][0]):
            raise JournalError(f"{JOURNAL_NAME}: its records fail their CRC")
        self.base_seq, self.count, self.crc = int(h["base_seq"][0]), count, int(h["crc"][0])
        self.synced_seq = int(h["synced_seq"][0])
        return body.copy()

    def add(self, seq: int, lpn: int, count: int) -> None:
        self.pending.append((seq, lpn, count))

    def commit(self, sync: bool = True, synced_seq: int | None = None) -> None:
        """Append the pending records, then count them in the header (each
        step fsynced when `sync`, so the header never counts records the file
        lacks); `synced_seq` (Flush, after its msync) goes in the header too.
        Raises BackingError with the records still pending."""
        if not self.pending and (synced_seq is None or synced_seq <= self.synced_seq):
            return
        rec = np.array(self.pending, dtype=TRIM_REC)
        try:
            fd = open_private(self.path, os.O_RDWR)
            try:
                data = rec.tobytes()
                if data:
                    off = JHEADER.itemsize + self.count * TRIM_REC.itemsize
                    if os.pwrite(fd, data, off) != len(data):
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    if sync:
                        os.fsync(fd)
                old = self.count, self.crc, self.synced_seq
                self.count, self.crc = self.count + rec.size, zlib.crc32(data, self.crc)
                if synced_seq is not None:
                    self.synced_seq = max(self.synced_seq, synced_seq)
                try:
                    os.pwrite(fd, self._header(), 0)    # one sector: all or nothing
                    if sync:
                        os.fsync(fd)
                except OSError:
                    self.count, self.crc, self.synced_seq = old
                    raise
            finally:
                os.close(fd)
        except OSError as e:
            raise BackingError(e.errno, f"appending to {JOURNAL_NAME}") from None
        self.pending.clear()


def shut_down_cleanly(data_dir) -> bool | None:
    """Whether the last run closed the drive cleanly (None: never formatted)."""
    p = Path(data_dir) / CKPT_NAME
    try:
        with open(p, "rb") as f:
            raw = f.read(HEADER.itemsize)
    except FileNotFoundError:
        return None
    if len(raw) < HEADER.itemsize:
        return False
    return bool(np.frombuffer(raw, HEADER)["clean"][0])
