"""The OOB mapping stays under a budget of resident pages, and
dropping them loses nothing: dirty pages live on in the page cache."""
import numpy as np

from csdemu.drive.flash import FlashNamespace
from csdemu.drive.flash import residency
from tests.naive_ftl import Host, blob, profile, tmp_path  # noqa: F401  (tmp_path: tmpfs data dirs)
from nvme_cmds.status import Status


def test_dropped_mappings_keep_every_page_across_reads_and_a_crash(tmp_path, monkeypatch):
    monkeypatch.setattr(residency, "MAPPED_BUDGET_BYTES", 0)    # drop at every check
    ns = FlashNamespace(1, profile(), tmp_path)
    host = Host(ns)
    rng = np.random.default_rng(3)
    n = ns.nlbas
    written = {}
    for v in range(3 * n // 16):                 # enough for GC: OOB and data read back
        lba = int(rng.integers(0, n - 16))
        host.write(lba, blob(lba, 16, v))
        for i in range(16):
            written[lba + i] = blob(lba + i, 1, v)
        if v % 40 == 0:
            host.flush()
    host.flush()
    assert ns.ftl.nand.mapped.drops > 10 and ns.stats()["gc_runs"] > 0
    for lba, want in written.items():
        r = host.read(lba, 1)
        assert r.status == Status.SUCCESS and bytes(r.data) == want, lba
    ns.ftl.nand.close()                           # a crash after the flush
    ns = FlashNamespace.open(1, tmp_path)
    host = Host(ns)
    assert ns.ftl.recovery.torn == 0
    for lba, want in written.items():
        r = host.read(lba, 1)
        assert r.status == Status.SUCCESS and bytes(r.data) == want, lba
    ns.close()


def test_budget_counts_touches_and_looks_at_the_real_resident_size(tmp_path):
    import mmap
    path = tmp_path / "f"
    path.write_bytes(b"\0" * (8 << 20))
    with open(path, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 8 << 20)
    b = residency.MappedBudget(mm, budget=1 << 20)
    a = np.frombuffer(mm, np.uint8)
    a[::4096] = 7                                   # 8 MiB mapped in, counted as touched
    b.touched(8 << 20)
    assert b.drops == 1 and (a[::4096] == 7).all()  # remapped from the page cache
    b.touched(1)                                    # under the check interval: no look
    assert b.drops == 1
    del a
    mm.close()
