"""Hand-computed schedules for the pure timing model (csdemu.drive.flash.timing)."""
import numpy as np
import pytest

from csdemu.drive.flash.timing import (Clocks, NandTiming, Op, advance, advance_batch,
                                 pcie_transfer, xfer_ns)

TR, TPROG, TBERS = 40_000, 200_000, 2_000_000
XFER = 4096            # 4096 B at 1000 MB/s = 4096 ns


def timing(**kw):
    base = dict(tR_ns=TR, tR_4k_ns=TR, tPROG_ns=TPROG, tBERS_ns=TBERS, channel_mbps=1000,
                channel_xfer_overhead_ns=0, pcie_mbps=0, pcie_latency_ns=0)
    base.update(kw)
    return NandTiming(**base)


@pytest.fixture
def clk():
    return Clocks.create(channels=8, ways=4)


def test_xfer_ns():
    assert xfer_ns(4096, 1000) == 4096
    assert xfer_ns(4096, 1400) == 2926          # 4096 / 1.4 GB/s, rounded
    assert xfer_ns(4096, 0) == 0                # 0 = not modeled


def test_reads_on_eight_channels_overlap(clk):
    done = advance_batch(Op.READ, np.arange(8), np.zeros(8), 0, 4096, clk, timing())
    # every channel senses and transfers in parallel: tR + one transfer
    assert done.tolist() == [TR + XFER] * 8
    assert clk.ch_busy.tolist() == [XFER] * 8


def test_reads_on_one_lun_serialize(clk):
    done = advance_batch(Op.READ, np.zeros(8), np.zeros(8), 0, 4096, clk, timing())
    # the LUN is held through its transfer (NVMeVirt), so each read waits for the last
    assert done.tolist() == [(k + 1) * (TR + XFER) for k in range(8)]


def test_reads_on_one_channel_share_the_bus(clk):
    done = advance_batch(Op.READ, np.zeros(4), np.arange(4), 0, 4096, clk, timing())
    # four LUNs sense together, then the transfers queue on the channel bus
    assert done.tolist() == [TR + (k + 1) * XFER for k in range(4)]


def test_program_blocks_later_read_of_its_lun(clk):
    t = timing()
    p = advance(Op.PROGRAM, 2, 1, 0, 4096, clk, t)
    assert p == XFER + TPROG                    # bus transfer, then tPROG
    r = advance(Op.READ, 2, 1, 1_000, 4096, clk, t)
    assert r == XFER + TPROG + TR + XFER        # waits for the program
    # another LUN on the same channel only waited for the bus (free at XFER)
    r2 = advance(Op.READ, 2, 0, 1_000, 4096, clk, t)
    assert r2 == 1_000 + TR + XFER               # the bus was idle then


def test_erase_uses_only_the_lun(clk):
    t = timing()
    e = advance(Op.ERASE, 0, 0, 0, 0, clk, t)
    assert e == TBERS
    assert clk.ch_avail[0] == 0                 # the bus stayed free
    assert advance(Op.READ, 0, 0, 0, 4096, clk, t) == TBERS + TR + XFER
    assert advance(Op.READ, 0, 1, 0, 4096, clk, t) == TR + XFER


def test_program_waits_for_busy_bus(clk):
    t = timing()
    advance_batch(Op.PROGRAM, np.zeros(3), np.arange(3), 0, 4096, clk, t)
    # three programs on three LUNs: transfers back to back, then tPROG each
    assert clk.lun_avail[0, :3].tolist() == [XFER + TPROG, 2 * XFER + TPROG, 3 * XFER + TPROG]


def test_pcie_interleaved_reads(clk):
    t = timing(pcie_mbps=2000)                  # 4096 B -> 2048 ns on the link
    done = advance_batch(Op.READ, np.arange(8), np.zeros(8), 0, 4096, clk, t, pcie=True)
    assert done.tolist() == [TR + XFER + (k + 1) * 2048 for k in range(8)]
    # a host transfer ready at 0 uses the idle link before those reads arrive
    assert pcie_transfer(0, 4096, clk, t) == 2048
    # one that is ready later queues behind them
    assert pcie_transfer(TR + XFER, 4096, clk, t) == TR + XFER + 9 * 2048


def test_bus_gap_filling_and_floor(clk):
    t = timing()
    # LUN 0 of channel 0 is erasing; a read queued there books the bus at ~2 ms
    advance(Op.ERASE, 0, 0, 0, 0, clk, t)
    late = advance(Op.READ, 0, 0, 0, 4096, clk, t)
    assert late == TBERS + TR + XFER
    # reads on the other LUNs of that channel use the bus long before that
    done = advance_batch(Op.READ, [0, 0, 0], [1, 2, 3], 0, 4096, clk, t)
    assert done.tolist() == [TR + XFER, TR + 2 * XFER, TR + 3 * XFER]
    # history before the floor is forgotten; the booked future is kept
    advance(Op.READ, 0, 1, 100_000, 4096, clk, t, floor_ns=100_000)
    assert clk.iv_n[0] == 2
    assert clk.iv_start[0, 1] == TBERS + TR


def test_bus_overflow_is_conservative():
    clk = Clocks.create(channels=1, ways=1)
    t = timing(tR_ns=1, tR_4k_ns=1)
    # 600 transfers far apart: more intervals than the bus remembers
    starts = np.arange(600) * 100_000
    done = advance_batch(Op.READ, np.zeros(600), np.zeros(600), starts, 4096, clk, t)
    assert (done == starts + 1 + XFER).all()
    assert clk.iv_n[0] <= 256
    # a transfer ready at 0 may no longer slip into the oldest merged gap
    clk.lun_avail[:] = 0
    early = advance(Op.READ, 0, 0, 0, 4096, clk, t)
    assert early >= 1 + XFER


def test_partial_page_read_latency(clk):
    t = timing(tR_4k_ns=30_000)
    assert advance(Op.READ, 0, 0, 0, 4096, clk, t) == 30_000 + XFER
    assert advance(Op.READ, 1, 0, 0, 8192, clk, t) == TR + 2 * XFER


def test_start_times_and_next_idle(clk):
    t = timing()
    done = advance_batch(Op.READ, [0, 1], [0, 0], np.array([100, 5_000]), 4096, clk, t)
    assert done.tolist() == [100 + TR + XFER, 5_000 + TR + XFER]
    assert clk.next_idle_ns() == 5_000 + TR + XFER
    assert clk.lun_busy[0, 0] == TR


def test_column_reads_sense_whole_pages_and_move_only_their_bytes(clk):
    """Per-read transfer sizes (an array) with the sensed size apart: each
    read costs tR on its LUN for the whole page, then only its own bytes on
    the channel (ONFI Change Read Column)."""
    t = timing(tR_4k_ns=30_000)
    # one channel, four LUNs: the senses overlap, the transfers queue
    nb = np.array([512, 1024, 256, 4096])
    done = advance_batch(Op.READ, np.zeros(4), np.arange(4), 0, nb, clk, t, sense_bytes=8192)
    assert done.tolist() == (TR + np.cumsum(nb)).tolist()      # 1000 MB/s: 1 B/ns
    assert clk.ch_busy[0] == nb.sum()
    assert clk.lun_busy[0].tolist() == [TR] * 4                 # an 8 KiB page: full tR
    # the sensed size picks tR: a 4 KiB sense gets tR_4k whatever it moves
    done = advance_batch(Op.READ, [1, 2], [0, 0], 0, [512, 100], clk, t,
                         sense_bytes=np.array([4096, 4096]))
    assert done.tolist() == [30_000 + 512, 30_000 + 100]
    # without sense_bytes a read senses what it moves (as before)
    assert advance(Op.READ, 3, 0, 0, 8192, clk, t) == TR + 8192


def _book_reference(busy, ready, dur):
    """Earliest start >= ready of a `dur`-long transfer that overlaps none of
    `busy` (a list of [start, end) pairs); books it, fusing touching ones."""
    t = ready
    for s, e in sorted(busy):
        if e <= t:
            continue
        if s >= t + dur:
            break
        t = e
    busy.append((t, t + dur))
    busy.sort()
    fused = [busy[0]]
    for s, e in busy[1:]:
        if s == fused[-1][1]:
            fused[-1] = (fused[-1][0], e)
        else:
            fused.append((s, e))
    busy[:] = fused
    return t


@pytest.mark.parametrize("seed", range(6))
def test_bus_booking_matches_a_plain_interval_model(seed):
    """Random transfers on one bus, ready times spread over its busy future
    (front, middle, end, and in gaps that fit or not): every start and the
    remembered intervals equal the plain model's while the bus has slots."""
    from csdemu.drive.flash.bus import BUS_SLOTS, book
    rng = np.random.default_rng(seed)
    iv = np.zeros((2, 1, BUS_SLOTS), np.int64)
    st = np.zeros(1, np.int64)
    busy = []
    for _ in range(150):
        horizon = busy[-1][1] if busy else 0
        ready = int(rng.integers(0, horizon + 2000))
        dur = int(rng.choice([1, 7, 50, 300, 4096]))
        want = _book_reference(busy, ready, dur)
        assert book(iv, st, 0, 0, ready, dur, 0, 0, 0) == want
        n = int(st[0])
        assert n == len(busy) and n < BUS_SLOTS
        assert list(zip(iv[0, 0, :n].tolist(), iv[1, 0, :n].tolist())) == busy
