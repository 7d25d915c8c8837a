"""Numba compiles in this process after start-up (on-disk cache misses).

A daemon should load every kernel from Numba's cache (filled by
`python -m csdemu.cli.warmup`); a compile inside a command stalls every client
for seconds. The daemon reports these counts in its status so tests can
assert there were none.
"""
from __future__ import annotations

import time

from numba.core import event


class JitWatch(event.Listener):
    def __init__(self):
        self.compiles = 0
        self.seconds = 0.0
        self._depth = 0
        self._t0 = 0.0
        self.names: list[str] = []

    def on_start(self, ev):
        if self._depth == 0:
            self._t0 = time.perf_counter()
            disp = ev.data.get("dispatcher") if isinstance(ev.data, dict) else None
            fn = getattr(disp, "py_func", None)
            self.names.append(f"{fn.__module__}.{fn.__qualname__}" if fn else str(disp))
            del self.names[:-10]
        self._depth += 1

    def on_end(self, ev):
        self._depth -= 1
        if self._depth == 0:
            self.compiles += 1
            self.seconds += time.perf_counter() - self._t0

    def as_dict(self) -> dict:
        return {"jit_compiles": self.compiles, "jit_seconds": round(self.seconds, 3),
                "jit_recent": list(self.names)}


def install() -> JitWatch:
    w = JitWatch()
    event.register("numba:compile", w)
    return w
