"""Wire format of the KV-cache vendor commands.

Create KV Namespace (admin C1h) carries a 64-byte KV_NS_DESC (host→ctrl);
DW0 of its completion is the new namespace id. Delete KV Namespace (C4h)
takes the NSID.

I/O commands on a KV namespace (NSID = that namespace):

| opcode | CDW10 | CDW11 | CDW12 | CDW13 | CDW14 | data |
|---|---|---|---|---|---|---|
| 81h KV Append | layer[15:0], tokens[31:16] | batch | - | - | - | in: K then V, each [batch, tokens, kv_heads, head_dim] in the namespace dtype |
| 82h KV Read | layer[15:0] | seq id lo | seq id hi | start token | count | out: K then V, each [count, kv_heads, head_dim] |
| 83h Attend | layer[15:0], mode[23:16], append[24] | batch | r[15:0] | k | window | in: q float32 [batch, q_heads, head_dim]; out: float32, same shape |
| 84h Reclaim | - | batch | - | - | - | - |

With append[24] set, Attend first appends one new token per sequence: its K
then V ([batch, 1, kv_heads, head_dim] each, namespace dtype) follow the
sequence ids in the arena, so a decode step costs one command per layer.

Sequence ids (u64 x batch) for Append, Attend and Reclaim sit in the client's
CMB arena at the byte offset in MPTR: they are small, and keeping them apart
from q lets q and the output move by PRP DMA straight from and into the
caller's arrays. For Attend with PRP, PRP1 is q and PRP2 the output buffer;
with an SGL, the descriptor covers q and CDW15 is the arena offset of the
output.

Every field is checked, never truncated: the encoders below raise
ValueError naming a field whose value does not fit it, and the drive
completes a command whose field is out of range with Invalid Field, naming
the field in the Error Information log (nvme_cmds.errlog): Parameter Error
Location is the field's first byte and bit in the SQE, and the Command
Specific Information is (reason << 32) | index, `index` being the batch
position of the sequence concerned or the byte offset of a KV_NS_DESC
field. The SparF window is a token count like k, so it has CDW14's 32 bits
(it had CDW12[31:16] before, which is now reserved).
"""
from enum import IntEnum
from typing import NamedTuple

import numpy as np

from nvme_cmds import errlog
from nvme_cmds.opcodes import VendorAdminOpcode, VendorIoOpcode


class KVDtype(IntEnum):
    FLOAT16 = 0
    BFLOAT16 = 1
    FLOAT32 = 2


DTYPE_BYTES = {KVDtype.FLOAT16: 2, KVDtype.BFLOAT16: 2, KVDtype.FLOAT32: 4}
DTYPE_NAMES = {"float16": KVDtype.FLOAT16, "fp16": KVDtype.FLOAT16,
               "bfloat16": KVDtype.BFLOAT16, "bf16": KVDtype.BFLOAT16,
               "float32": KVDtype.FLOAT32, "fp32": KVDtype.FLOAT32}


class AttendMode(IntEnum):
    DENSE = 0
    SPARF = 1


KV_NS_DESC = np.dtype({
    "names": ["layers", "q_heads", "kv_heads", "head_dim", "dtype", "flags",
              "tokens_per_page", "dims_per_page", "max_seqs", "max_tokens"],
    "formats": ["<u2", "<u2", "<u2", "<u2", "u1", "u1", "<u2", "<u2", "<u4", "<u4"],
    "offsets": [0, 2, 4, 6, 8, 9, 10, 12, 16, 20],
    "itemsize": 64,
})
assert KV_NS_DESC.itemsize == 64

FLAG_SPARSE_LAYOUT = 0x01       # keep the channel-indexed copy of K (SparF)
FLAGS_VALID = FLAG_SPARSE_LAYOUT
SEQ_ID = np.dtype("<u8")


ATTEND_APPEND = 1 << 24          # CDW10: append one token per sequence first
ATTEND_RSVD_SHIFT = 25           # CDW10[31:25] of Attend are reserved


class Field(NamedTuple):
    """A command field: CDW`cdw` bits [bit + bits - 1 : bit]."""
    name: str
    cdw: int
    bit: int
    bits: int

    @property
    def limit(self) -> int:
        return (1 << self.bits) - 1

    @property
    def loc(self) -> int:
        return errlog.cdw_location(self.cdw, self.bit)

    def where(self) -> str:
        hi = self.bit + self.bits - 1
        if self.bits == 32:
            return f"CDW{self.cdw}"
        return f"CDW{self.cdw}[{self.bit}]" if self.bits == 1 else f"CDW{self.cdw}[{hi}:{self.bit}]"

    def pack(self, value, command: str) -> int:
        """`value` in its place, or ValueError naming the field and its limit."""
        v = int(value)
        if not 0 <= v <= self.limit:
            raise ValueError(f"{command}: {self.name} {v} does not fit {self.where()} "
                             f"(0..{self.limit})")
        return v << self.bit


LAYER = Field("layer", 10, 0, 16)
TOKENS = Field("tokens", 10, 16, 16)
MODE = Field("mode", 10, 16, 8)
APPEND_FLAG = Field("append", 10, 24, 1)
ATTEND_RSVD = Field("reserved", 10, ATTEND_RSVD_SHIFT, 7)
CDW10_RSVD_HI = Field("reserved", 10, 16, 16)
BATCH = Field("batch", 11, 0, 32)
SEQ_ID_LO = Field("sequence id", 11, 0, 32)
SEQ_ID_HI = Field("sequence id (high)", 12, 0, 32)
R = Field("r", 12, 0, 16)
CDW12_RSVD_HI = Field("reserved", 12, 16, 16)
K = Field("k", 13, 0, 32)
WINDOW = Field("window", 14, 0, 32)
START = Field("start", 13, 0, 32)
COUNT = Field("count", 14, 0, 32)
RECLAIM_RSVD = Field("reserved", 10, 0, 32)

# Each KV command's fields, by the location the error log gives for them.
FIELDS = {
    VendorIoOpcode.KV_APPEND: (LAYER, TOKENS, BATCH),
    VendorIoOpcode.KV_READ: (LAYER, CDW10_RSVD_HI, SEQ_ID_LO, SEQ_ID_HI, START, COUNT),
    VendorIoOpcode.ATTEND: (LAYER, MODE, APPEND_FLAG, ATTEND_RSVD, BATCH, R, CDW12_RSVD_HI, K,
                            WINDOW),
    VendorIoOpcode.RECLAIM: (RECLAIM_RSVD, BATCH),
}


class KVReason(IntEnum):
    """Why a KV command failed: bits 63:32 of its error log entry's
    Command Specific Information."""
    NONE = 0
    RANGE = 1              # the field's value is outside what the namespace allows
    RESERVED = 2           # reserved bits are set
    NO_SEQUENCE = 3        # no such sequence in this namespace
    NO_TOKENS = 4          # the sequence holds no tokens in this layer
    SEQ_LIMIT = 5          # the namespace's max_seqs sequences exist
    FLASH_FULL = 6         # the KV lines of the flash are full
    DRAM_FULL = 7          # the device DRAM budget for group buffers is spent
    SEQ_TOO_LONG = 8       # a layer would pass MAX_SEQ_TOKENS tokens
    NS_LIMIT = 9           # the client holds MAX_KV_NS_PER_CLIENT namespaces
    NSID_FULL = 10         # no namespace id is free


REASON_TEXT = {
    KVReason.RANGE: "out of range", KVReason.RESERVED: "reserved bits set",
    KVReason.NO_SEQUENCE: "no such sequence", KVReason.NO_TOKENS: "no tokens in this layer",
    KVReason.SEQ_LIMIT: "the namespace's sequence limit (max_seqs) is reached",
    KVReason.FLASH_FULL: "the flash for KV caches is full",
    KVReason.DRAM_FULL: "the device DRAM budget for KV group buffers is spent",
    KVReason.SEQ_TOO_LONG: "a layer would pass the longest sequence",
    KVReason.NS_LIMIT: "this client holds the most KV namespaces one client may",
    KVReason.NSID_FULL: "no namespace id is free",
}

# Longest sequence (tokens per layer): the kernels take lengths as int32.
MAX_SEQ_TOKENS = (1 << 31) - 1
KV_NSIDS = 1022                  # KV namespaces take NSIDs 2..1023
# One client may hold at most this many of them, so at least 16 clients
# always find one free (a model needs one: every layer lives in it).
MAX_KV_NS_PER_CLIENT = KV_NSIDS // 16


def csi(reason: int, index: int = 0) -> int:
    return (int(reason) << 32) | (index & 0xFFFFFFFF)


def describe(opcode: int, loc: int, info: int, admin: bool = False) -> str:
    """The field an error log entry of a KV command points at, and why."""
    index = info & 0xFFFFFFFF
    try:
        reason = KVReason(info >> 32)
    except ValueError:
        reason = None
    why = REASON_TEXT.get(reason, "")
    where = errlog.split_location(loc)
    if where is None:
        name = ""
    elif where[0] == errlog.SQE_MPTR:
        name = f"sequence id #{index} (MPTR)"
    elif where[0] == errlog.SQE_DPTR:
        name = "data (DPTR)"
        if admin and opcode == VendorAdminOpcode.CREATE_KV_NAMESPACE:
            name = next((f"KV_NS_DESC.{n}" for n in KV_NS_DESC.names
                         if KV_NS_DESC.fields[n][1] == index), f"KV_NS_DESC byte {index}")
    elif where[0] == errlog.SQE_NSID:
        name = "NSID"
    else:
        f = next((f for f in FIELDS.get(opcode, ()) if f.loc == loc), None)
        name = f"{f.name} ({f.where()})" if f else f"SQE byte {where[0]} bit {where[1]}"
        if f and reason in (KVReason.NO_SEQUENCE, KVReason.NO_TOKENS):
            name += f", sequence #{index}"
    return ": ".join(p for p in (name, why) if p)


def attend_cdws(layer: int, batch: int, mode: int = AttendMode.DENSE,
                r: int = 0, k: int = 0, window: int = 0, append: bool = False) -> dict:
    c = "attend"
    return {"cdw10": LAYER.pack(layer, c) | MODE.pack(mode, c) | (ATTEND_APPEND if append else 0),
            "cdw11": BATCH.pack(batch, c), "cdw12": R.pack(r, c), "cdw13": K.pack(k, c),
            "cdw14": WINDOW.pack(window, c)}


def append_cdws(layer: int, batch: int, tokens: int) -> dict:
    c = "kv append"
    return {"cdw10": LAYER.pack(layer, c) | TOKENS.pack(tokens, c), "cdw11": BATCH.pack(batch, c)}


def read_cdws(layer: int, seq_id: int, start: int, count: int) -> dict:
    c = "kv read"
    seq_id = int(seq_id)
    if not 0 <= seq_id < 1 << 64:
        raise ValueError(f"{c}: sequence id {seq_id} does not fit CDW11/CDW12 (0..2^64-1)")
    return {"cdw10": LAYER.pack(layer, c), "cdw11": seq_id & 0xFFFFFFFF, "cdw12": seq_id >> 32,
            "cdw13": START.pack(start, c), "cdw14": COUNT.pack(count, c)}
