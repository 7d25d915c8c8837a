"""Checkpoints of the L2P table and the journal of deallocations.

checkpoint.bin   64-byte header + the L2P (int64 PPN per logical page, -1 =
                 unmapped) as of write sequence number `seq`. Written to a
                 temporary file, fsync'ed, then renamed over the old one, so
                 a crash leaves either the old or the new checkpoint, never a
                 mix. The header carries a CRC32 of the table.
trim.journal     append-only records (seq, first lpn, count) of deallocations
                 (DSM deallocate, Write Zeroes) made since the checkpoint.
                 Programs need no journal: their OOB records are the log.

Recovery (recovery.py) = checkpoint + OOB records with seq > checkpoint seq +
journal records with seq > checkpoint seq.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

CKPT_NAME = "checkpoint.bin"
JOURNAL_NAME = "trim.journal"
MAGIC = 0x54504B43_4D454443        # "CDEMCKPT" little-endian-ish tag
VERSION = 1

HEADER = np.dtype([("magic", "<u8"), ("version", "<u4"), ("clean", "<u4"),
                   ("seq", "<u8"), ("nlpns", "<u8"), ("crc", "<u4"),
                   ("_pad", "u1", (28,))])
assert HEADER.itemsize == 64

TRIM_REC = np.dtype([("seq", "<u8"), ("lpn", "<u8"), ("count", "<u8")])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(data_dir, l2p: np.ndarray, seq: int, clean: bool) -> None:
    d = Path(data_dir)
    hdr = np.zeros(1, HEADER)
    hdr["magic"], hdr["version"], hdr["clean"] = MAGIC, VERSION, int(clean)
    hdr["seq"], hdr["nlpns"] = seq, l2p.size
    body = np.ascontiguousarray(l2p, dtype="<i8")
    hdr["crc"] = zlib.crc32(body)
    tmp = d / (CKPT_NAME + ".tmp")
    with open(tmp, "wb") as f:
        f.write(hdr.tobytes())
        f.write(memoryview(body).cast("B"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, d / CKPT_NAME)
    _fsync_dir(d)


def load_checkpoint(data_dir, nlpns: int):
    """-> (l2p, seq, clean) or None if absent/corrupt/of another size."""
    p = Path(data_dir) / CKPT_NAME
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return None
    if len(raw) != HEADER.itemsize + 8 * nlpns:
        return None
    hdr = np.frombuffer(raw, HEADER, count=1)[0]
    if int(hdr["magic"]) != MAGIC or int(hdr["version"]) != VERSION or int(hdr["nlpns"]) != nlpns:
        return None
    body = np.frombuffer(raw, "<i8", offset=HEADER.itemsize).copy()
    if zlib.crc32(body) != int(hdr["crc"]):
        return None
    return body, int(hdr["seq"]), bool(hdr["clean"])


def mark_unclean(data_dir) -> None:
    """Clear the clean flag in place (done right after opening)."""
    p = Path(data_dir) / CKPT_NAME
    if not p.exists():
        return
    with open(p, "r+b") as f:
        hdr = np.frombuffer(f.read(HEADER.itemsize), HEADER).copy()
        if hdr["clean"][0]:
            hdr["clean"] = 0
            f.seek(0)
            f.write(hdr.tobytes())
            f.flush()
            os.fsync(f.fileno())


class TrimJournal:
    """Deallocation records, buffered in memory until `commit()`."""

    def __init__(self, data_dir):
        self.path = Path(data_dir) / JOURNAL_NAME
        self.pending: list[tuple[int, int, int]] = []
        self.path.touch(exist_ok=True)

    def add(self, seq: int, lpn: int, count: int) -> None:
        self.pending.append((seq, lpn, count))

    def commit(self, sync: bool = True) -> None:
        if not self.pending:
            return
        rec = np.array(self.pending, dtype=TRIM_REC)
        with open(self.path, "ab") as f:
            f.write(rec.tobytes())
            f.flush()
            if sync:
                os.fsync(f.fileno())
        self.pending.clear()

    def records(self) -> np.ndarray:
        raw = self.path.read_bytes()
        n = len(raw) // TRIM_REC.itemsize          # a torn tail record is dropped
        return np.frombuffer(raw[:n * TRIM_REC.itemsize], TRIM_REC).copy()

    def truncate(self) -> None:
        """After a checkpoint: every committed record is now redundant."""
        with open(self.path, "wb") as f:
            f.flush()
            os.fsync(f.fileno())


def shut_down_cleanly(data_dir) -> bool | None:
    """Whether the last run closed the drive cleanly (None: never formatted)."""
    p = Path(data_dir) / CKPT_NAME
    try:
        with open(p, "rb") as f:
            hdr = np.frombuffer(f.read(HEADER.itemsize), HEADER)
    except FileNotFoundError:
        return None
    return bool(hdr.size and hdr["clean"][0])
