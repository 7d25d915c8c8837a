"""Media integrity in pure code: a page that fails its CRC is never returned
as data, a corrupt OOB record is an error or a counted skip (never another
LBA's data, zeros or a traceback), GC carries corruption along instead of
laundering it, and a write the backing file refuses stores nothing."""
import errno
import os

import numpy as np
import pytest

from csdemu.drive.flash import FlashNamespace
from csdemu.drive.flash import gc as gcmod
from csdemu.drive.flash.oob import OOB_DTYPE
from nvme_cmds.nvm import lba_cdws
from nvme_cmds.status import Status
from tests.naive_ftl import Host, blob, profile, tmp_path  # noqa: F401  (tmp_path: tmpfs data dirs)

N = 64          # LBAs written by every test
LBA = 7         # the one whose page is damaged


@pytest.fixture(autouse=True, params=["one scan chunk", "a scan chunk per line"])
def scan_chunks(request, monkeypatch):
    """Recovery reads the OOB records a chunk of lines at a time: run each
    test with the whole (small) array in one chunk and with one line per chunk."""
    if request.param != "one scan chunk":
        monkeypatch.setattr("csdemu.drive.flash.oob.SCAN_CHUNK_PAGES", 1)


def fresh(d, **kw):
    ns = FlashNamespace(1, profile(), d, **kw)
    h = Host(ns)
    h.write(0, blob(0, N, 1))
    return ns, h


def reopen(d):
    ns = FlashNamespace.open(1, d)
    return ns, Host(ns)


def crash(ns):
    """kill -9: what reached the files stays, nothing else is written."""
    ns.ftl.nand.close()


def flip(path, offset: int, nbytes: int = 1) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(nbytes)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in old))


def others_intact(h, version=1):
    for lba in range(N):
        if lba != LBA:
            r = h.read(lba, 1)
            assert r.status == Status.SUCCESS and bytes(r.data) == blob(lba, 1, version), lba


def test_flipped_data_bytes_are_an_unrecovered_read_error(tmp_path):
    ns, h = fresh(tmp_path)
    ppn = int(ns.ftl.l2p[LBA])
    ns.close()
    flip(tmp_path / "nand.data", ppn * 4096 + 1000, 16)
    ns, h = reopen(tmp_path)
    r = h.read(LBA, 1)
    assert r.status == Status.UNRECOVERED_READ_ERROR and r.data is None
    assert ns.health()["media_errors"] == 1
    assert h.read(0, 16).status == Status.UNRECOVERED_READ_ERROR     # a read spanning it
    assert ns.health()["media_errors"] == 2
    c = lba_cdws(LBA, 1)                                # the one-call path refuses it too
    assert ns.read_into(c["cdw10"], c["cdw11"], c["cdw12"], h.now, np.zeros(4096, np.uint8)) == -1
    others_intact(h)
    ns.close()


@pytest.mark.parametrize("byte", range(OOB_DTYPE.itemsize))
def test_flipped_oob_byte_of_a_checkpointed_page(tmp_path, byte):
    """Every byte of the record (lpn, seq, crc, stream, flags): the drive
    opens, and the LBA reads its own data or fails; never zeros or a
    traceback, and no other LBA changes."""
    ns, h = fresh(tmp_path)
    ppn = int(ns.ftl.l2p[LBA])
    ns.close()
    flip(tmp_path / "nand.oob", ppn * OOB_DTYPE.itemsize + byte)
    ns, h = reopen(tmp_path)
    r = h.read(LBA, 1)
    assert (r.status == Status.UNRECOVERED_READ_ERROR
            or (r.status == Status.SUCCESS and bytes(r.data) == blob(LBA, 1, 1)))
    others_intact(h)
    h.write(100, blob(100, 8, 2))                       # and it keeps working
    assert bytes(h.read(100, 8).data) == blob(100, 8, 2)
    ns.close()


@pytest.mark.parametrize("byte", range(OOB_DTYPE.itemsize))
def test_flipped_oob_byte_of_a_page_newer_than_the_checkpoint(tmp_path, byte):
    """Recovery cannot trust such a record: it skips the page with a count
    (the LBA keeps its previous version, as for a torn page), or keeps it
    and the read fails. Never a traceback."""
    ns, h = fresh(tmp_path)
    ns.close()
    ns, h = reopen(tmp_path)
    h.write(LBA, blob(LBA, 1, 2))                       # newer than the clean checkpoint
    ppn = int(ns.ftl.l2p[LBA])
    crash(ns)
    flip(tmp_path / "nand.oob", ppn * OOB_DTYPE.itemsize + byte)
    ns, h = reopen(tmp_path)
    r = h.read(LBA, 1)
    rec = ns.ftl.recovery
    if r.status == Status.SUCCESS and bytes(r.data) != blob(LBA, 1, 2):
        assert bytes(r.data) == blob(LBA, 1, 1)
        assert rec.torn + rec.corrupt_records >= 1          # counted and logged
    else:
        assert r.status in (Status.SUCCESS, Status.UNRECOVERED_READ_ERROR)
    others_intact(h)
    ns.close()


def test_corrupt_sequence_number_never_sets_the_next_one(tmp_path):
    ns, h = fresh(tmp_path)
    ppn = int(ns.ftl.l2p[LBA])
    ns.close()
    flip(tmp_path / "nand.oob", ppn * OOB_DTYPE.itemsize + 8 + 7)      # seq's top byte
    ns, h = reopen(tmp_path)
    assert ns.ftl.seq < 1 << 32
    ns.close()


def test_gc_carries_a_failing_page_as_uncorrectable(tmp_path):
    ns, h = fresh(tmp_path)
    ppn = int(ns.ftl.l2p[LBA])
    ns.close()
    flip(tmp_path / "nand.data", ppn * 4096 + 10, 16)
    ns, h = reopen(tmp_path)
    ftl = ns.ftl
    line = ppn // ftl.geom.pages_per_line
    gcmod.collect(ftl, line, h.now)                     # relocates LBA's page, erases the line
    assert int(ftl.l2p[LBA]) // ftl.geom.pages_per_line != line
    assert h.read(LBA, 1).status == Status.UNRECOVERED_READ_ERROR
    others_intact(h)
    crash(ns)                                           # the copy is newer than the checkpoint
    ns, h = reopen(tmp_path)
    assert h.read(LBA, 1).status == Status.UNRECOVERED_READ_ERROR
    others_intact(h)
    ns.close()
    ns, h = reopen(tmp_path)                            # and once checkpointed
    assert h.read(LBA, 1).status == Status.UNRECOVERED_READ_ERROR
    ns.close()


@pytest.mark.parametrize("err,status", [(errno.ENOSPC, Status.CAPACITY_EXCEEDED),
                                        (errno.EIO, Status.WRITE_FAULT)])
def test_a_refused_data_write_stores_nothing(tmp_path, monkeypatch, err, status):
    """The backing file takes part of a write, then refuses the rest (a
    full file system returns a short count first): the command fails, and
    neither the running drive nor a restarted one has any of it."""
    ns, h = fresh(tmp_path)
    h.flush()
    real, fd = os.pwrite, ns.ftl.nand._fds[0]
    calls = []

    def pwrite(f, buf, off):
        if f != fd:
            return real(f, buf, off)
        calls.append(off)
        if len(calls) > 1:
            raise OSError(err, os.strerror(err))
        view = memoryview(buf).cast("B")
        return real(f, view[:view.nbytes // 4], off)

    monkeypatch.setattr(os, "pwrite", pwrite)
    r = h.write(0, blob(0, 8, 2))
    monkeypatch.undo()
    assert calls and r.status == status
    assert bytes(h.read(0, 8).data) == blob(0, 8, 1)
    h.write(8, blob(8, 8, 3))                           # room again: writes succeed
    assert bytes(h.read(8, 8).data) == blob(8, 8, 3)
    crash(ns)
    ns, h = reopen(tmp_path)
    assert bytes(h.read(0, 16).data) == blob(0, 8, 1) + blob(8, 8, 3)
    ns.close()


def test_a_flushed_page_that_fails_after_a_crash_is_an_error_not_its_old_version(tmp_path):
    """No crash tears a page a Flush made durable: if it fails its CRC after
    a kill -9 it is corrupt, and its LBA fails to read rather than going
    back to the version before it."""
    ns, h = fresh(tmp_path, checkpoint_every_pages=1 << 30)
    ns.close()
    ns, h = reopen(tmp_path)
    h.write(LBA, blob(LBA, 1, 2))
    h.flush()                                           # durable; no checkpoint since
    ppn = int(ns.ftl.l2p[LBA])
    crash(ns)
    flip(tmp_path / "nand.data", ppn * 4096 + 2000, 16)
    ns, h = reopen(tmp_path)
    assert ns.ftl.recovery.suspect_kept == 1 and ns.ftl.recovery.torn == 0
    assert h.read(LBA, 1).status == Status.UNRECOVERED_READ_ERROR
    others_intact(h)
    ns.close()


def test_a_torn_pages_sequence_number_is_never_given_again(tmp_path):
    """A page torn by a crash keeps its record until its line is erased.
    Recovery must number new programs past it: reusing its number let the
    next Flush cover it, and a later crash took the torn page for a durable
    one (kept, its LBA failing to read). Found by the crash torture."""
    ns, h = fresh(tmp_path, checkpoint_every_pages=1 << 30)
    h.flush()
    h.write(LBA, blob(LBA, 1, 2))                        # never flushed ...
    ppn = int(ns.ftl.l2p[LBA])
    torn_seq = int(ns.ftl.nand.oob["seq"][ppn])
    crash(ns)
    flip(tmp_path / "nand.data", ppn * 4096 + 100, 16)  # ... and torn by the crash
    ns, h = reopen(tmp_path)
    assert ns.ftl.recovery.torn == 1 and ns.ftl.seq > torn_seq
    assert bytes(h.read(LBA, 1).data) == blob(LBA, 1, 1)
    h.write(N, blob(N, 1, 1))                           # new work, made durable
    h.flush()
    crash(ns)
    ns, h = reopen(tmp_path)
    r = h.read(LBA, 1)
    assert r.status == Status.SUCCESS and bytes(r.data) == blob(LBA, 1, 1)
    others_intact(h)
    ns.close()
