"""A RAM-backed NVM namespace with zero modeled time: the transport's test
target, and the baseline that shows what the flash model costs."""
from __future__ import annotations

import numpy as np

from csdemu.namespace import Request, Result
from nvme_cmds import identify as idf
from nvme_cmds.nvm import CDW11_DSM_AD, CDW12_RSVD_RW, DSM_RANGE, slba
from nvme_cmds.opcodes import NvmOpcode
from nvme_cmds.status import Status


class MemoryNamespace:
    def __init__(self, nsid: int = 1, nlbas: int = 65536, lba_size: int = 4096):
        self.nsid, self.nlbas, self.lba_size = nsid, nlbas, lba_size
        self.store = np.zeros((nlbas, lba_size), np.uint8)

    def process_io(self, req: Request) -> Result:
        opc, cdw = req.opcode, req.cdw
        if opc == NvmOpcode.FLUSH:
            return Result(done_ns=req.arrival_ns)
        if opc == NvmOpcode.DATASET_MANAGEMENT:
            ranges = np.frombuffer(req.data, DSM_RANGE)
            if np.any(ranges["slba"] + ranges["nlb"] > self.nlbas):
                return Result(Status.LBA_OUT_OF_RANGE)
            if cdw[1] & CDW11_DSM_AD:
                for r in ranges:
                    self.store[r["slba"]:r["slba"] + r["nlb"]] = 0
            return Result(done_ns=req.arrival_ns)
        if cdw[2] & CDW12_RSVD_RW:
            return Result(Status.INVALID_FIELD)
        lba, n = slba(cdw[0], cdw[1]), (cdw[2] & 0xFFFF) + 1
        if lba + n > self.nlbas:
            return Result(Status.LBA_OUT_OF_RANGE)
        rows = self.store[lba:lba + n]
        if opc == NvmOpcode.WRITE:
            rows.reshape(-1)[:] = np.frombuffer(req.data, np.uint8)
        elif opc == NvmOpcode.WRITE_ZEROES:
            rows[:] = 0
        elif opc == NvmOpcode.READ:
            return Result(done_ns=req.arrival_ns, data=rows)
        return Result(done_ns=req.arrival_ns)

    def identify(self) -> bytes:
        rec = np.zeros(1, idf.ID_NS)
        rec["nsze"] = rec["ncap"] = rec["nuse"] = self.nlbas
        rec["lbaf0_lbads"] = self.lba_size.bit_length() - 1
        rec["kind"] = b"memory"
        return rec.tobytes()

    def health(self) -> dict:
        return {}

    def log_page(self, lid: int):
        return None

    def close(self) -> None:
        pass
