"""The host side of a queue pair: CIDs, submission, reaping and waiting.

A Queue owns one SQ/CQ pair in the client's arena (csdemu.transport.qpair rings): CIDs
are slot indices handed out from a free list, completions are reaped in
batches, and a waiter spins briefly, then blocks on the CQ's interrupt
eventfd. The ArenaAllocator places queues and buffers in the arena.
"""
from __future__ import annotations

import os
import select
import time

from csdemu.transport.errors import Completion
from csdemu.transport.qpair import CQ_CID, CQ_SQHD, HostCQ, HostSQ

SPIN_NS = 200_000        # busy-poll this long before blocking on the interrupt fd
# Generous: the first attend of a kernel variant may JIT-compile it (tens of
# seconds on a loaded 2-core machine) before the command completes.
COMMAND_TIMEOUT_S = 600.0


class ArenaAllocator:
    """First-fit allocator over the client part of the arena (64-byte aligned)."""

    def __init__(self, start: int, end: int):
        self.free = [(start, end)]

    def alloc(self, nbytes: int) -> int:
        nbytes = (nbytes + 63) & ~63
        for i, (s, e) in enumerate(self.free):
            if e - s >= nbytes:
                self.free[i] = (s + nbytes, e)
                return s
        raise MemoryError(f"arena exhausted: no {nbytes} contiguous bytes free")

    def release(self, off: int, nbytes: int) -> None:
        nbytes = (nbytes + 63) & ~63
        self.free.append((off, off + nbytes))
        self.free.sort()
        merged = [self.free[0]]
        for s, e in self.free[1:]:
            if s == merged[-1][1]:
                merged[-1] = (merged[-1][0], e)
            else:
                merged.append((s, e))
        self.free = merged


class Queue:
    """One submission/completion queue pair with CIDs as slot indices."""

    def __init__(self, dev, qid: int, sq: HostSQ, cq: HostCQ, vector_fd: int):
        self.dev, self.qid, self.sq, self.cq, self.vector_fd = dev, qid, sq, cq, vector_fd
        self.free_cids = list(range(sq.depth - 1, -1, -1))
        self.outstanding = 0
        self._last_ns: dict[int, int] = {}      # opcode -> its last execute() round trip
        self._poller = select.poll()
        self._poller.register(vector_fd, select.POLLIN)

    @property
    def depth(self) -> int:
        return self.sq.depth

    def submit(self, opc, nsid=0, cdw10=0, cdw11=0, cdw12=0, cdw13=0, cdw14=0, cdw15=0,
               prp1=0, prp2=0, flags=0, mptr=0, cdw2=0, cdw3=0, ring=True) -> int:
        """Queue one command; returns its CID. Raises if the queue is full.
        Hot paths pass the fields positionally: keyword parsing of this many
        fields costs about a microsecond per command."""
        if self.outstanding >= self.sq.depth - 1:
            raise RuntimeError(f"queue {self.qid} is full ({self.outstanding} outstanding)")
        cid = self.free_cids.pop()
        self.sq.push(opc, flags, cid, nsid, cdw2, cdw3, mptr, prp1, prp2,
                     cdw10, cdw11, cdw12, cdw13, cdw14, cdw15)
        self.outstanding += 1
        if ring:
            self.ring()
        return cid

    def submit_raw(self, entry: bytes, ring=True) -> None:
        """Queue 64 raw bytes as they are (tests, fuzzing). The caller owns the CID."""
        self.sq.push_raw(entry)
        self.outstanding += 1
        if ring:
            self.ring()

    def ring(self) -> None:
        if self.sq.ring():
            os.eventfd_write(self.dev.kick_fd, 1)

    def reap_raw(self, limit: int = 1 << 30) -> list[tuple]:
        out = self.cq.pop_batch(limit)
        if out:
            self.sq.head = out[-1][CQ_SQHD]
            for e in out:
                if e[CQ_CID] < self.sq.depth:
                    self.free_cids.append(e[CQ_CID])
            self.outstanding -= len(out)
        return out

    def wait_raw(self, count: int = 1, timeout: float | None = COMMAND_TIMEOUT_S,
                 spin_ns: int = SPIN_NS) -> list[tuple]:
        """Reap until at least `count` completions arrived (spin, then block)."""
        out = self.reap_until(count, timeout, spin_ns)
        if len(out) < count:
            raise TimeoutError(f"queue {self.qid}: {len(out)} of {count} completions "
                               f"after {timeout}s")
        return out

    def reap_until(self, count: int, timeout: float | None,
                   spin_ns: int = SPIN_NS) -> list[tuple]:
        """Reap until `count` completions arrived or `timeout` s passed (spin,
        then block); -> what arrived, fewer than `count` on a timeout."""
        out = self.reap_raw()
        if len(out) >= count:
            return out
        start = time.monotonic_ns()
        deadline = None if timeout is None else start + int(timeout * 1e9)
        while True:
            out += self.reap_raw()
            if len(out) >= count:
                return out
            now = time.monotonic_ns()
            if deadline is not None and now > deadline:
                return out
            if now - start > spin_ns:
                self._block(deadline)

    def _block(self, deadline):
        self.cq.arm(True)
        try:
            if self.cq.ready():
                return
            wait = 0.05 if deadline is None else max(0.0, min(0.05, (deadline - time.monotonic_ns()) / 1e9))
            if self._poller.poll(wait * 1000):          # poll(): fine with fds >= FD_SETSIZE
                try:
                    os.eventfd_read(self.vector_fd)
                except BlockingIOError:
                    pass
        finally:
            self.cq.arm(False)

    def wait_some(self, limit: int = 1 << 30, spins: int = 0, stop=None) -> list[tuple]:
        """At least one completion: `spins` polls (yielding the CPU between
        them), then block on the CQ's interrupt vector until one arrives, or
        return [] once `stop()` says so (checked every 50 ms at most)."""
        for _ in range(spins):
            out = self.reap_raw(limit)
            if out:
                return out
            os.sched_yield()
        while True:
            out = self.reap_raw(limit)
            if out:
                return out
            if stop is not None and stop():
                return []
            self._block(None)

    def wait_blocking(self, spins: int = 0) -> list[tuple]:
        """At least one completion, for a queue whose interrupt vector nobody
        else waits on and whose fd was made blocking (os.set_blocking): after
        `spins` polls (sched_yield between them) arm the CQ and sleep in one
        read(2) of the vector, not poll(2) then read(2). No timeout: like
        wait_some(stop=None), it waits as long as the drive takes."""
        for _ in range(spins):
            out = self.reap_raw()
            if out:
                return out
            os.sched_yield()
        cq, fd = self.cq, self.vector_fd
        while True:
            out = self.reap_raw()
            if out:
                return out
            cq.arm(True)
            try:
                if not cq.ready():
                    os.eventfd_read(fd)
            finally:
                cq.arm(False)

    def reap(self, limit: int = 1 << 30) -> list[Completion]:
        return [Completion(*e) for e in self.reap_raw(limit)]

    def wait(self, count: int = 1, timeout: float | None = COMMAND_TIMEOUT_S) -> list[Completion]:
        return [Completion(*e) for e in self.wait_raw(count, timeout)]

    def execute(self, opc, **kw) -> Completion:
        """Submit one command and wait for it (nothing else may be outstanding).

        Spins only for an opcode whose last round trip was shorter than the
        spin budget: a command that ran longer (an attend over a long context)
        will again, and spinning through it takes a core from the drive's
        kernel threads on a small machine; blocking costs one wake-up."""
        t0 = time.monotonic_ns()
        self.submit(opc, **kw)
        spin = SPIN_NS if self._last_ns.get(opc, 0) <= SPIN_NS else 0
        e = self.wait_raw(1, spin_ns=spin)[0]
        self._last_ns[opc] = time.monotonic_ns() - t0
        return Completion(*e)
