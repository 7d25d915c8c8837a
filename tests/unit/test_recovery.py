"""Crash recovery in pure code: drop the FTL without closing, tear pages, reopen."""
import os

import numpy as np
import pytest

from csdemu.drive.flash import FlashNamespace
from csdemu.drive.flash.checkpoint import CKPT_NAME, JOURNAL_NAME, load_checkpoint
from csdemu.drive.flash.files import DataDirError
from tests.naive_ftl import DictFTL, Host, blob, profile, tmp_path  # noqa: F401  (tmp_path: tmpfs data dirs)
from nvme_cmds.status import Status


@pytest.fixture(autouse=True, params=["one scan chunk", "a scan chunk per line"])
def scan_chunks(request, monkeypatch):
    """Recovery reads the OOB records a chunk of lines at a time: run each
    test with the whole (small) array in one chunk and with one line per chunk."""
    if request.param != "one scan chunk":
        monkeypatch.setattr("csdemu.drive.flash.oob.SCAN_CHUNK_PAGES", 1)


def crash(ns: FlashNamespace) -> None:
    """Lose every in-memory structure, as kill -9 would: no checkpoint, no
    journal commit. What was written to the mapped files stays (page cache)."""
    ns.ftl.nand.close()


def reopen(d, **kw) -> FlashNamespace:
    return FlashNamespace.open(1, d, **kw)


def tear(ns: FlashNamespace, lba: int, rng) -> int:
    """Corrupt the second half of the page currently holding `lba`."""
    ppn = int(ns.ftl.l2p[lba])
    with open(ns.ftl.nand.dir / "nand.data", "r+b") as f:
        f.seek(ns.ftl.nand.page_offset(ppn) + 2048)
        f.write(rng.integers(0, 256, 2048, dtype=np.uint8).tobytes())
    return ppn


def check(host, model, lbas):
    for lba in lbas:
        r = host.read(lba, 1)
        assert r.status == Status.SUCCESS
        assert bytes(r.data) == model.read(lba, 1), f"LBA {lba}"


@pytest.mark.parametrize("ckpt_every", [None, 64])
def test_crash_keeps_flushed_data_and_never_returns_torn_pages(tmp_path, ckpt_every):
    rng = np.random.default_rng(7)
    ns = FlashNamespace(1, profile(), tmp_path, sync_before_erase=True,
                        checkpoint_every_pages=ckpt_every)
    host, model = Host(ns), DictFTL(ns.nlbas, ns.lba_size)
    n = ns.nlbas
    version = 0
    # enough traffic for GC, with flushes (and so checkpoints when ckpt_every is set)
    for i in range(2 * n // 8):
        lba = int(rng.integers(0, n - 8))
        host.write(lba, blob(lba, 8, version))
        model.write(lba, blob(lba, 8, version))
        version += 1
        if i % 50 == 0:
            host.flush()
            model.flush()
    host.trim([(0, 16)])
    model.trim(0, 16)
    host.flush()
    model.flush()
    assert ns.stats()["gc_runs"] > 0
    flushed = dict(model.data)
    # unflushed work: overwrites (two of them will be torn), a trim, fresh LBAs
    hot = [int(x) for x in rng.choice(np.arange(20, n), 12, replace=False)]
    for j, lba in enumerate(hot):
        host.write(lba, blob(lba, 1, 10_000 + j))
        model.write(lba, blob(lba, 1, 10_000 + j))
    host.trim([(100, 4)])
    model.trim(100, 4)                   # not flushed: may come back after the crash
    torn = hot[:2]
    torn_ppns = [tear(ns, lba, rng) for lba in torn]
    crash(ns)
    model.crash()

    ns = reopen(tmp_path)
    host.ns = ns
    rec = ns.ftl.recovery
    assert rec.torn == 2 and rec.scanned >= 12
    if ckpt_every:
        assert rec.checkpoint_seq > 0
    for ppn in torn_ppns:
        assert ppn not in set(ns.ftl.l2p.tolist())       # never mapped again
    # a torn LBA falls back to its last intact (here: flushed) version
    for lba in torn:
        model.data[lba] = flushed.get(lba, bytes(4096))
        assert bytes(host.read(lba, 1).data) == model.read(lba, 1)
    # every flushed LBA that was not rewritten since reads back exactly
    check(host, model, [x for x in range(n) if x not in hot])
    check(host, model, hot)
    s = ns.stats()
    assert s["valid_pages"] == s["mapped_lpns"]
    # the drive keeps working after recovery, through more GC
    for i in range(n // 4):
        lba = int(rng.integers(0, n - 4))
        host.write(lba, blob(lba, 4, 50_000 + i))
        model.write(lba, blob(lba, 4, 50_000 + i))
    check(host, model, range(0, n, 3))
    ns.close()


def test_unflushed_trim_lost_flushed_trim_kept(tmp_path):
    ns = FlashNamespace(1, profile(), tmp_path)
    host = Host(ns)
    host.write(0, blob(0, 32, 1))
    host.flush()
    host.trim([(0, 4)])
    host.flush()                                  # durable
    host.trim([(8, 4)])                           # lost in the crash
    host.zeroes(16, 2)                            # lost too (no FUA, no flush)
    crash(ns)
    ns = reopen(tmp_path)
    host.ns = ns
    got = bytes(host.read(0, 32).data)
    exp = bytearray(blob(0, 32, 1))
    exp[0:4 * 4096] = bytes(4 * 4096)
    assert got == bytes(exp)
    ns.close()


def test_clean_close_checkpoint_and_reopen(tmp_path):
    ns = FlashNamespace(1, profile(), tmp_path)
    host, model = Host(ns), DictFTL(ns.nlbas, ns.lba_size)
    for i in range(0, 200, 8):
        host.write(i, blob(i, 8, 3))
        model.write(i, blob(i, 8, 3))
    host.trim([(40, 8)])
    model.trim(40, 8)
    ns.close()
    l2p, seq, clean = load_checkpoint(tmp_path, ns.ftl.nlpns)
    assert clean and seq > 0 and (l2p >= 0).sum() == 192
    ns = reopen(tmp_path)
    assert ns.ftl.recovery.scanned == 0 and ns.ftl.recovery.torn == 0
    check(Host(ns), model, range(0, 210))
    ns.close()
    # a different geometry refuses to open the same data dir
    with pytest.raises(ValueError, match="differ"):
        FlashNamespace(1, profile(geometry__pages_per_block=32), tmp_path)


def test_torn_page_with_no_older_version_reads_zero(tmp_path):
    ns = FlashNamespace(1, profile(), tmp_path)
    host = Host(ns)
    host.write(5, blob(5, 3, 1))                  # never flushed
    tear(ns, 6, np.random.default_rng(0))
    crash(ns)
    ns = reopen(tmp_path)
    host.ns = ns
    assert bytes(host.read(5, 3).data) == blob(5, 1, 1) + bytes(4096) + blob(7, 1, 1)
    ns.close()


def test_torn_oob_record_ignored(tmp_path):
    ns = FlashNamespace(1, profile(), tmp_path)
    host = Host(ns)
    host.write(0, blob(0, 2, 1))
    host.flush()
    host.write(1, blob(1, 1, 2))
    ppn = int(ns.ftl.l2p[1])
    ns.ftl.nand.oob["crc"][ppn] ^= 0xDEADBEEF       # the OOB write was torn instead
    crash(ns)
    ns = reopen(tmp_path)
    assert bytes(Host(ns).read(0, 2).data) == blob(0, 2, 1)
    ns.close()


def test_real_kill_9(tmp_path):
    """A child process writes, flushes, writes more and SIGKILLs itself."""
    import subprocess
    import sys
    import textwrap
    script = textwrap.dedent(f"""
        import os, signal
        from csdemu.drive.flash import FlashNamespace
        from tests.naive_ftl import Host, blob, profile
        ns = FlashNamespace(1, profile(), {str(tmp_path)!r})
        h = Host(ns)
        h.write(0, blob(0, 64, 1))
        h.trim([(10, 2)])
        h.flush()
        h.write(32, blob(32, 8, 2))                                      # not flushed
        h.trim([(50, 2)])                                                # not flushed
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    root = str(__import__("pathlib").Path(__file__).resolve().parents[2])
    p = subprocess.run([sys.executable, "-c", script], cwd=root, timeout=120)
    assert p.returncode == -9
    ns = reopen(tmp_path)
    got = bytes(Host(ns).read(0, 64).data)
    exp = bytearray(blob(0, 64, 1))
    exp[10 * 4096:12 * 4096] = bytes(2 * 4096)
    # writes reach the NAND files at once, so even the unflushed one survives;
    # the unflushed deallocation is lost (allowed: it was volatile)
    exp[32 * 4096:40 * 4096] = blob(32, 8, 2)
    assert got == bytes(exp)
    ns.close()


def test_gc_erase_after_unflushed_trim_never_resurrects_older_data(tmp_path):
    """v1 checkpointed, v2 flushed, then an unflushed trim and GC erases v2's
    line: after a crash the LBA must read v2 or zeros, never v1."""
    from csdemu.drive.flash import gc as gcmod
    ns = FlashNamespace(1, profile(), tmp_path, checkpoint_every_pages=1 << 30)
    ftl, host = ns.ftl, Host(ns)
    ppl = ftl.geom.pages_per_line
    X = 7
    host.write(X, blob(X, 1, 1))
    ftl.checkpoint(clean=False)                       # checkpoint maps X -> v1's page
    line_v1 = int(ftl.l2p[X]) // ppl
    pos = int(ftl.l2p[X]) % ppl + 1                   # finish v1's line with other data
    host.write(100, blob(100, ppl - pos, 0))
    host.write(X, blob(X, 1, 2))
    line_v2 = int(ftl.l2p[X]) // ppl
    assert line_v2 != line_v1
    host.flush()                                      # v2 durable, no new checkpoint
    host.trim([(X, 1)])                               # not flushed
    gcmod.collect(ftl, line_v2, host.now)             # erases v2's page
    assert int(ftl.lines.state[line_v1]) != 0         # v1's page is still there
    crash(ns)
    ns = reopen(tmp_path)
    got = bytes(Host(ns).read(X, 1).data)
    assert got in (blob(X, 1, 2), bytes(4096))
    ns.close()


def damage(path, how: str) -> None:
    """Delete, halve, or flip one byte in the middle of a file."""
    if how == "delete":
        path.unlink()
        return
    size = path.stat().st_size
    if how == "truncate":
        os.truncate(path, size // 2)
        return
    with open(path, "r+b") as f:
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0xFF]))


TRIMMED = [(100, 500), (700, 500)]          # 1,000 LBAs


def written_then_trimmed(d):
    ns = FlashNamespace(1, profile(), d)
    host = Host(ns)
    for lba in range(0, 1400, 8):
        host.write(lba, blob(lba, 8, 1))
    host.trim(TRIMMED)
    host.flush()
    return ns, host


def check_trimmed(ns, extra=()):
    host = Host(ns)
    gone = {x for lo, n in list(TRIMMED) + list(extra) for x in range(lo, lo + n)}
    for lba in range(0, 1400, 7):
        want = bytes(4096) if lba in gone else blob(lba, 1, 1)
        assert bytes(host.read(lba, 1).data) == want, f"LBA {lba}"


@pytest.mark.parametrize("how", ["delete", "truncate", "flip"])
def test_trims_survive_the_loss_of_the_checkpoint(tmp_path, how, caplog):
    ns, host = written_then_trimmed(tmp_path)
    ns.close()                                    # clean: the trims are in the checkpoint
    ns = reopen(tmp_path)
    Host(ns).trim([(1300, 50)])                   # and one since, in the journal only
    Host(ns).flush()
    crash(ns)
    damage(tmp_path / CKPT_NAME, how)
    ns = reopen(tmp_path)
    assert CKPT_NAME in caplog.text               # said so in the log
    check_trimmed(ns, [(1300, 50)])
    ns.close()
    ns = reopen(tmp_path)                         # and the rebuilt state is checkpointed
    assert ns.ftl.recovery.scanned == 0
    check_trimmed(ns, [(1300, 50)])
    ns.close()


@pytest.mark.parametrize("how", ["delete", "truncate", "flip"])
def test_damaged_journal_after_a_crash_refuses_to_start(tmp_path, how):
    ns, host = written_then_trimmed(tmp_path)
    ns.close()
    ns = reopen(tmp_path)
    Host(ns).trim([(1300, 50)])
    Host(ns).flush()
    crash(ns)                                     # the checkpoint lacks that trim
    damage(tmp_path / JOURNAL_NAME, how)
    with pytest.raises(DataDirError, match=f"{JOURNAL_NAME}.*--format"):
        reopen(tmp_path)


@pytest.mark.parametrize("how", ["delete", "truncate", "flip"])
def test_damaged_journal_after_a_clean_shutdown_is_rewritten(tmp_path, how, caplog):
    ns, host = written_then_trimmed(tmp_path)
    ns.close()
    damage(tmp_path / JOURNAL_NAME, how)
    ns = reopen(tmp_path)
    assert JOURNAL_NAME in caplog.text
    check_trimmed(ns)
    ns.close()
    ns = reopen(tmp_path)
    check_trimmed(ns)
    ns.close()


def test_checkpoint_and_journal_both_lost_refuses_to_start(tmp_path):
    ns, host = written_then_trimmed(tmp_path)
    ns.close()
    damage(tmp_path / CKPT_NAME, "flip")
    damage(tmp_path / JOURNAL_NAME, "delete")
    with pytest.raises(DataDirError, match=f"{CKPT_NAME}.*{JOURNAL_NAME}"):
        reopen(tmp_path)
