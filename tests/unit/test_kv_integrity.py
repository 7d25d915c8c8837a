"""The attention engine never computes over a KV page whose data fails its
CRC (issue 19, item 8): the attend is an Unrecovered Read Error, counted in
media_errors, as a block read of that page is. In process, no daemon: a
power cycle is what makes a page's CRC be checked again, and a KV namespace
does not outlive its client, so the test forgets the pages' checks itself."""
import numpy as np
import pytest

from csdemu.drive.flash import FlashNamespace
from csdemu.drive.kv.kv_namespace import KVNamespace
from csdemu.drive.kv.layout import KVShape
from csdemu.drive.kv.manager import KVManager
from csdemu.drive.kv.store import KVStore
from csdemu.drive.namespace import Request
from nvme_cmds.kv import KVDtype, append_cdws, attend_cdws
from nvme_cmds.opcodes import VendorIoOpcode as Op
from nvme_cmds.status import Status
from tests.naive_ftl import profile, tmp_path  # noqa: F401  (tmp_path: tmpfs data dirs)

H, D, TOKENS = 2, 64, 96


def _cdw(d: dict) -> tuple:
    return tuple(d.get(f"cdw{i}", 0) for i in range(10, 16))


@pytest.fixture
def kv(tmp_path):
    prof = profile(device__kv_pct=50.0)           # half the lines for KV streams
    ns = FlashNamespace(1, prof, tmp_path)
    mgr = KVManager(ns.ftl, prof)
    pb = ns.ftl.geom.page_bytes
    shape = KVShape(1, 2 * H, H, D, KVDtype.FLOAT16, pb // (2 * D), True, 1, pb // 2, pb)
    store = KVStore(shape, ns.ftl, 4, mgr.new_stream, mgr.dram)
    kvns = KVNamespace(2, shape, store, mgr.engine, 1)
    rng = np.random.default_rng(0)
    k = rng.standard_normal((1, TOKENS, H, D)).astype(np.float16).view(np.uint16)
    ids = np.array([7], np.uint64)
    data = np.concatenate([k.reshape(-1), k.reshape(-1)])
    r = kvns.process_io(Request(Op.KV_APPEND, 2, _cdw(append_cdws(0, 1, TOKENS)), 1_000_000,
                                memoryview(data.view(np.uint8)), 0, 1, False, memoryview(ids.view(np.uint8))))
    assert r.status == 0
    yield ns, kvns, ids
    kvns.close()
    ns.close()


def _attend(kvns, ids, sparse: bool):
    q = np.ones((1, 2 * H, D), np.float32)
    cdw = attend_cdws(0, 1, 1, 8, 16, 4) if sparse else attend_cdws(0, 1)
    return kvns.process_io(Request(Op.ATTEND, 2, _cdw(cdw), 2_000_000_000,
                                   memoryview(q.view(np.uint8)), q.nbytes, 1, False,
                                   memoryview(ids.view(np.uint8))))


@pytest.mark.parametrize("sparse", [False, True])
def test_attend_over_a_corrupt_page_is_an_unrecovered_read_error(kv, sparse):
    ns, kvns, ids = kv
    assert _attend(kvns, ids, sparse).status == 0
    seq = kvns.store.seqs[7]
    ppn = int(seq.pages[0][0, 0, 0])                 # K page 0 of kv head 0: on flash
    nand = ns.ftl.nand
    nand.data[ppn, 100:116] ^= 0xFF                  # media corruption at rest ...
    nand.verified[:] = False                         # ... found after a power cycle
    for b in kvns.store._batches.values():           # and no answer kept from before it
        b.memo.clear()
    r = _attend(kvns, ids, sparse)
    assert r.status == Status.UNRECOVERED_READ_ERROR and r.data is None
    assert ns.ftl.counters["crc_errors"] == 1
    nand.data[ppn, 100:116] ^= 0xFF                  # the data repaired: served again
    for b in kvns.store._batches.values():
        b.memo.clear()
    assert _attend(kvns, ids, sparse).status == 0
