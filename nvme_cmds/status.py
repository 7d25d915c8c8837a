"""Status field: Status Code Type (SCT) and Status Code (SC), NVMe 2.0 Figure 92-101.

A status is carried as one int, (sct << 8) | sc. In the CQE it sits in bits
15:1 of DW3's upper half: SC in 8:1, SCT in 11:9, DNR in 15.
"""
from enum import IntEnum


class SCT(IntEnum):
    GENERIC = 0x0
    COMMAND_SPECIFIC = 0x1
    MEDIA = 0x2
    PATH = 0x3
    VENDOR = 0x7


def make_status(sct: int, sc: int) -> int:
    return (int(sct) << 8) | int(sc)


def split_status(status: int) -> tuple[int, int]:
    return (status >> 8) & 0x7, status & 0xFF


class Status(IntEnum):
    # SCT 0h: generic command status
    SUCCESS = 0x000
    INVALID_OPCODE = 0x001
    INVALID_FIELD = 0x002
    CID_CONFLICT = 0x003
    DATA_TRANSFER_ERROR = 0x004
    INTERNAL_ERROR = 0x006
    ABORT_REQUESTED = 0x007
    ABORTED_SQ_DELETION = 0x008
    INVALID_NAMESPACE = 0x00B
    COMMAND_SEQUENCE_ERROR = 0x00C
    DATA_SGL_LENGTH_INVALID = 0x00F
    SGL_DESCRIPTOR_TYPE_INVALID = 0x011
    INVALID_CMB_USE = 0x012
    PRP_OFFSET_INVALID = 0x013
    OPERATION_DENIED = 0x015
    LBA_OUT_OF_RANGE = 0x080
    CAPACITY_EXCEEDED = 0x081
    NAMESPACE_NOT_READY = 0x082
    # SCT 1h: command specific status
    INVALID_CQ = 0x100
    INVALID_QID = 0x101
    INVALID_QUEUE_SIZE = 0x102
    ABORT_LIMIT_EXCEEDED = 0x103
    ASYNC_EVENT_LIMIT_EXCEEDED = 0x105
    INVALID_INTERRUPT_VECTOR = 0x108
    INVALID_LOG_PAGE = 0x109
    INVALID_QUEUE_DELETION = 0x10C
    FEATURE_NOT_SAVEABLE = 0x10D
    FEATURE_NOT_CHANGEABLE = 0x10E
    NS_INSUFFICIENT_CAPACITY = 0x115
    NS_ID_UNAVAILABLE = 0x116
    # SCT 2h: media and data integrity errors
    # Path related (SCT 3): what the Linux driver reports when the path to
    # the controller is lost (NVME_SC_HOST_PATH_ERROR)
    HOST_PATH_ERROR = 0x370
    WRITE_FAULT = 0x280
    UNRECOVERED_READ_ERROR = 0x281
    ACCESS_DENIED = 0x286
    DEALLOCATED_OR_UNWRITTEN = 0x287


_NAMES = {int(s): s.name for s in Status}


def status_name(status: int) -> str:
    name = _NAMES.get(status)
    if name is not None:
        return name
    sct, sc = split_status(status)
    return f"SCT{sct:X}h_SC{sc:02X}h"


# CQE DW3 upper half (the 16-bit "status" field of spec.CQE).
PHASE_BIT = 0x1
DNR_BIT = 0x8000


def encode_status_field(status: int, phase: int, dnr: bool | None = None) -> int:
    sct, sc = split_status(status)
    if dnr is None:
        dnr = status != Status.SUCCESS
    return (phase & 1) | (sc << 1) | (sct << 9) | (DNR_BIT if dnr else 0)


def decode_status_field(field: int) -> tuple[int, int]:
    """-> (status, phase)"""
    return make_status((field >> 9) & 0x7, (field >> 1) & 0xFF), field & 1
