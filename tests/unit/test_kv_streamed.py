"""A dense attend over more KV than the page cache should hold is streamed
(csdemu/drive/kv/engine.py, Engine._dense_streamed): piece by piece, each
piece's pages read ahead and unmapped after. In process, no daemon: the
streamed attend gives the same bits, counters and modeled time as one call
of the kernels, whatever the pieces (whole sequences, or a few kv heads)."""
import numpy as np
import pytest

from csdemu.drive.flash import FlashNamespace
from csdemu.drive.kv import engine as engine_mod
from csdemu.drive.kv.layout import KVShape
from csdemu.drive.kv.manager import KVManager
from csdemu.drive.kv.store import KVStore
from nvme_cmds.kv import KVDtype
from tests.naive_ftl import profile, tmp_path  # noqa: F401  (tmp_path: tmpfs data dirs)

H, G, D, SEQS = 4, 2, 64, 3
LENS = (300, 77, 512)                  # ragged, one with a part-filled DRAM tail


@pytest.fixture
def drive(tmp_path):
    prof = profile(device__kv_pct=80.0)
    ns = FlashNamespace(1, prof, tmp_path)
    mgr = KVManager(ns.ftl, prof)
    pb = ns.ftl.geom.page_bytes
    shape = KVShape(1, G * H, H, D, KVDtype.FLOAT16, pb // (2 * D), False, 1, pb // 2, pb)
    store = KVStore(shape, ns.ftl, 8, mgr.new_stream, mgr.dram)
    rng = np.random.default_rng(3)
    seqs = []
    for sid, n in enumerate(LENS):
        seq = store.get(sid, create=True)
        k, v = (rng.standard_normal((n, H, D)).astype(np.float16).view(np.uint16) for _ in "kv")
        store.append(seq, 0, k, v, 0)
        seqs.append(seq)
    yield store, mgr.engine, seqs
    store.close()
    ns.close()


def _attend(store, engine, seqs):
    q = np.random.default_rng(9).standard_normal((len(seqs), G * H, D)).astype(np.float32)
    out = np.full_like(q, np.nan)
    engine.clock.avail_ns = 0
    engine.ftl.clocks.state[:] = 0
    done = engine.attend(store, seqs, 0, q, out, 1000)
    return out, engine.counters.copy(), done


@pytest.mark.parametrize("piece_heads", [1, 3, H])
def test_streamed_dense_attend_equals_one_call(drive, monkeypatch, piece_heads):
    store, engine, seqs = drive
    want = _attend(store, engine, seqs)
    page = store.shape.page_bytes
    head_bytes = 2 * page * ((max(LENS) + store.shape.tokens_per_page - 1)
                             // store.shape.tokens_per_page)
    monkeypatch.setattr(engine_mod, "stream_bytes", lambda: 0)
    monkeypatch.setattr(engine_mod, "PIECE_BYTES", piece_heads * head_bytes)
    ahead, unmapped = [], []
    data = engine.ftl.nand.data_pages
    monkeypatch.setattr(data, "will_need", lambda p, f=data.will_need: (ahead.append(p), f(p)))
    monkeypatch.setattr(data, "unmap", lambda p, f=data.unmap: (unmapped.append(p), f(p)))
    got = _attend(store, engine, seqs)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[2] == want[2]
    pieces = SEQS * -(-H // piece_heads)
    assert len(ahead) == len(unmapped) == pieces
    # every flash page the attend reads is read ahead once, and unmapped once
    k_tab, v_tab, lens = store.token_tables(seqs, 0)
    full = np.arange(k_tab.shape[2]) < (lens // store.shape.tokens_per_page)[:, None, None]
    flash = np.sort(np.concatenate([k_tab[np.broadcast_to(full, k_tab.shape)],
                                    v_tab[np.broadcast_to(full, v_tab.shape)]]))
    for seen in (ahead, unmapped):
        assert np.array_equal(np.sort(np.concatenate(seen)), flash)


def test_runs_coalesce_adjacent_pages(drive):
    store, engine, _ = drive
    pb = store.shape.page_bytes
    runs = engine.ftl.nand.data_pages.runs(np.array([7, 3, 4, 5, 9, 8, 20]))
    assert runs == [(3 * pb, 3 * pb), (7 * pb, 3 * pb), (20 * pb, pb)]
