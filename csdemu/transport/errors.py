"""What the client library hands back: completions and NVMe errors."""
from nvme_cmds.status import Status, decode_status_field, split_status, status_name


class Completion:
    """One CQE plus the modeled device time csdemu attaches to it."""
    __slots__ = ("dw0", "dw1", "sqhd", "sqid", "cid", "status", "device_ns", "data")

    def __init__(self, dw0, dw1, sqhd, sqid, cid, field, device_ns):
        self.dw0, self.dw1, self.sqhd, self.sqid, self.cid = dw0, dw1, sqhd, sqid, cid
        self.status = decode_status_field(field)[0]
        self.device_ns = device_ns
        self.data = None          # bytes read back by passthru

    @property
    def sct(self) -> int:
        return split_status(self.status)[0]

    @property
    def sc(self) -> int:
        return split_status(self.status)[1]

    @property
    def ok(self) -> bool:
        return self.status == Status.SUCCESS

    @property
    def result(self) -> int:
        return self.dw0 | (self.dw1 << 32)

    @property
    def status_name(self) -> str:
        return status_name(self.status)

    def __repr__(self):
        return (f"Completion(cid={self.cid}, sqid={self.sqid}, status={self.status_name}, "
                f"result={self.result:#x}, device_ns={self.device_ns})")


class NVMeError(Exception):
    """A command failed. ``command`` names it (e.g. "kv append"); ``field``,
    when known, names the field the drive (or the library, before sending)
    found wrong, with why."""

    def __init__(self, status: int, what: str = "", field: str = ""):
        self.status = status
        self.command = what
        self.field = field
        self.sct, self.sc = split_status(status)
        prefix = f"{what}: " if what else ""
        suffix = f" [{field}]" if field else ""
        super().__init__(f"{prefix}{status_name(status)} (SCT {self.sct:#x}, SC {self.sc:#04x}){suffix}")


class DeviceGone(NVMeError):
    """The daemon died or closed the connection: every waiting and later
    call on the device raises this (status Host Pathing Error, as Linux
    reports a lost path)."""

    def __init__(self, what: str = "", why: str = "the daemon closed the control socket"):
        super().__init__(Status.HOST_PATH_ERROR, what, why)


class DaemonError(RuntimeError):
    """The daemon could not be reached, started, or refused a control request."""
