"""Wire format of the KV-cache vendor commands.

Create KV Namespace (admin C1h) carries a 64-byte KV_NS_DESC (host→ctrl);
DW0 of its completion is the new namespace id. Delete KV Namespace (C4h)
takes the NSID.

I/O commands on a KV namespace (NSID = that namespace):

| opcode | CDW10 | CDW11 | CDW12 | CDW13 | CDW14 | data |
|---|---|---|---|---|---|---|
| 81h KV Append | layer[15:0], tokens[31:16] | batch | - | - | - | in: K then V, each [batch, tokens, kv_heads, head_dim] in the namespace dtype |
| 82h KV Read | layer[15:0] | seq id lo | seq id hi | start token | count | out: K then V, each [count, kv_heads, head_dim] |
| 83h Attend | layer[15:0], mode[23:16], append[24] | batch | r[15:0], window[31:16] | k | - | in: q float32 [batch, q_heads, head_dim]; out: float32, same shape |
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
"""
from enum import IntEnum

import numpy as np


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


def attend_cdws(layer: int, batch: int, mode: int = AttendMode.DENSE,
                r: int = 0, k: int = 0, window: int = 0, append: bool = False) -> dict:
    return {"cdw10": (layer & 0xFFFF) | ((mode & 0xFF) << 16) | (ATTEND_APPEND if append else 0),
            "cdw11": batch,
            "cdw12": (r & 0xFFFF) | ((window & 0xFFFF) << 16), "cdw13": k}


def append_cdws(layer: int, batch: int, tokens: int) -> dict:
    return {"cdw10": (layer & 0xFFFF) | ((tokens & 0xFFFF) << 16), "cdw11": batch}


def read_cdws(layer: int, seq_id: int, start: int, count: int) -> dict:
    return {"cdw10": layer & 0xFFFF, "cdw11": seq_id & 0xFFFFFFFF, "cdw12": seq_id >> 32,
            "cdw13": start, "cdw14": count}
