"""Submission and completion queue entry layouts (NVMe Base Specification 2.0, 4.2/4.6).

Both are numpy structured dtypes with explicit offsets so a ring in shared
memory can be viewed as an array of entries. Sizes and key offsets are
asserted at import, the way SPDK's nvme_spec.h asserts its structs.
"""
import numpy as np

# 64-byte submission queue entry, by dword.
SQE = np.dtype({
    "names":   ["opc", "flags", "cid", "nsid", "cdw2", "cdw3", "mptr",
                "prp1", "prp2", "cdw10", "cdw11", "cdw12", "cdw13", "cdw14", "cdw15"],
    "formats": ["u1", "u1", "<u2", "<u4", "<u4", "<u4", "<u8",
                "<u8", "<u8", "<u4", "<u4", "<u4", "<u4", "<u4", "<u4"],
    "offsets": [0, 1, 2,          # DW0: opcode, FUSE(1:0)/PSDT(7:6), command id
                4,                # DW1: namespace id
                8, 12,            # DW2-3: command specific
                16,               # DW4-5: metadata pointer
                24, 32,           # DW6-9: data pointer (PRP1/PRP2 or one SGL descriptor)
                40, 44, 48, 52, 56, 60],   # DW10-15
    "itemsize": 64,
})

# 16-byte completion queue entry.
CQE = np.dtype({
    "names":   ["dw0", "dw1", "sqhd", "sqid", "cid", "status"],
    "formats": ["<u4", "<u4", "<u2", "<u2", "<u2", "<u2"],
    "offsets": [0, 4,      # DW0-1: command specific result
                8, 10,     # DW2: SQ head pointer, SQ identifier
                12, 14],   # DW3: command id; phase tag (bit 0) + status field (15:1)
    "itemsize": 16,
})

# SGL Data Block descriptor (type 0h) as it sits in DW6-9 when PSDT=01b.
# csdemu reads `addr` as a byte offset into the client's CMB arena.
SGL_DESC = np.dtype({
    "names":   ["addr", "length", "type"],
    "formats": ["<u8", "<u4", "u1"],
    "offsets": [0, 8, 15],
    "itemsize": 16,
})

SQE_DWORDS = 16
CQE_DWORDS = 4

assert SQE.itemsize == 64 and CQE.itemsize == 16 and SGL_DESC.itemsize == 16
assert SQE.fields["cid"][1] == 2 and SQE.fields["nsid"][1] == 4
assert SQE.fields["prp1"][1] == 24 and SQE.fields["cdw10"][1] == 40
assert SQE.fields["cdw15"][1] == 60
assert CQE.fields["sqhd"][1] == 8 and CQE.fields["cid"][1] == 12
assert CQE.fields["status"][1] == 14

# DW0 flags byte: FUSE in bits 1:0, PSDT in bits 7:6 (bits 14:15 of DW0).
FLAGS_FUSE_MASK = 0x03
FLAGS_RSVD_MASK = 0x3C
FLAGS_PSDT_SHIFT = 6

# The same layouts as struct formats, for packing one entry at a time without
# building numpy records (tests assert they agree with the dtypes byte for byte).
import struct  # noqa: E402

SQE_STRUCT = struct.Struct("<BBHIIIQQQIIIIII")
CQE_STRUCT = struct.Struct("<IIHHHH")
assert SQE_STRUCT.size == 64 and CQE_STRUCT.size == 16
