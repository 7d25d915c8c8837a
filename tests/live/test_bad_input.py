"""Malformed commands get the right NVMe status and the daemon keeps serving."""
import numpy as np
import pytest

import csdemu
from nvme_cmds.nvm import lba_cdws
from nvme_cmds.opcodes import AdminOpcode, NvmOpcode, VendorAdminOpcode, VendorIoOpcode
from nvme_cmds.spec import SQE_STRUCT
from nvme_cmds.status import Status

SGL = 0x40


def io(dev, opc, **kw):
    return dev.io.execute(opc, **kw).status


def adm(dev, opc, **kw):
    return dev.admin.execute(opc, **kw).status


@pytest.mark.parametrize("opc", [0x03, 0x7E, 0x85, 0x90, 0xFF])
def test_unknown_io_opcode(dev, opc):
    assert io(dev, opc, nsid=1) == Status.INVALID_OPCODE


@pytest.mark.parametrize("opc", [0x03, 0x07, 0x7F, 0xC2, 0xFF])
def test_unknown_admin_opcode(dev, opc):
    assert adm(dev, opc) == Status.INVALID_OPCODE


def test_bad_namespace(dev):
    assert io(dev, NvmOpcode.READ, nsid=99) == Status.INVALID_NAMESPACE
    assert io(dev, NvmOpcode.FLUSH, nsid=0) == Status.INVALID_NAMESPACE
    assert io(dev, VendorIoOpcode.NOP, nsid=77) == Status.INVALID_NAMESPACE
    assert adm(dev, AdminOpcode.IDENTIFY, nsid=42, cdw10=0) == Status.INVALID_NAMESPACE


def test_reserved_bits(dev):
    assert io(dev, VendorIoOpcode.NOP, flags=0x01) == Status.INVALID_FIELD       # fused
    assert io(dev, VendorIoOpcode.NOP, flags=0xC0) == Status.INVALID_FIELD       # PSDT 11b
    assert io(dev, VendorIoOpcode.NOP, flags=0x04) == Status.INVALID_FIELD       # reserved
    assert io(dev, NvmOpcode.READ, nsid=1, cdw12=1 << 20) == Status.INVALID_FIELD
    assert adm(dev, AdminOpcode.IDENTIFY, cdw10=0x55) == Status.INVALID_FIELD     # CNS
    assert adm(dev, AdminOpcode.GET_FEATURES, cdw10=0x77) == Status.INVALID_FIELD  # FID
    assert adm(dev, AdminOpcode.SET_FEATURES, cdw10=(1 << 31) | 6, cdw11=1) == Status.FEATURE_NOT_SAVEABLE
    assert adm(dev, AdminOpcode.GET_LOG_PAGE, cdw10=0x7A | (127 << 16)) == Status.INVALID_LOG_PAGE


def test_bad_data_pointers(dev):
    bs = dev.lba_size()
    junk = np.zeros(bs, np.uint8)
    # PRP to memory never registered, misaligned PRP.
    assert io(dev, NvmOpcode.READ, nsid=1, prp1=junk.ctypes.data) == Status.DATA_TRANSFER_ERROR
    assert io(dev, NvmOpcode.WRITE, nsid=1, prp1=0xdead0000) == Status.DATA_TRANSFER_ERROR
    dev.register(junk)
    try:
        assert io(dev, NvmOpcode.READ, nsid=1, prp1=junk.ctypes.data + 1) == Status.PRP_OFFSET_INVALID
        # Registered, but the transfer runs past the region's end.
        assert io(dev, NvmOpcode.READ, nsid=1, prp1=junk.ctypes.data, cdw12=1) == Status.DATA_TRANSFER_ERROR
    finally:
        dev.unregister(junk)
    # SGL: outside the arena, over the control region, too short, wrong type.
    assert io(dev, NvmOpcode.READ, nsid=1, flags=SGL, prp1=dev.arena.size, prp2=bs) == Status.DATA_TRANSFER_ERROR
    assert io(dev, NvmOpcode.READ, nsid=1, flags=SGL, prp1=0, prp2=bs) == Status.DATA_TRANSFER_ERROR
    assert io(dev, NvmOpcode.READ, nsid=1, flags=SGL, prp1=dev.staging, prp2=bs - 1) == Status.DATA_SGL_LENGTH_INVALID
    assert io(dev, NvmOpcode.READ, nsid=1, flags=SGL, prp1=dev.staging, prp2=bs | (5 << 60)) == Status.SGL_DESCRIPTOR_TYPE_INVALID


def test_dma_map_errors(dev):
    a = np.zeros(8192, np.uint8)
    assert adm(dev, VendorAdminOpcode.DMA_MAP, prp1=0x10, cdw10=4096) == Status.DATA_TRANSFER_ERROR
    assert adm(dev, VendorAdminOpcode.DMA_MAP, prp1=a.ctypes.data, cdw10=0) == Status.DATA_TRANSFER_ERROR
    dev.register(a)
    try:
        assert adm(dev, VendorAdminOpcode.DMA_MAP, prp1=a.ctypes.data + 64, cdw10=64) == Status.INVALID_FIELD
    finally:
        dev.unregister(a)
    assert adm(dev, VendorAdminOpcode.DMA_UNMAP, prp1=a.ctypes.data) == Status.INVALID_FIELD


def test_lba_out_of_range_and_oversized(dev):
    nlbas = dev.identify_ns(1)["nsze"]
    st = dev.passthru(NvmOpcode.READ, 1, cdw10=nlbas - 1, cdw12=1, read_len=2 * dev.lba_size()).status
    assert st == Status.LBA_OUT_OF_RANGE
    st = dev.passthru(NvmOpcode.READ, 1, **lba_cdws(nlbas + 5, 1), read_len=dev.lba_size()).status
    assert st == Status.LBA_OUT_OF_RANGE
    # 65536 blocks is far beyond MDTS.
    assert io(dev, NvmOpcode.READ, nsid=1, flags=SGL, prp1=dev.staging, prp2=1 << 31, cdw12=0xFFFF) == Status.INVALID_FIELD


def test_cid_conflict(dev):
    adm_q = dev.admin
    cid = adm_q.free_cids.pop()          # reserve the CID in the library's bookkeeping
    aer = SQE_STRUCT.pack(AdminOpcode.ASYNC_EVENT_REQUEST, 0, cid, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    adm_q.submit_raw(aer)                # held by the controller: the CID stays in flight
    adm_q.outstanding -= 1               # it never completes; do not count it
    dup = SQE_STRUCT.pack(AdminOpcode.KEEP_ALIVE, 0, cid, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    adm_q.submit_raw(dup)
    (c,) = adm_q.wait_raw(1)
    assert c[4] == cid and csdemu.Completion(*c).status == Status.CID_CONFLICT
    adm_q.free_cids.append(cid)          # (the library reclaims it on reap)


def test_garbage_rings_do_not_hurt_others(daemon):
    good = csdemu.connect(daemon.socket_path)
    bad = csdemu.connect(daemon.socket_path)
    try:
        bs = good.lba_size()
        data = np.arange(bs, dtype=np.uint32).view(np.uint8)[:bs].copy()
        good.write(4242, data)
        rng = np.random.default_rng(7)
        q = bad.create_queue(64)
        # Random SQEs: every one must complete with some status.
        for _ in range(20):
            for _ in range(32):
                q.submit_raw(rng.integers(0, 256, 64, dtype=np.uint8).tobytes(), ring=False)
            q.ring()
            got = q.wait_raw(32)
            assert len(got) == 32
        # Garbage doorbells and a scribbled control page.
        bad.arena.u32[(8 * q.qid) // 4] = 0xFFFFFFF0
        bad.arena.u32[(8 * q.qid + 4) // 4] = 0x7FFFFFFF
        bad.arena.u8[4096:8192] = rng.integers(0, 256, 4096, dtype=np.uint8)
        assert good.nop().ok
        assert np.array_equal(good.read(4242, 1), data)
    finally:
        bad.close()
        good.close()
    with csdemu.connect(daemon.socket_path) as d:
        assert d.nop().ok
