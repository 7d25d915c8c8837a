"""checkpoint.bin: int32 entries stored inverted, so unmapped runs are holes;
the int64 version-1 files of older drives still load."""
import os
import zlib

import numpy as np
import pytest

from csdemu.drive.flash import checkpoint as ck
from csdemu.drive.flash.checkpoint import (CKPT_NAME, HEADER, MAGIC, L2P_DTYPE, load_checkpoint,
                                           read_checkpoint, save_checkpoint, unmapped_runs)


def table(n, mapped_runs):
    l2p = np.full(n, -1, L2P_DTYPE)
    for lo, hi in mapped_runs:
        l2p[lo:hi] = np.arange(lo, hi) * 3 + 1
    return l2p


def test_roundtrip_and_unmapped_runs_are_holes(tmp_path):
    n = 4 * (1 << 20) + 123                      # four pieces and a tail
    l2p = table(n, [(10, 20), (n - 2, n)])
    l2p[40] = 0                                  # PPN 0 is mapped, not a hole
    save_checkpoint(tmp_path, l2p, 77, clean=True)
    st = os.stat(tmp_path / CKPT_NAME)
    assert st.st_size == HEADER.itemsize + 4 * n
    assert st.st_blocks * 512 < st.st_size // 2  # of five pieces, the first and the 492-byte tail hold data
    got, seq, clean = load_checkpoint(tmp_path, n)
    assert got.dtype == L2P_DTYPE and np.array_equal(got, l2p) and seq == 77 and clean


def test_a_flipped_byte_or_another_size_is_refused(tmp_path):
    l2p = table(1000, [(0, 500)])
    save_checkpoint(tmp_path, l2p, 5, clean=False)
    assert read_checkpoint(tmp_path, 999)[0] is None
    with open(tmp_path / CKPT_NAME, "r+b") as f:
        f.seek(HEADER.itemsize + 4 * 700)        # inside an unmapped run
        f.write(b"\x01")
    got, why = read_checkpoint(tmp_path, 1000)
    assert got is None and "CRC" in why


def test_version_1_int64_checkpoint_loads(tmp_path):
    l2p = table(5000, [(7, 900), (4000, 4100)]).astype("<i8")
    hdr = np.zeros(1, HEADER)
    hdr["magic"], hdr["version"], hdr["clean"], hdr["seq"], hdr["nlpns"] = MAGIC, 1, 1, 9, l2p.size
    hdr["crc"] = zlib.crc32(l2p)
    (tmp_path / CKPT_NAME).write_bytes(hdr.tobytes() + l2p.tobytes())
    got, seq, clean = load_checkpoint(tmp_path, l2p.size)
    assert got.dtype == L2P_DTYPE and np.array_equal(got, l2p) and seq == 9 and clean


@pytest.mark.parametrize("chunk", [1, 3, 8, 1 << 24])
def test_unmapped_runs_across_chunks(monkeypatch, chunk):
    monkeypatch.setattr(ck, "_RUNS_CHUNK", chunk)
    rng = np.random.default_rng(chunk)
    for n in range(0, 40):
        l2p = np.where(rng.random(n) < rng.random(), -1, 5).astype(L2P_DTYPE)
        edges = np.diff(np.concatenate(([0], (l2p < 0).astype(np.int8), [0])))
        lo, hi = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        rec = unmapped_runs(l2p, 3)
        assert np.array_equal(rec["lpn"], lo) and np.array_equal(rec["count"], hi - lo)
        assert (rec["seq"] == 3).all()
