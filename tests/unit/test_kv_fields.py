"""KV fields are checked, never truncated; errors say which field; values
that overflow the dtype are refused; device DRAM for group buffers is bounded."""
from types import SimpleNamespace

import numpy as np
import pytest

from csdemu.drive.kv.kv_namespace import KVNamespace
from csdemu.drive.kv.layout import DramBudget, DramFull, DramPool, KVShape
from csdemu.host.kv import seq_id_array, to_storage
from nvme_cmds import errlog
from nvme_cmds.kv import (KV_NS_DESC, AttendMode, KVDtype, KVReason, append_cdws, attend_cdws, csi,
                          describe, read_cdws)
from nvme_cmds.opcodes import VendorAdminOpcode, VendorIoOpcode as Op
from nvme_cmds.status import Status


@pytest.mark.parametrize("call, message", [
    (lambda: append_cdws(0, 1, 65_541), "kv append: tokens 65541 does not fit CDW10[31:16] (0..65535)"),
    (lambda: append_cdws(65_537, 1, 1), "kv append: layer 65537 does not fit CDW10[15:0] (0..65535)"),
    (lambda: append_cdws(0, 1 << 32, 1), "kv append: batch 4294967296 does not fit CDW11 (0..4294967295)"),
    (lambda: attend_cdws(65_536, 1), "attend: layer 65536 does not fit CDW10[15:0]"),
    (lambda: attend_cdws(0, 1, AttendMode.SPARF, 65_544, 8), "attend: r 65544 does not fit CDW12[15:0]"),
    (lambda: attend_cdws(0, 1, AttendMode.SPARF, 8, 1 << 32), "attend: k 4294967296 does not fit CDW13"),
    (lambda: attend_cdws(0, 1, AttendMode.SPARF, 8, 8, 1 << 32), "attend: window 4294967296 does not fit CDW14"),
    (lambda: attend_cdws(0, 1, AttendMode.SPARF, -1, 8), "attend: r -1 does not fit"),
    (lambda: read_cdws(0, 1, 1 << 32, 1), "kv read: start 4294967296 does not fit CDW13"),
    (lambda: read_cdws(0, 1, 0, 1 << 32), "kv read: count 4294967296 does not fit CDW14"),
    (lambda: read_cdws(0, 1 << 64, 0, 1), "kv read: sequence id 18446744073709551616 does not fit"),
    (lambda: seq_id_array([-1]), "sequence ids must be integers in 0..2^64-1"),
])
def test_encoders_refuse_what_does_not_fit(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert message in str(e.value)


def test_sparf_window_has_32_bits_and_fields_land_where_documented():
    c = attend_cdws(3, 2, AttendMode.SPARF, r=8, k=70_000, window=65_540, append=True)
    assert c == {"cdw10": 3 | (1 << 16) | (1 << 24), "cdw11": 2, "cdw12": 8, "cdw13": 70_000,
                 "cdw14": 65_540}
    assert append_cdws(65_535, 7, 65_535) == {"cdw10": 0xFFFF_FFFF, "cdw11": 7}
    assert read_cdws(1, (5 << 32) | 9, 4, 6) == {"cdw10": 1, "cdw11": 9, "cdw12": 5, "cdw13": 4,
                                                 "cdw14": 6}


@pytest.mark.parametrize("dtype, value, message", [
    (KVDtype.FLOAT16, 1e6, "k: 1 values overflow float16 (largest finite 65504)"),
    (KVDtype.FLOAT16, np.inf, "k: 1 values are inf or NaN"),
    (KVDtype.BFLOAT16, 3.4e38, "k: 1 values overflow bfloat16"),
    (KVDtype.BFLOAT16, np.nan, "k: 1 values are inf or NaN"),
    (KVDtype.FLOAT32, 1e39, "k: 1 values overflow float32"),
])
def test_values_beyond_the_dtype_are_refused(dtype, value, message):
    a = np.ones((1, 4, 1, 8), np.float64)
    a[0, 2, 0, 3] = value
    with pytest.raises(ValueError) as e:
        to_storage(a, dtype, "k")
    assert message in str(e.value)


def test_values_in_range_and_raw_bits_are_stored():
    a = np.array([[65504.0, -65504.0, 1e-8, 0.5]])
    assert np.array_equal(to_storage(a, KVDtype.FLOAT16).view(np.float16), a.astype(np.float16))
    bits = np.array([0x7C00, 0x3C00], np.uint16)          # fp16 inf and 1.0, as given
    assert np.array_equal(to_storage(bits, KVDtype.FLOAT16), bits)
    assert to_storage(np.array([3.0e38]), KVDtype.BFLOAT16)[0] != 0x7F80


def _ns(layers=2, head_dim=64, sparse=True, max_seqs=4):
    shape = KVShape(layers, 4, 2, head_dim, KVDtype.FLOAT16, 4096 // (2 * head_dim), sparse,
                    1 if sparse else 0, 2048 if sparse else 0, 4096)
    return KVNamespace(2, shape, SimpleNamespace(max_seqs=max_seqs), None, 0)


@pytest.mark.parametrize("opc, cdw, status, byte, bit", [
    (Op.KV_APPEND, (2, 1, 0, 0, 0, 0), Status.INVALID_FIELD, 40, 0),              # layer
    (Op.KV_APPEND, (0, 1, 0, 0, 0, 0), Status.INVALID_FIELD, 42, 0),              # tokens 0
    (Op.KV_APPEND, (1 << 16, 5, 0, 0, 0, 0), Status.INVALID_FIELD, 44, 0),        # batch > max_seqs
    (Op.KV_READ, (1 << 16, 1, 0, 0, 1, 0), Status.INVALID_FIELD, 42, 0),          # reserved
    (Op.KV_READ, (0, 1, 0, 0, 0, 0), Status.INVALID_FIELD, 56, 0),                # count 0
    (Op.ATTEND, (1 << 25, 1, 0, 0, 0, 0), Status.INVALID_FIELD, 43, 1),           # reserved
    (Op.ATTEND, (2 << 16, 1, 0, 0, 0, 0), Status.INVALID_FIELD, 42, 0),           # mode
    (Op.ATTEND, (0, 1, 8, 0, 0, 0), Status.INVALID_FIELD, 48, 0),                 # r in dense
    (Op.ATTEND, (0, 1, 0, 0, 4, 0), Status.INVALID_FIELD, 56, 0),                 # window in dense
    (Op.ATTEND, (1 << 16, 1, 65_544, 8, 0, 0), Status.INVALID_FIELD, 50, 0),      # r = 65544
    (Op.ATTEND, (1 << 16, 1, 65, 8, 0, 0), Status.INVALID_FIELD, 48, 0),          # r > head_dim
    (Op.RECLAIM, (1, 1, 0, 0, 0, 0), Status.INVALID_FIELD, 40, 0),                # reserved
    (Op.RECLAIM, (0, 0, 0, 0, 0, 0), Status.INVALID_FIELD, 44, 0),                # batch 0
])
def test_the_drive_names_the_bad_field(opc, cdw, status, byte, bit):
    st = _ns().data_lengths(opc, cdw)[0]
    assert st == status
    assert errlog.split_location(st.loc) == (byte, bit)
    assert describe(opc, st.loc, st.info)          # the host can name it


def test_good_fields_pass():
    ns = _ns()
    assert ns.data_lengths(Op.ATTEND, ((1 << 16), 2, 64, 1 << 31, 65_540, 0))[0] == 0
    assert ns.data_lengths(Op.KV_APPEND, ((65_535 << 16) | 1, 4, 0, 0, 0, 0))[0] == 0
    assert _ns(sparse=False).data_lengths(Op.ATTEND, (1 << 16, 1, 8, 8, 0, 0))[0] == Status.INVALID_FIELD


def test_describe_names_field_and_reason():
    loc = errlog.cdw_location(10)
    assert describe(Op.ATTEND, loc, csi(KVReason.NO_TOKENS, 3)) == \
        "layer (CDW10[15:0]), sequence #3: no tokens in this layer"
    mptr = errlog.location(errlog.SQE_MPTR)
    assert describe(Op.KV_APPEND, mptr, csi(KVReason.DRAM_FULL, 1)) == \
        "sequence id #1 (MPTR): the device DRAM budget for KV group buffers is spent"
    off = KV_NS_DESC.fields["head_dim"][1]
    assert describe(VendorAdminOpcode.CREATE_KV_NAMESPACE, errlog.location(errlog.SQE_DPTR),
                    csi(KVReason.RANGE, off), admin=True) == "KV_NS_DESC.head_dim: out of range"
    assert describe(Op.ATTEND, errlog.NO_LOCATION, 0) == ""


def test_dram_pool_stays_within_its_budget():
    slot = 4096
    budget = DramBudget(10 * slot)
    a = DramPool(2048, 1, np.uint16, budget)
    b = DramPool(2048, 1, np.uint16, budget)
    s1 = a.alloc(3)
    s2 = a.alloc(3)                       # doubles to 6
    assert a.nbytes == 6 * slot and budget.used == 6 * slot
    with pytest.raises(DramFull):
        b.alloc(5)                        # only 4 slots left
    assert budget.used == 6 * slot and b.nbytes == 0       # a refusal takes nothing
    t = b.alloc(4)
    assert budget.used == budget.limit
    a.release(s1)
    assert a.nbytes == 6 * slot           # still in use
    a.release(s2)
    assert a.nbytes == 0 and budget.used == 4 * slot       # empty: given back
    b.pages[t] = 7
    assert b.alloc(0).size == 0 and (b.pages[t] == 7).all()
