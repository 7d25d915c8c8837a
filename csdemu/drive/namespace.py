"""The one boundary between the transport and whatever stores data.

The controller fetches a command, moves host data in (writes), hands the
namespace a `Request` and gets back a `Result`. It then moves data out
(reads) and posts the completion at `Result.done_ns` (realtime mode) or at
once (virtual mode). A namespace never touches shared memory or queues; it
is NVMeVirt's `proc_io_cmd` and FEMU's `FemuExtCtrlOps.io_cmd` in Python.

Times are integer nanoseconds on the controller's clock
(`time.monotonic_ns()` at the moment the command was fetched).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from nvme_cmds.status import Status


@dataclass(slots=True)
class Request:
    opcode: int
    nsid: int
    cdw: tuple                 # cdw10..cdw15 as six ints
    arrival_ns: int            # controller clock when the command was fetched
    data: memoryview | None = None   # host→device payload, already transferred
    read_len: int = 0          # bytes the host expects back (device→host)
    client: int = 0            # opaque client id (for ownership checks)
    fua: bool = False
    meta: memoryview | None = None   # vendor commands: the arena bytes at MPTR (sequence ids)


@dataclass(slots=True)
class Result:
    status: int = Status.SUCCESS          # (sct << 8) | sc, see nvme_cmds.status
    done_ns: int = 0                      # absolute modeled completion time
    dw0: int = 0
    dw1: int = 0
    data: object = None                   # bytes-like device→host payload


class Namespace(Protocol):
    nsid: int
    lba_size: int          # bytes per logical block
    nlbas: int             # capacity in logical blocks

    def process_io(self, req: Request) -> Result: ...
    # Optional fast path for a Read whose host buffer is in the client's arena:
    # def read_into(self, cdw10, cdw11, cdw12, arrival_ns, out) -> int: ...
    # fills `out` and returns done_ns, exactly as process_io would have served
    # it, or returns -1 having done nothing (the controller then calls process_io).
    # Vendor (80h-FFh) commands only: -> (status, bytes in, bytes out, metadata bytes)
    # def data_lengths(self, opcode: int, cdw: tuple) -> tuple[int, int, int, int]: ...
    def identify(self) -> bytes: ...       # 4096-byte Identify Namespace (CNS 00h)
    def health(self) -> dict: ...          # percentage_used, available_spare, media_errors
    def log_page(self, lid: int) -> bytes | None: ...
    def close(self) -> None: ...
