"""CPU lists for `--cpus`: which CPUs the daemon's poller or nbdkit may run on.

An emulated drive's poller is a busy loop, as SPDK's reactors and FEMU's
pollers are, and those pin it to cores (SPDK's `-m` mask). On a small
machine where does each busy process run matters more than its own cost:
see docs/fio-and-stress.md, "Pinning".
"""
from __future__ import annotations

import itertools
import os


def parse_cpu_list(text: str) -> set[int]:
    """Linux cpulist syntax ("1", "0-3,6") -> a set of CPUs this process may
    use; ValueError naming the first bad item otherwise."""
    allowed = os.sched_getaffinity(0)
    cpus: set[int] = set()
    for item in str(text).replace(" ", "").split(","):
        lo, sep, hi = item.partition("-")
        bad = ValueError(f"{item!r} is not a CPU number or range (e.g. 1 or 0-3,6)")
        try:
            first, last = int(lo), int(hi if sep else lo)
        except ValueError:
            raise bad from None
        if first < 0 or last < first:
            raise bad
        for c in range(first, last + 1):
            if c not in allowed:
                raise ValueError(f"CPU {c} is not available here (allowed: {format_cpu_list(allowed)})")
            cpus.add(c)
    return cpus


def format_cpu_list(cpus) -> str:
    """{0, 1, 2, 5} -> "0-2,5"."""
    out = []
    for _, run in itertools.groupby(enumerate(sorted(cpus)), lambda ic: ic[1] - ic[0]):
        run = [c for _, c in run]
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def each_thread(fn, pid: int | str = "self") -> list:
    """``fn(tid)`` for every thread of process `pid` (this one by default)
    -> the results; a thread that ends meanwhile is skipped."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out.append(fn(int(tid)))
        except ProcessLookupError:
            pass
    return out


def pin_process(cpus, pid: int | str = "self") -> None:
    """Confine every thread of process `pid` to `cpus`; threads started
    later inherit it from the one that starts them."""
    each_thread(lambda tid: os.sched_setaffinity(tid, cpus), pid)


def thread_affinities(pid: int | str = "self") -> list[set[int]]:
    """The CPUs each thread of process `pid` may run on."""
    return each_thread(os.sched_getaffinity, pid)


def pin_to(cpus):
    """A Popen preexec_fn that confines the child (and every thread it will
    start) to `cpus`; None when `cpus` is None (no pinning)."""
    if cpus is None:
        return None
    cpus = set(cpus)
    return lambda: os.sched_setaffinity(0, cpus)
