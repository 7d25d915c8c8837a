"""Each client's Error Information log (Get Log Page LID 01h).

The controller logs every command it fails; where a handler said which field
was wrong (nvme_cmds.errlog.ErrorStatus), the entry carries it, so the host
can name the field after the fact, as `nvme error-log` shows it.
"""
from __future__ import annotations

import numpy as np

from nvme_cmds.errlog import ERROR_LOG_ENTRY, NO_LOCATION, default_location
from nvme_cmds.status import encode_status_field

# Entries kept per client: one 4 KiB page, enough for a host that reads the
# log after a failure (csdemu.host.kv does), while a client that floods
# errors holds no more.
ERROR_LOG_ENTRIES = 64


class ErrorLog:
    """One client's Error Information log (LID 01h): its newest failed
    commands, newest first, each with where the command was wrong when the
    handler said (nvme_cmds.errlog.ErrorStatus)."""

    def __init__(self):
        self.count = 0
        self.recs = np.zeros(ERROR_LOG_ENTRIES, ERROR_LOG_ENTRY)

    def add(self, sqid: int, cid: int, status: int, nsid: int, opcode: int | None = None) -> None:
        self.count += 1
        self.recs[1:] = self.recs[:-1]
        r = self.recs[0]
        r["error_count"], r["sqid"], r["cid"], r["nsid"] = self.count, sqid, cid, nsid
        r["status"] = encode_status_field(int(status), 0)     # as in the CQE, phase 0
        loc = getattr(status, "loc", None)
        if loc is None:
            loc = NO_LOCATION if opcode is None else default_location(status, opcode, sqid == 0)
        r["param_loc"] = loc
        r["csi"] = getattr(status, "info", 0)

    def page(self) -> np.ndarray:
        return self.recs.view(np.uint8)


def error_log(ctrl, s) -> ErrorLog:
    log = ctrl.error_logs.get(s.id)
    if log is None:
        log = ctrl.error_logs[s.id] = ErrorLog()
    return log


def log_error(ctrl, s, sqid: int, cid: int, status: int, nsid: int,
              opcode: int | None = None) -> None:
    """Log a failed command; `opcode` lets a plain status name the field it
    implies (nvme_cmds.errlog.default_location)."""
    error_log(ctrl, s).add(sqid, cid, status, nsid, opcode)
