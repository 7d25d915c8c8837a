"""User streams (flash/streams.py): the KV layer's pages on the FTL's flash,
reclaimed a line at a time, within their line budget beside the host."""
import numpy as np

from csdemu.drive.flash import FlashNamespace
from csdemu.drive.flash.lines import FULL, OPEN
from nvme_cmds.status import Status
from tests.naive_ftl import Host, blob, profile, tmp_path  # noqa: F401  (tmp_path: tmpfs data dirs)


def test_streams_reclaim_whole_lines(tmp_path):
    ns = FlashNamespace(1, profile(device__kv_pct=50.0), tmp_path)
    ftl = ns.ftl
    ppl = ftl.geom.pages_per_line
    data = np.zeros((ppl + 10, 4096), np.uint8)
    p2, _ = ftl.stream_write(2, np.arange(ppl + 10), data, 0)
    p3, _ = ftl.stream_write(3, np.arange(5), data[:5], 0)
    lines2 = set((p2 // ppl).tolist())
    assert len(lines2) == 2 and not lines2 & set((p3 // ppl).tolist())
    ok, done = ftl.stream_read(p2[:4], 0)
    assert ok and done > 0 and np.array_equal(ftl.nand.data[p2[:4]], data[:4])
    free0, copied0 = ftl.lines.free_count, ftl.counters["gc_pages_copied"]
    ftl.release_stream(2, 0)
    assert ftl.lines.free_count == free0 + 2
    assert ftl.counters["gc_pages_copied"] == copied0                  # nothing copied
    assert all(ftl.lines.state[x] != FULL for x in lines2)
    assert ftl.lines.valid[p3].all()
    ns.close()


def test_kv_streams_stay_within_their_lines_and_the_host_keeps_its_capacity(tmp_path):
    ns = FlashNamespace(1, profile(device__kv_pct=50.0), tmp_path, sync_before_erase=False)
    ftl = ns.ftl
    ppl = ftl.geom.pages_per_line
    assert ftl.kv_lines == ftl.geom.lines // 2
    page = np.zeros((ppl, 4096), np.uint8)
    streams = [s for s in range(2, 2 + ftl.kv_lines) if ftl.stream_write(s, np.arange(ppl), page, 0)[0] is not None]
    assert len(streams) == ftl.kv_lines                            # one line each, all granted
    assert ftl.stream_write(99, np.arange(1), page[:1], 0)[0] is None   # over budget: refused
    host = Host(ns)
    for v in (0, 1, 2):                                            # the host still fills and rewrites
        for lba in range(0, ns.nlbas, 64):                         # its whole namespace
            n = min(64, ns.nlbas - lba)
            assert host.write(lba, blob(lba, n, v)).status == Status.SUCCESS
    assert ns.stats()["gc_runs"] > 0
    lm = ftl.lines

    def held():       # what kv_held counts, from the line states
        return int((((lm.state == FULL) | (lm.state == OPEN)) & (lm.stream >= 2)).sum())
    assert ftl.kv_held() == held() == ftl.kv_lines
    for s in streams[::2]:
        ftl.release_stream(s, 0)
    ftl.reclaim_empty(0)
    assert ftl.kv_held() == held() == ftl.kv_lines - len(streams[::2])
    has_stream = lm.stream >= 0
    assert np.array_equal(has_stream, (lm.state == OPEN) | (lm.state == FULL))
    ns.close()
