"""The OOB (spare area) record every programmed page carries, and reading
the records in bulk.

A record is the page's logical address (or a stream's key), the global
write sequence number, a CRC32 and the stream id (nand.py programs and
checks them, recovery.py rebuilds the L2P from them). An all-zero record
means erased. `record_chunks` reads nand.oob a bounded chunk at a time with
pread and skips holes, so a scan's memory does not grow with the drive
(reading through the mapping would also allocate holes on tmpfs).
"""
from __future__ import annotations

import os

import numpy as np

from csdemu.drive.flash.files import DataDirError

OOB_DTYPE = np.dtype([("lpn", "<i8"),       # logical page (or a stream's key)
                      ("seq", "<u8"),       # global write sequence number, >= 1
                      ("crc", "<u4"),       # zlib.crc32 of lpn, seq, stream and the data
                      ("stream", "<u2"),    # allocation stream (0 host, 1 GC, >= 2 user)
                      ("flags", "<u2")])    # OOB_PRESENT | OOB_UNCORRECTABLE
assert OOB_DTYPE.itemsize == 24


OOB_PRESENT = 1
# GC copied this page from one whose CRC had failed: the copy keeps failing,
# as a real drive carries an uncorrectable mark along rather than the bad data
# under a fresh, valid ECC.
OOB_UNCORRECTABLE = 2
# A crash tore this page's program (recovery found it failing its CRC and
# newer than the last Flush): it holds nothing, its line stays occupied, and
# no later recovery may take it for a page a later Flush made durable.
OOB_TORN = 4
OOB_KNOWN_FLAGS = OOB_PRESENT | OOB_UNCORRECTABLE | OOB_TORN
OOB_KNOWN_FLAGS = OOB_PRESENT | OOB_UNCORRECTABLE | OOB_TORN
_PREAD_CHUNK = 64 << 20        # bytes per pread (Linux caps one read at ~2 GiB)
# Records per chunk of a scan at open (12 MiB of them): the scan's memory
# stays this, whatever the drive's size.
SCAN_CHUNK_PAGES = 1 << 19


def records_i64(records: np.ndarray) -> np.ndarray:
    """OOB records as (n, 3) int64: lpn, seq, crc | stream << 32 | flags << 48."""
    return records.view(np.int64).reshape(-1, 3)


def read_records(fd: int, p0: int, n: int, where) -> np.ndarray:
    """A copy of the records of PPNs p0 .. p0+n-1 from the OOB file `fd`."""
    ob = OOB_DTYPE.itemsize
    out = np.empty(n, OOB_DTYPE)
    view, done = memoryview(out).cast("B"), 0
    while done < n * ob:
        k = os.preadv(fd, [view[done:done + _PREAD_CHUNK]], p0 * ob + done)
        if k <= 0:
            raise DataDirError(f"{where}: short read at byte {p0 * ob + done}")
        done += k
    return out


def record_chunks(fd: int, geom, where, chunk_pages: int | None = None):
    """Yield (first PPN, copy of its records) over the whole array, in
    chunks of whole lines of about `chunk_pages` (SCAN_CHUNK_PAGES); a chunk
    that is a hole in the file (never programmed) is all erased and skipped."""
    ppl, ob = geom.pages_per_line, OOB_DTYPE.itemsize
    step = max(1, (chunk_pages or SCAN_CHUNK_PAGES) // ppl) * ppl
    total = geom.total_pages
    for p0 in range(0, total, step):
        n = min(step, total - p0)
        try:
            if os.lseek(fd, p0 * ob, os.SEEK_DATA) >= (p0 + n) * ob:
                continue
        except OSError:             # ENXIO: nothing but holes from here on
            return
        yield p0, read_records(fd, p0, n, where)
