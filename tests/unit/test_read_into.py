"""FlashNamespace.read_into, the controller's one-call Read into the arena,
against process_io on an identical namespace: same data, completion time,
clocks and counters; and what it refuses, it refuses untouched."""
import numpy as np

from csdemu.drive.flash import FlashNamespace
from nvme_cmds.opcodes import NvmOpcode
from nvme_cmds.status import Status
from tests.naive_ftl import Host, blob, profile, rw_cmd, tmp_path  # noqa: F401  (tmp_path: tmpfs data dirs)

R = NvmOpcode.READ


def _read_both(a, b, slba, nlb, t, cdw12_extra=0):
    """The same Read on two identical namespaces, by read_into on `a` (with
    process_io after a refusal, as the controller does) and by process_io
    on `b` -> (read_into's return, a's result, b's result)."""
    req = rw_cmd(R, slba, nlb, t=t, cdw12_extra=cdw12_extra, lba_size=a.lba_size)
    out = np.full(nlb * a.lba_size, 0xEE, np.uint8)
    done = a.read_into(*req.cdw[:3], t, out)
    ra = a.process_io(req) if done < 0 else None
    return done, out, ra, b.process_io(req)


def _same_state(a, b):
    assert a.ftl.counters == b.ftl.counters and a.host == b.host
    assert np.array_equal(a.ftl.clocks.state, b.ftl.clocks.state)


def test_read_into_matches_process_io(tmp_path):
    """The controller's one-call Read gives the data, completion time, clocks
    and counters of the general path, and refuses (doing nothing) whatever
    it does not serve."""
    nss = [FlashNamespace(1, profile(), tmp_path / d) for d in "ab"]
    for ns in nss:
        h = Host(ns)
        for lba in range(0, 256, 8):
            h.write(lba, blob(lba, 8, 1))
        h.write(300, blob(300, 4, 2))              # one page each, not in a run with 256
        Host(ns).trim([(12, 2)])
    a, b = nss
    t = 10_000_000
    served = [(0, 1), (5, 1), (0, 8), (248, 8), (3, 9), (300, 4), (255, 1)]
    for i, (slba, nlb) in enumerate(served):
        done, out, ra, rb = _read_both(a, b, slba, nlb, t + i * 1000, cdw12_extra=(i % 2) << 30)
        assert ra is None and done == rb.done_ns and rb.status == Status.SUCCESS
        assert bytes(out) == bytes(rb.data) == blob(slba, nlb, 1 if slba < 256 else 2)
        _same_state(a, b)
    refused = [(10, 4, 0),                      # LBAs 12-13 trimmed: unmapped
               (1000, 1, 0),                    # never written
               (a.nlbas - 1, 2, 0),             # out of range
               (0, 1, 1 << 26)]                 # reserved bits
    for i, (slba, nlb, extra) in enumerate(refused):
        before = a.ftl.clocks.state.copy()
        done, out, ra, rb = _read_both(a, b, slba, nlb, t + 100_000 + i * 1000, extra)
        assert done == -1 and ra.status == rb.status and ra.done_ns == rb.done_ns
        if rb.status == Status.SUCCESS:
            assert bytes(ra.data) == bytes(rb.data)
        else:
            assert np.array_equal(before, a.ftl.clocks.state)
        _same_state(a, b)
    before = a.ftl.clocks.state.copy()
    assert a.read_into(0, 0, 0, t + 150_000, np.zeros(a.lba_size - 1, np.uint8)) == -1  # short buffer
    assert np.array_equal(before, a.ftl.clocks.state)
    _same_state(a, b)
    for ns in nss:
        ns.set_fault_injection(read_fail_every=2)
    done, _, ra, rb = _read_both(a, b, 0, 1, t + 200_000)
    assert done == -1 and ra.status == rb.status
    for ns in nss:
        ns.close()


def test_read_into_refuses_lbas_smaller_than_a_page(tmp_path):
    ns = FlashNamespace(1, profile(device__lba_size=512), tmp_path)
    Host(ns).write(0, blob(0, 8, 0, 512))
    out = np.zeros(512, np.uint8)
    assert ns.read_into(0, 0, 0, 0, out) == -1 and not out.any()
    ns.close()
