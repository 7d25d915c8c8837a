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
