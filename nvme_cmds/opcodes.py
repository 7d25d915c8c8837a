"""Opcodes: admin, NVM I/O and csdemu's vendor-specific commands.

Bits 1:0 of every opcode give the data direction (NVMe 2.0, Figure 86), so
vendor opcodes are picked to carry the right direction.
"""
from enum import IntEnum


class DataDirection(IntEnum):
    NONE = 0b00
    HOST_TO_CTRL = 0b01
    CTRL_TO_HOST = 0b10
    BIDIRECTIONAL = 0b11


def data_direction(opc: int) -> DataDirection:
    return DataDirection(opc & 3)


class PSDT(IntEnum):
    PRP = 0b00
    SGL = 0b01          # SGL for data; 10b (SGL + metadata SGL) and 11b are rejected


class AdminOpcode(IntEnum):
    DELETE_IO_SQ = 0x00
    CREATE_IO_SQ = 0x01
    GET_LOG_PAGE = 0x02
    # 03h reserved
    DELETE_IO_CQ = 0x04
    CREATE_IO_CQ = 0x05
    IDENTIFY = 0x06
    # 07h reserved
    ABORT = 0x08
    SET_FEATURES = 0x09
    GET_FEATURES = 0x0A
    # 0Bh reserved
    ASYNC_EVENT_REQUEST = 0x0C
    KEEP_ALIVE = 0x18


class VendorAdminOpcode(IntEnum):
    """Admin vendor range C0h-FFh."""
    CREATE_KV_NAMESPACE = 0xC1     # host→ctrl: model shape
    DELETE_KV_NAMESPACE = 0xC4
    DMA_MAP = 0xC8                 # register a host memory region (the emulated IOMMU)
    DMA_UNMAP = 0xCC


class NvmOpcode(IntEnum):
    FLUSH = 0x00
    WRITE = 0x01
    READ = 0x02
    # 03h-07h: write uncorrectable, compare (not supported)
    WRITE_ZEROES = 0x08
    DATASET_MANAGEMENT = 0x09


class VendorIoOpcode(IntEnum):
    """I/O vendor range 80h-FFh."""
    NOP = 0x80                     # no data: transport round trip only
    KV_APPEND = 0x81               # host→ctrl
    KV_READ = 0x82                 # ctrl→host
    ATTEND = 0x83                  # both: q in, output out
    RECLAIM = 0x84                 # no data: sequence id range in CDW10/11


ADMIN_OPCODES = {int(o): o for e in (AdminOpcode, VendorAdminOpcode) for o in e}
IO_OPCODES = {int(o): o for e in (NvmOpcode, VendorIoOpcode) for o in e}


def opcode_name(opc: int, admin: bool) -> str:
    table = ADMIN_OPCODES if admin else IO_OPCODES
    op = table.get(opc)
    return op.name if op is not None else f"UNKNOWN_{opc:02X}h"
