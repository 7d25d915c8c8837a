"""The wire format: layouts, codecs, opcode directions, and the command doc."""
import os

import numpy as np
import pytest

from nvme_cmds import errlog
from nvme_cmds import identify as idf
from nvme_cmds.logs import FLASH_LOG, SMART_LOG
from nvme_cmds.nvm import DSM_RANGE, lba_cdws, nvm_data_lengths
from nvme_cmds.opcodes import (ADMIN_OPCODES, IO_OPCODES, AdminOpcode, DataDirection, NvmOpcode,
                               VendorAdminOpcode, VendorIoOpcode, data_direction, opcode_name)
from nvme_cmds.spec import CQE, CQE_STRUCT, SGL_DESC, SQE, SQE_STRUCT
from nvme_cmds.status import (SCT, Status, decode_status_field, encode_status_field,
                              make_status, split_status, status_name)

from csdemu.drive.error_log import ERROR_LOG_ENTRIES, ErrorLog
from tests import ROOT


def test_sizes():
    assert SQE.itemsize == 64 and CQE.itemsize == 16 and SGL_DESC.itemsize == 16
    assert idf.ID_CTRL.itemsize == 4096 and idf.ID_NS.itemsize == 4096
    assert SMART_LOG.itemsize == 512 and FLASH_LOG.itemsize == 4096 and DSM_RANGE.itemsize == 16


def test_struct_matches_dtype():
    vals = (0x81, 0x40, 0xBEEF, 7, 2, 3, 0x1122334455667788, 0xAABBCCDD00112233,
            0x0102030405060708, 10, 11, 12, 13, 14, 15)
    raw = SQE_STRUCT.pack(*vals)
    rec = np.frombuffer(raw, SQE)[0]
    assert [int(rec[n]) for n in SQE.names] == list(vals)
    cq = CQE_STRUCT.pack(1, 2, 3, 4, 5, 6)
    rec = np.frombuffer(cq, CQE)[0]
    assert [int(rec[n]) for n in CQE.names] == [1, 2, 3, 4, 5, 6]


def test_data_direction_of_every_opcode():
    assert data_direction(NvmOpcode.WRITE) == DataDirection.HOST_TO_CTRL
    assert data_direction(NvmOpcode.READ) == DataDirection.CTRL_TO_HOST
    assert data_direction(VendorIoOpcode.KV_APPEND) == DataDirection.HOST_TO_CTRL
    assert data_direction(VendorIoOpcode.KV_READ) == DataDirection.CTRL_TO_HOST
    assert data_direction(VendorIoOpcode.ATTEND) == DataDirection.BIDIRECTIONAL
    assert data_direction(VendorIoOpcode.RECLAIM) == DataDirection.NONE
    assert data_direction(VendorAdminOpcode.CREATE_KV_NAMESPACE) == DataDirection.HOST_TO_CTRL
    assert all(0xC0 <= o for o in VendorAdminOpcode)
    assert all(0x80 <= o for o in VendorIoOpcode)
    assert opcode_name(0x7F, admin=False) == "UNKNOWN_7Fh"
    assert len(ADMIN_OPCODES) and len(IO_OPCODES)


@pytest.mark.parametrize("status", list(Status))
def test_status_field_roundtrip(status):
    for phase in (0, 1):
        field = encode_status_field(status, phase)
        assert decode_status_field(field) == (status, phase)
        assert bool(field & 0x8000) == (status != 0)     # DNR on errors
    sct, sc = split_status(status)
    assert make_status(sct, sc) == status
    assert status_name(status) == status.name


def test_status_types():
    assert split_status(Status.UNRECOVERED_READ_ERROR) == (SCT.MEDIA, 0x81)
    assert split_status(Status.INVALID_QID) == (SCT.COMMAND_SPECIFIC, 0x01)
    assert split_status(Status.LBA_OUT_OF_RANGE) == (SCT.GENERIC, 0x80)
    assert status_name(make_status(7, 0x42)) == "SCT7h_SC42h"


def test_lba_fields():
    c = lba_cdws((5 << 32) | 9, 8, fua=True)
    assert c == {"cdw10": 9, "cdw11": 5, "cdw12": 7 | (1 << 30)}
    assert nvm_data_lengths(NvmOpcode.WRITE, 0, 7, 4096) == (8 * 4096, 0)
    assert nvm_data_lengths(NvmOpcode.READ, 0, 0, 512) == (0, 512)
    assert nvm_data_lengths(NvmOpcode.DATASET_MANAGEMENT, 3, 0, 4096) == (64, 0)


def test_commands_doc_is_generated_from_the_code():
    from nvme_cmds.doc import commands_markdown
    with open(os.path.join(ROOT, "docs", "commands.md")) as f:
        assert f.read() == commands_markdown(), "regenerate: python -m nvme_cmds.doc > docs/commands.md"


def test_every_opcode_has_its_fields_documented():
    from nvme_cmds.doc import FIELDS
    for queue, enums in (("admin", (AdminOpcode, VendorAdminOpcode)),
                         ("io", (NvmOpcode, VendorIoOpcode))):
        for enum in enums:
            for op in enum:
                assert FIELDS.get((queue, op)), f"{queue} {op.name} has no field description"


def test_error_log_entry_layout():
    e = errlog.ERROR_LOG_ENTRY           # NVMe 2.0 Figure 206
    assert e.itemsize == 64
    assert [e.fields[n][1] for n in ("error_count", "sqid", "cid", "status", "param_loc", "lba",
                                     "nsid", "vs_info", "trtype", "csi")] == [0, 8, 10, 12, 14, 16,
                                                                             24, 28, 29, 32]
    assert idf.ID_CTRL.fields["elpe"][1] == 262 and idf.ID_CTRL.fields["lpa"][1] == 261
    assert errlog.cdw_location(10, 25) == 43 | (1 << 8)
    assert errlog.split_location(errlog.cdw_location(14)) == (56, 0)
    assert errlog.split_location(errlog.NO_LOCATION) is None
    with pytest.raises(ValueError):
        errlog.location(64)
    st = errlog.ErrorStatus(Status.INVALID_FIELD, 40, 7)
    assert st == Status.INVALID_FIELD and (st.loc, st.info) == (40, 7)
    assert decode_status_field(encode_status_field(st, 1)) == (Status.INVALID_FIELD, 1)


def test_error_log_keeps_the_newest_entries_first():
    log = ErrorLog()
    for cid in range(ERROR_LOG_ENTRIES + 5):
        log.add(1, cid, errlog.ErrorStatus(Status.INVALID_FIELD, 40, (1 << 32) | cid), 2)
    log.add(0, 7, Status.INVALID_OPCODE, 0)
    recs = errlog.entries(log.page().tobytes())
    assert len(recs) == ERROR_LOG_ENTRIES
    assert int(recs[0]["error_count"]) == ERROR_LOG_ENTRIES + 6
    assert (int(recs[0]["sqid"]), int(recs[0]["cid"]), int(recs[0]["param_loc"])) == (0, 7, 0xFFFF)
    assert decode_status_field(int(recs[0]["status"]))[0] == Status.INVALID_OPCODE
    r = recs[1]
    assert (int(r["cid"]), int(r["param_loc"]), int(r["nsid"])) == (ERROR_LOG_ENTRIES + 4, 40, 2)
    assert int(r["csi"]) == (1 << 32) | (ERROR_LOG_ENTRIES + 4)
