"""Error Information log page (Get Log Page LID 01h, NVMe 2.0 Figure 206).

After a command fails, the host may read this page to learn where the
command was wrong: each 64-byte entry names the failed command (SQ id, CID,
status) and, in Parameter Error Location, the byte and bit of the command
(the SQE) holding the bad field. Entries come newest first; an entry whose
error count is 0 is empty.

csdemu keeps one such log per client (each client is a controller of its
own), so one client never sees another's commands.
"""
import numpy as np

from nvme_cmds.opcodes import AdminOpcode as _A
from nvme_cmds.opcodes import NvmOpcode as _N
from nvme_cmds.status import Status as _S

ERROR_LOG_ENTRY = np.dtype({
    "names": ["error_count", "sqid", "cid", "status", "param_loc", "lba", "nsid",
              "vs_info", "trtype", "csi", "trtype_info"],
    "formats": ["<u8", "<u2", "<u2", "<u2", "<u2", "<u8", "<u4", "u1", "u1", "<u8", "<u2"],
    "offsets": [0, 8, 10, 12, 14, 16, 24, 28, 29, 32, 40],
    "itemsize": 64,
})
assert ERROR_LOG_ENTRY.itemsize == 64 and ERROR_LOG_ENTRY.fields["csi"][1] == 32

# Parameter Error Location: bits 7:0 the byte of the SQE, bits 10:8 the bit
# of that byte where the bad field starts; FFFFh when no field is to blame.
NO_LOCATION = 0xFFFF

# Byte offsets in the SQE of the fields a location can name (spec.SQE).
SQE_NSID, SQE_MPTR, SQE_DPTR = 4, 16, 24
SQE_CDW = {10: 40, 11: 44, 12: 48, 13: 52, 14: 56, 15: 60}


def location(byte: int, bit: int = 0) -> int:
    if not (0 <= byte < 64 and 0 <= bit < 8):
        raise ValueError(f"parameter error location byte {byte} bit {bit} is outside the 64-byte SQE")
    return byte | (bit << 8)


def cdw_location(cdw: int, first_bit: int = 0) -> int:
    """The location of a field starting at bit `first_bit` of CDW`cdw`."""
    return location(SQE_CDW[cdw] + first_bit // 8, first_bit % 8)


def split_location(loc: int) -> tuple[int, int] | None:
    """-> (byte, bit), or None for NO_LOCATION."""
    if loc == NO_LOCATION:
        return None
    return loc & 0xFF, (loc >> 8) & 0x7


class ErrorStatus(int):
    """A failing status that also says where the command was wrong: `loc`
    (a Parameter Error Location) and `info` (the Command Specific
    Information of its log entry). It is an int equal to the status, so it
    travels wherever a status does; the controller logs the two extras."""

    def __new__(cls, status: int, loc: int = NO_LOCATION, info: int = 0):
        self = int.__new__(cls, int(status))
        self.loc, self.info = loc, info
        return self

    def __repr__(self):
        return f"ErrorStatus({int(self):#x}, loc={self.loc:#x}, info={self.info:#x})"


def entries(raw: bytes) -> np.ndarray:
    """The non-empty entries of a page read back (newest first)."""
    n = len(raw) // ERROR_LOG_ENTRY.itemsize
    recs = np.frombuffer(raw, ERROR_LOG_ENTRY, count=n)
    return recs[recs["error_count"] != 0]


# ------------------------------------------------------------ standard commands
# What a failing status of a standard command points at, when the handler
# did not say (an ErrorStatus carries its own location): the field the
# status is about, for the opcodes where that field is certain.

_OPCODE, _CID = 0, 2
_LBA_OPS = {int(_N.READ), int(_N.WRITE), int(_N.WRITE_ZEROES)}
_QUEUE_OPS = (_A.CREATE_IO_SQ, _A.CREATE_IO_CQ, _A.DELETE_IO_SQ, _A.DELETE_IO_CQ)
#: (status, admin opcode) -> (location, the field's name): only where that
#: status of that command can mean one field alone
_ADMIN_FIELDS = {
    **{(_S.INVALID_QID, op): ((40, 0), "QID (CDW10[15:0])") for op in _QUEUE_OPS},
    **{(_S.INVALID_QUEUE_SIZE, op): ((42, 0), "QSIZE (CDW10[31:16])")
       for op in (_A.CREATE_IO_SQ, _A.CREATE_IO_CQ)},
    (_S.INVALID_QUEUE_DELETION, _A.DELETE_IO_CQ): ((40, 0), "QID (CDW10[15:0])"),
    (_S.INVALID_CQ, _A.CREATE_IO_SQ): ((46, 0), "CQID (CDW11[31:16])"),
    (_S.INVALID_QID, _A.ABORT): ((40, 0), "SQID (CDW10[15:0])"),
    (_S.INVALID_LOG_PAGE, _A.GET_LOG_PAGE): ((40, 0), "LID (CDW10[7:0])"),
    (_S.INVALID_FIELD, _A.GET_FEATURES): ((40, 0), "FID (CDW10[7:0])"),
    (_S.FEATURE_NOT_CHANGEABLE, _A.SET_FEATURES): ((40, 0), "FID (CDW10[7:0])"),
    (_S.FEATURE_NOT_SAVEABLE, _A.SET_FEATURES): ((43, 7), "SV (CDW10[31])"),
    (_S.INVALID_FIELD, _A.IDENTIFY): ((40, 0), "CNS (CDW10[7:0])"),
}
_DATA_STATUSES = (_S.DATA_TRANSFER_ERROR, _S.PRP_OFFSET_INVALID, _S.DATA_SGL_LENGTH_INVALID,
                  _S.SGL_DESCRIPTOR_TYPE_INVALID)


def default_location(status: int, opcode: int, admin: bool) -> int:
    """The Parameter Error Location a failing `status` of a standard command
    implies, or NO_LOCATION when the status alone does not say."""
    s = int(status)
    if s == _S.INVALID_OPCODE:
        return location(_OPCODE)
    if s == _S.CID_CONFLICT:
        return location(_CID)
    if s == _S.INVALID_NAMESPACE:
        return location(SQE_NSID)
    if s in _DATA_STATUSES:
        return location(SQE_DPTR)
    if not admin and opcode in _LBA_OPS and s in (_S.LBA_OUT_OF_RANGE, _S.CAPACITY_EXCEEDED):
        return cdw_location(10)
    known = _ADMIN_FIELDS.get((s, opcode)) if admin else None
    return location(*known[0]) if known else NO_LOCATION


def field_name(opcode: int, loc: int, admin: bool) -> str:
    """A standard command's field at Parameter Error Location `loc` ("" for none)."""
    where = split_location(loc)
    if where is None:
        return ""
    byte = where[0]
    if byte == _OPCODE:
        return "opcode (CDW0[7:0])"
    if byte == _CID:
        return "CID (CDW0[31:16])"
    if byte == SQE_NSID:
        return "NSID"
    if byte == SQE_DPTR:
        return "data pointer (DPTR)"
    if byte == SQE_CDW[10] and not admin and opcode in _LBA_OPS:
        return "SLBA (CDW10-11) and NLB (CDW12[15:0]): past the namespace's last LBA"
    if admin:
        name = next((n for (_, op), (at, n) in _ADMIN_FIELDS.items()
                     if op == opcode and location(*at) == loc), None)
        if name:
            return name
    cdw = next((c for c, b in SQE_CDW.items() if b <= byte < b + 4), None)
    return f"CDW{cdw} byte {byte - SQE_CDW[cdw]} bit {where[1]}" if cdw else f"SQE byte {byte}"
