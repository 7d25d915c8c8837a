"""Identify data structures (admin 06h), 4096 bytes each, NVMe 2.0 Figures 275-280.

Only the fields csdemu fills are named; the rest stay zero. The controller
structure's vendor area (bytes 3072-4095) describes the computational
storage side: flash geometry, engine rates and KV limits.
"""
from enum import IntEnum

import numpy as np


class CNS(IntEnum):
    NAMESPACE = 0x00
    CONTROLLER = 0x01
    ACTIVE_NSID_LIST = 0x02


# The CSD description in the controller's vendor-specific area.
CSD_VENDOR = np.dtype({
    "names": ["magic", "version", "channels", "ways", "planes", "blocks_per_plane",
              "pages_per_block", "page_bytes", "oob_bytes", "channel_mbps", "pcie_mbps",
              "gemv_mflops", "softmax_kflops", "filter_mbps", "max_kv_namespaces",
              "max_kv_layers", "max_kv_heads", "max_head_dim", "kv_nsid_base",
              "timing_mode", "profile"],
    "formats": ["S4", "<u4", "<u4", "<u4", "<u4", "<u4", "<u4", "<u4", "<u4", "<u4",
                "<u4", "<u4", "<u4", "<u4", "<u4", "<u4", "<u4", "<u4", "<u4", "<u4", "S32"],
    "offsets": [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64, 68, 72,
                76, 80],
    "itemsize": 1024,
})

ID_CTRL = np.dtype({
    "names": ["vid", "ssvid", "sn", "mn", "fr", "mdts", "cntlid", "ver", "oacs", "lpa",
              "elpe", "sqes", "cqes", "maxcmd", "nn", "oncs", "vwc", "sgls", "vs"],
    "formats": ["<u2", "<u2", "S20", "S40", "S8", "u1", "<u2", "<u4", "<u2", "u1",
                "u1", "u1", "u1", "<u2", "<u4", "<u2", "u1", "<u4", CSD_VENDOR],
    "offsets": [0, 2, 4, 24, 64, 77, 78, 80, 256, 261, 262, 512, 513, 514, 516, 520, 525,
                536, 3072],
    "itemsize": 4096,
})

ID_NS = np.dtype({
    "names": ["nsze", "ncap", "nuse", "nsfeat", "nlbaf", "flbas", "dlfeat", "nvmcap",
              "lbaf0_ms", "lbaf0_lbads", "lbaf0_rp", "kind"],
    "formats": ["<u8", "<u8", "<u8", "u1", "u1", "u1", "u1", ("<u8", 2),
                "<u2", "u1", "u1", "S8"],
    "offsets": [0, 8, 16, 24, 25, 26, 33, 48, 128, 130, 131, 3072],
    "itemsize": 4096,
})

assert ID_CTRL.itemsize == 4096 and ID_CTRL.fields["mdts"][1] == 77
assert ID_CTRL.fields["sqes"][1] == 512 and ID_CTRL.fields["nn"][1] == 516
assert ID_NS.itemsize == 4096 and ID_NS.fields["lbaf0_lbads"][1] == 130

# ONCS bits: Write Zeroes (3), Dataset Management (2).
ONCS_DSM = 1 << 2
ONCS_WRITE_ZEROES = 1 << 3
# SGLS bits 1:0 = 01b: SGLs supported, no alignment requirement.
SGLS_SUPPORTED = 0x1


def to_dict(record: np.void) -> dict:
    """Plain-Python view of a structured record (bytes decoded, arrays listed)."""
    out = {}
    for name in record.dtype.names:
        v = record[name]
        if isinstance(v, np.void) and v.dtype.names:
            out[name] = to_dict(v)
        elif isinstance(v, bytes):
            out[name] = v.rstrip(b"\0 ").decode("ascii", "replace")
        elif isinstance(v, np.ndarray):
            out[name] = v.tolist()
        else:
            out[name] = v.item()
    return out
