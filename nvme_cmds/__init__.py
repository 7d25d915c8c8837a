"""NVMe wire format for csdemu: layouts, opcodes, status codes, codecs. No I/O."""
from nvme_cmds.spec import SQE, CQE, SGL_DESC
from nvme_cmds.opcodes import (AdminOpcode, NvmOpcode, VendorAdminOpcode, VendorIoOpcode,
                               DataDirection, data_direction, opcode_name, PSDT)
from nvme_cmds.status import SCT, Status, status_name, make_status, split_status

__all__ = ["SQE", "CQE", "SGL_DESC", "AdminOpcode", "NvmOpcode", "VendorAdminOpcode",
           "VendorIoOpcode", "DataDirection", "data_direction", "opcode_name", "PSDT",
           "SCT", "Status", "status_name", "make_status", "split_status"]
