"""What the fuzzer records (Stats: counts per oracle verdict, statuses seen,
a few examples of each finding) and the guarded buffer its DMA pointers aim
at (Sandbox)."""
from __future__ import annotations

import mmap
from collections import Counter

import numpy as np

from nvme_cmds.status import status_name
from tools.torture.fuzz_gen import GUARD

SANDBOX = 8 << 20


class Stats:
    def __init__(self):
        self.commands = 0
        self.completions = 0
        self.hangs = 0              # commands without a completion before the deadline
        self.undefined = 0          # completions with a status nvme_cmds does not define
        self.bogus = 0              # completions with a wrong SQ id or a CID never submitted
        self.internal = 0           # Internal Error completions (caught daemon exceptions)
        self.isolation = 0          # a command on another client's KV namespace not refused
        self.crashes = 0
        self.ring_rounds = 0
        self.ring_failures = 0      # another client not served after a ring-abuse round
        self.statuses: Counter = Counter()
        self.examples: dict[str, list] = {}

    def example(self, kind: str, what) -> None:
        lst = self.examples.setdefault(kind, [])
        if len(lst) < 8:
            lst.append(what)

    def as_dict(self) -> dict:
        return {"commands": self.commands, "completions": self.completions, "hangs": self.hangs,
                "undefined_status": self.undefined, "bogus_completions": self.bogus,
                "internal_errors": self.internal,
                "isolation_violations": self.isolation, "crashes": self.crashes,
                "ring_abuse_rounds": self.ring_rounds, "ring_abuse_failures": self.ring_failures,
                "statuses": {status_name(k): v for k, v in self.statuses.most_common()},
                "examples": self.examples}


class Sandbox:
    """An anonymous mapping with PROT_NONE guards on both sides."""

    def __init__(self, size=SANDBOX):
        import ctypes
        total = size + 2 * GUARD
        self.mm = mmap.mmap(-1, total, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.buf = np.frombuffer(self.mm, np.uint8)
        base = self.buf.ctypes.data
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        assert libc.mprotect(base, GUARD, 0) == 0
        assert libc.mprotect(base + GUARD + size, GUARD, 0) == 0
        self.addr, self.size = base + GUARD, size
