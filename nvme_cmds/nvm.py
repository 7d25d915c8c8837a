"""NVM command set fields: LBA commands, Dataset Management ranges, data lengths."""
import numpy as np

from nvme_cmds.opcodes import NvmOpcode

# Dataset Management range (NVMe NVM Command Set 1.0, Figure 40), 16 bytes.
DSM_RANGE = np.dtype({"names": ["cattr", "nlb", "slba"],
                      "formats": ["<u4", "<u4", "<u8"],
                      "offsets": [0, 4, 8], "itemsize": 16})
assert DSM_RANGE.itemsize == 16

CDW12_NLB_MASK = 0xFFFF
CDW12_FUA = 1 << 30
CDW12_LR = 1 << 31
# Bits csdemu does not implement and so treats as reserved: PRINFO (29:26),
# STC (24), DTYPE (23:20), and 19:16 reserved in the spec.
CDW12_RSVD_RW = 0x3FFF0000 & ~CDW12_FUA
CDW12_DEAC = 1 << 25          # Write Zeroes: deallocate
CDW11_DSM_AD = 1 << 2
DSM_MAX_RANGES = 256


def slba(cdw10: int, cdw11: int) -> int:
    """Starting LBA of a Read/Write/Write Zeroes (CDW10 low, CDW11 high dword)."""
    return (cdw10 & 0xFFFFFFFF) | ((cdw11 & 0xFFFFFFFF) << 32)


def nlb(cdw12: int) -> int:
    """Blocks a Read/Write/Write Zeroes covers (CDW12 NLB is 0's based)."""
    return (cdw12 & CDW12_NLB_MASK) + 1


def lba_cdws(lba: int, nblocks: int, fua: bool = False) -> dict:
    """CDW10-12 for Read/Write/Write Zeroes of `nblocks` blocks at `lba`;
    ValueError naming the field that does not fit."""
    if not 0 <= lba < 1 << 64:
        raise ValueError(f"lba {lba} does not fit SLBA (CDW10-11): 0..2^64-1")
    if not 1 <= nblocks <= CDW12_NLB_MASK + 1:
        raise ValueError(f"{nblocks} blocks do not fit NLB (CDW12[15:0]): 1..{CDW12_NLB_MASK + 1} "
                         f"per command")
    return {"cdw10": lba & 0xFFFFFFFF, "cdw11": lba >> 32,
            "cdw12": ((nblocks - 1) & CDW12_NLB_MASK) | (CDW12_FUA if fua else 0)}


def nvm_data_lengths(opc: int, cdw10: int, cdw12: int, lba_size: int) -> tuple[int, int]:
    """-> (bytes host→controller, bytes controller→host) for an NVM command."""
    if opc == NvmOpcode.WRITE:
        return nlb(cdw12) * lba_size, 0
    if opc == NvmOpcode.READ:
        return 0, nlb(cdw12) * lba_size
    if opc == NvmOpcode.DATASET_MANAGEMENT:
        return ((cdw10 & 0xFF) + 1) * DSM_RANGE.itemsize, 0
    return 0, 0
