"""How many control connections and sessions the daemon takes: a clean
refusal, named in the reply, before the process runs out of file
descriptors (at which point accept() fails and one more session would
crash the attach half-built)."""
from __future__ import annotations

import os
import resource

from csdemu.drive.session import NUM_VECTORS

#: fds one session holds: its control connection, the arena memfd and the
#: duplicate mmap keeps of it, the kick eventfd, and the interrupt vectors
FDS_PER_SESSION = 4 + NUM_VECTORS
#: fds kept free for everything else: accepting a connection to refuse it,
#: checkpoint and log files, the engine's and Numba's own
RESERVE_FDS = 32
#: sessions at most, whatever the fd limit: each maps an arena and is polled
#: on every pass of the loop
MAX_SESSIONS = 256
#: control connections that have not attached (status, stop, or idle)
MAX_UNATTACHED = 64


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class ConnLimits:
    def __init__(self):
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    def connection_refusal(self, conns: int, sessions: int) -> str | None:
        if conns - sessions >= MAX_UNATTACHED:
            return f"too many control connections not attached ({MAX_UNATTACHED})"
        if open_fds() + 1 + RESERVE_FDS > self.fd_limit:
            return f"the daemon's file descriptors are nearly all in use (limit {self.fd_limit})"
        return None

    def session_refusal(self, sessions: int) -> str | None:
        """Why one more session may not attach, or None."""
        if sessions >= MAX_SESSIONS:
            return f"client limit reached: {MAX_SESSIONS} sessions attached"
        if open_fds() + FDS_PER_SESSION + RESERVE_FDS > self.fd_limit:
            return (f"client limit reached: {sessions} sessions attached use the daemon's file "
                    f"descriptors (limit {self.fd_limit}, {FDS_PER_SESSION} per session)")
        return None
