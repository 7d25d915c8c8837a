"""NAND array and geometry: addressing, program rules, OOB records, erase, views."""
import numpy as np
import pytest

from csdemu.drive.flash.geometry import Geometry, decode_ppa, encode_ppa
from csdemu.drive.flash.nand import BAD_PROGRAM, NandArray, NandError
from tests.naive_ftl import profile, tmp_path  # noqa: F401  (tmp_path: tmpfs data dirs)


@pytest.fixture(params=["instinfer", "nvmevirt-970pro"])
def geom(request):
    over = {"geometry__planes": 2} if request.param == "instinfer" else {"geometry__pages_per_block": 32}
    return Geometry(profile(request.param, **over))


@pytest.fixture
def nand(tmp_path, geom):
    n = NandArray(tmp_path, geom, create=True)
    yield n
    n.close()


def pages(n, seed=0, pb=4096):
    return np.random.default_rng(seed).integers(0, 256, (n, pb), dtype=np.uint8)


def test_ppa_roundtrip(geom):
    ppn = np.arange(geom.total_pages, dtype=np.int64)
    ch, lun, pl, blk, pg = geom.decompose(ppn)
    assert ch.max() == geom.channels - 1 and lun.max() == geom.ways - 1
    assert pl.max() == geom.planes - 1 and blk.max() == geom.blocks_per_plane - 1
    assert pg.max() == geom.pages_per_block - 1
    assert (geom.compose(ch, lun, pl, blk, pg) == ppn).all()
    ppa = geom.ppn_to_ppa(ppn)
    assert len(np.unique(ppa)) == ppn.size
    assert (geom.ppa_to_ppn(ppa) == ppn).all()
    assert decode_ppa(encode_ppa(3, 5, 1, 1000, 77)) == (3, 5, 1, 1000, 77)
    # dense block ids agree with the decomposition and are line-major
    bid = geom.block_of(ppn)
    assert (bid == ((blk * geom.planes + pl) * geom.ways + lun) * geom.channels + ch).all()
    assert (geom.page_in_block(ppn) == pg).all()
    assert (bid // geom.blocks_per_line == geom.line_of(ppn)).all()


def test_channel_first_striping(geom):
    # walking a line visits channel 0..C-1 (one flash page each), then the next LUN
    S = geom.S
    ppn = np.arange(geom.channels * geom.ways * S)
    assert geom.ch_of(ppn).tolist() == [c for _ in range(geom.ways) for c in range(geom.channels)
                                        for _ in range(S)]
    assert (geom.lun_of(ppn) == ppn // (S * geom.channels)).all()


def test_block_pages(geom):
    for blk in (0, geom.blocks_per_line - 1, geom.total_blocks - 1):
        pp = geom.block_pages(blk)
        assert pp.size == geom.pages_per_block
        assert (geom.block_of(pp) == blk).all()
        assert geom.page_in_block(pp).tolist() == list(range(geom.pages_per_block))


def test_program_read_and_oob(nand, geom):
    ppn = np.arange(5, 5 + 2 * geom.S, dtype=np.int64) if geom.S > 1 else np.array([3, 9, 4])
    ppn = np.sort(ppn) if geom.S > 1 else ppn
    data = pages(ppn.size)
    if geom.S == 1:     # 3, 9, 4 are in different blocks: order within a block holds
        nand.program(ppn, data, [10, 11, 12], [1, 2, 3], stream=0)
    else:
        nand.program(ppn, data, np.arange(ppn.size) + 100, np.arange(1, ppn.size + 1), stream=0)
    assert (nand.read(ppn) == data).all()
    assert (nand.data[ppn] == data).all()
    assert nand.verify(ppn).all()
    assert nand.programmed(ppn).all() and not nand.programmed([0, 1, 2]).all()
    rec = nand.oob[ppn[0]]
    assert rec["seq"] == 1 and rec["stream"] == 0 and rec["flags"] == 1


def test_erase_before_program(nand, geom):
    blk_pages = geom.block_pages(0)
    nand.program(blk_pages[:2], pages(2), [0, 1], [1, 2], stream=0)
    with pytest.raises(NandError, match="already programmed"):
        nand.program(blk_pages[1:2], pages(1), [5], [3], stream=0)
    with pytest.raises(NandError, match="already programmed"):    # below the write pointer
        nand.program(blk_pages[:1], pages(1), [5], [3], stream=0)
    nand.erase(0)
    assert nand.erase_count[0] == 1 and not nand.programmed(blk_pages).any()
    nand.program(blk_pages[:1], pages(1, 1), [5], [4], stream=0)
    assert nand.verify(blk_pages[:1]).all()


def test_bad_blocks_refused(nand, geom):
    nand.mark_bad(1, BAD_PROGRAM)
    with pytest.raises(NandError, match="bad block"):
        nand.program(geom.block_pages(1)[:1], pages(1), [0], [1], stream=0)
    with pytest.raises(NandError, match="bad block"):
        nand.erase(1)
    # erasing the line skips the bad block but clears the OOB of the whole line
    good = nand.erase_line(0)
    assert 1 not in good.tolist() and good.size == geom.blocks_per_line - 1
    assert nand.erase_count[1] == 0 and nand.erase_count[0] == 1


def test_torn_page_detected(nand, geom, tmp_path):
    ppn = geom.block_pages(2)[:1]
    nand.program(ppn, pages(1), [7], [1], stream=0)
    nand.data[ppn[0], 100:2000] ^= 0xFF
    assert not nand.verify(ppn).any()


def test_zero_copy_views(nand, geom):
    ppn = np.arange(geom.S * 2, dtype=np.int64)
    nand.program(ppn, pages(ppn.size), ppn, ppn + 1, stream=0)
    v = nand.view(0, ppn.size)
    assert np.shares_memory(v, nand.data) and (v == nand.data[:ppn.size]).all()
    for ch in range(geom.channels):
        cv = nand.channel_view(ch)
        assert np.shares_memory(cv, nand.data)
        # page (ch, lun 0, plane 0, block 0, page 0) through the channel view
        assert (cv[0, 0, 0, 0, 0] == nand.data[geom.compose(ch, 0, 0, 0, 0)]).all()


def test_reopen_rebuilds_write_pointers(tmp_path, geom):
    n = NandArray(tmp_path, geom, create=True)
    bp = geom.block_pages(3)
    n.program(bp[:3], pages(3), [1, 2, 3], [1, 2, 3], stream=0)
    n.close()
    m = NandArray(tmp_path, geom, create=False)
    assert m.wp[3] == 3
    with pytest.raises(NandError):
        m.program(bp[2:3], pages(1), [9], [9], stream=0)
    m.close()


def test_geometry_mismatch_refused(tmp_path, geom):
    NandArray(tmp_path, geom, create=True).close()
    other = Geometry(profile("instinfer", geometry__blocks_per_plane=64))
    with pytest.raises(NandError, match="does not match"):
        NandArray(tmp_path, other, create=False)
