"""The trace ring: modeled busy intervals, written by compiled timing code.

One int64 array ``[1 + capacity, 6]``. Row 0 is the header: recording on,
rows in use, capacity, the tag of the command being charged, rows dropped
because the ring was full. Every other row is one interval: kind, resource,
start ns, end ns, command tag, bytes moved. The timing kernels take the ring
as one more argument and test the header's "on" word once per batch, so a
drive that does not trace pays one predictable branch per operation; the
daemon (csdemu.drive.trace) keeps the rows until it writes its file.

Resources: a LUN is ``ch * ways + lun``, a channel its index, the PCIe link 0,
an engine unit its index (one unit per channel).
"""
from __future__ import annotations

from enum import IntEnum

import numba
import numpy as np

COLS = 6
H_ON, H_N, H_CAP, H_TAG, H_DROPPED = 0, 1, 2, 3, 4


class Kind(IntEnum):
    SENSE = 0        # tR on a LUN (a read's array time)
    PROGRAM = 1      # tPROG on a LUN
    ERASE = 2        # tBERS on a LUN
    CHANNEL = 3      # a transfer on a channel bus
    LINK = 4         # a transfer on the PCIe link (its latency is not link time)
    GEMV = 5         # the stages of an engine unit
    SOFTMAX = 6
    FILTER = 7


def off() -> np.ndarray:
    """The ring of a drive that does not trace: a header saying off, no rows."""
    return np.zeros((1, COLS), np.int64)


def new_ring(rows: int) -> np.ndarray:
    """A ring that records, with room for `rows` intervals (np.zeros: the
    pages are touched only as rows fill)."""
    ring = np.zeros((1 + rows, COLS), np.int64)
    ring[0, H_CAP] = rows
    ring[0, H_ON] = 1
    return ring


@numba.njit(cache=True, nogil=True, inline="always")
def emit(tr, kind, res, start, end, nbytes):
    """Append one interval under the current command's tag (counted as
    dropped when the ring is full)."""
    n = tr[0, 1]
    if n < tr[0, 2]:
        r = n + 1
        tr[r, 0] = kind
        tr[r, 1] = res
        tr[r, 2] = start
        tr[r, 3] = end
        tr[r, 4] = tr[0, 3]
        tr[r, 5] = nbytes
        tr[0, 1] = r
    else:
        tr[0, 4] += 1


def emit_rows(tr: np.ndarray, rows) -> None:
    """`emit` from Python for a few rows at once: (kind, res, start, end, bytes) each."""
    if not tr[0, H_ON]:
        return
    rows = np.asarray(rows, np.int64).reshape(-1, 5)
    n, cap = int(tr[0, H_N]), int(tr[0, H_CAP])
    k = min(rows.shape[0], cap - n)
    if k > 0:
        out = tr[1 + n:1 + n + k]
        out[:, :4] = rows[:k, :4]
        out[:, 4] = tr[0, H_TAG]
        out[:, 5] = rows[:k, 4]
        tr[0, H_N] = n + k
    tr[0, H_DROPPED] += rows.shape[0] - max(k, 0)
