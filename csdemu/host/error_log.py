"""Which field a failed command got wrong, as the drive's Error Information
log (LID 01h) says: read after a failure, on the error path only, so every
NVMeError of the library can name the field (docs/commands.md)."""
from __future__ import annotations

from csdemu.transport.errors import DeviceGone, NVMeError
from nvme_cmds import errlog
from nvme_cmds.kv import describe
from nvme_cmds.logs import LogPage

# Error log entries read back after a failure: the failed command is the
# newest of this client's, unless other queues of the process failed since.
ERROR_ENTRIES_READ = 4


def failed_field(dev, c, opcode: int, admin: bool = False) -> str:
    """What the drive's Error Information log says was wrong with the
    failed command `c` ("" if it says nothing). Costs one Get Log Page, on
    the error path only."""
    if getattr(dev, "_reading_error_log", False):
        return ""                   # reading the log itself failed: nothing to ask
    dev._reading_error_log = True
    try:
        raw = dev.log_page(LogPage.ERROR_INFO, ERROR_ENTRIES_READ * errlog.ERROR_LOG_ENTRY.itemsize)
    except DeviceGone:
        raise
    except NVMeError:
        return ""
    finally:
        dev._reading_error_log = False
    for e in errlog.entries(raw):
        if int(e["sqid"]) == c.sqid and int(e["cid"]) == c.cid:
            loc = int(e["param_loc"])
            if opcode >= (0xC0 if admin else 0x80):          # the vendor (KV) commands
                return describe(opcode, loc, int(e["csi"]), admin)
            return errlog.field_name(opcode, loc, admin)
    return ""
