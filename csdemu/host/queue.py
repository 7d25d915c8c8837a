"""The host side of a queue pair: CIDs, submission, reaping and waiting.

A Queue owns one SQ/CQ pair in the client's arena (csdemu.transport.qpair rings): CIDs
are slot indices handed out from a free list, completions are reaped in
batches, and a waiter spins briefly, then blocks on the CQ's interrupt
eventfd. The ArenaAllocator places queues and buffers in the arena.

Every wait has a deadline. A command whose wait runs out is aborted (Abort,
08h) and its CID stays taken until its completion arrives, which is then
dropped: a late completion is never handed to a later command. A daemon
that goes away wakes every waiter (csdemu.host.watch), which raises
DeviceGone.
"""
from __future__ import annotations

import math
import os
import select
import time

from csdemu.transport.errors import Completion, DeviceGone
from csdemu.transport.qpair import CQ_CID, CQ_SQHD, HostCQ, HostSQ
from nvme_cmds.opcodes import AdminOpcode, opcode_name

SPIN_NS = 200_000        # busy-poll this long before blocking on the interrupt fd
# Default command timeouts, as Linux's NVMe driver has them
# (drivers/nvme/host/core.c: nvme_core admin_timeout = 60, io_timeout = 30).
# Kernels are JIT-compiled by `csdemu warmup`, not inside a command, so no
# command of a warmed daemon comes near them.
ADMIN_TIMEOUT_S = 60.0
IO_TIMEOUT_S = 30.0
BLOCK_SLICE_S = 0.05     # longest single sleep of a waiter (a guard; wake-ups are prompt)


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


def command_name(opc: int, admin: bool) -> str:
    """"async event request", "write", ...: how errors name a command."""
    return opcode_name(opc, admin).lower().replace("_", " ")


class Queue:
    """One submission/completion queue pair with CIDs as slot indices."""

    def __init__(self, dev, qid: int, sq: HostSQ, cq: HostCQ, vector_fd: int,
                 timeout: float | None = None):
        self.dev, self.qid, self.sq, self.cq, self.vector_fd = dev, qid, sq, cq, vector_fd
        self.free_cids = list(range(sq.depth - 1, -1, -1))
        self.outstanding = 0
        # what a wait without its own timeout allows
        self.timeout = timeout if timeout is not None else (ADMIN_TIMEOUT_S if qid == 0
                                                            else IO_TIMEOUT_S)
        self._last_ns: dict[int, int] = {}      # opcode -> its last execute() round trip
        self._stash: list[tuple] = []           # reaped while execute() waited: the next reap's
        # CIDs of timed-out commands -> what to call when their completion
        # comes (releasing what they may still use); the completion is dropped
        self._abandoned: dict[int, object] = {}
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
        if self.dev.gone:
            self._raise_gone(opc)
        if self.outstanding >= self.sq.depth - 1:
            raise RuntimeError(f"queue {self.qid} is full ({self.outstanding} outstanding, "
                               f"{len(self._abandoned)} of them timed out)")
        cid = self.free_cids.pop()
        self.sq.push(opc, flags, cid, nsid, cdw2, cdw3, mptr, prp1, prp2,
                     cdw10, cdw11, cdw12, cdw13, cdw14, cdw15)
        self.outstanding += 1
        if ring:
            self.ring()
        return cid

    def submit_raw(self, entry: bytes, ring=True) -> None:
        """Queue 64 raw bytes as they are (tests, fuzzing). The caller owns the CID."""
        if self.dev.gone:
            self._raise_gone(entry[0])
        self.sq.push_raw(entry)
        self.outstanding += 1
        if ring:
            self.ring()

    def ring(self) -> None:
        if self.sq.ring():
            os.eventfd_write(self.dev.kick_fd, 1)

    # ------------------------------------------------------------ reaping
    def _pop(self, limit: int = 1 << 30) -> list[tuple]:
        """New CQEs off the CQ, their CIDs freed, late ones of aborted commands dropped."""
        out = self.cq.pop_batch(limit)
        if out:
            self.sq.head = out[-1][CQ_SQHD]
            for e in out:
                if e[CQ_CID] < self.sq.depth:
                    self.free_cids.append(e[CQ_CID])
            self.outstanding -= len(out)
            if self._abandoned:
                out = self._drop_late(out)
        return out

    def _drop_late(self, out: list[tuple]) -> list[tuple]:
        keep = []
        for e in out:
            if e[CQ_CID] in self._abandoned:
                release = self._abandoned.pop(e[CQ_CID])
                if release is not None:
                    release()
            else:
                keep.append(e)
        return keep

    def reap_raw(self, limit: int = 1 << 30) -> list[tuple]:
        out = self._pop(limit)
        if self._stash:
            out = self._stash + out
            self._stash = out[limit:]
            del out[limit:]
        return out

    def wait_raw(self, count: int = 1, timeout: float | None = None,
                 spin_ns: int = SPIN_NS) -> list[tuple]:
        """Reap until at least `count` completions arrived (spin, then block).
        After `timeout` s (None: the queue's default) what did arrive stays
        for the next reap, every command still outstanding is aborted, and
        TimeoutError is raised."""
        t = self.timeout if timeout is None else timeout
        out = self.reap_until(count, t, spin_ns)
        if len(out) < count:
            self._stash = out + self._stash
            cids = self._in_flight()
            self._abort(cids)
            raise TimeoutError(f"queue {self.qid}: timed out after {t:g} s with {len(out)} of "
                               f"{count} completions; aborted the {len(cids)} outstanding "
                               "command(s)")
        return out

    def reap_until(self, count: int, timeout: float | None,
                   spin_ns: int = SPIN_NS) -> list[tuple]:
        """Reap until `count` completions arrived or `timeout` s passed (spin,
        then block; None: no limit); -> what arrived, fewer than `count` on a
        timeout. Nothing is aborted."""
        out = self.reap_raw()
        if len(out) >= count:
            return out
        start = time.monotonic_ns()
        deadline = _deadline(start, timeout)
        while True:
            out += self.reap_raw()
            if len(out) >= count:
                return out
            now = time.monotonic_ns()
            if deadline is not None and now > deadline:
                return out
            if now - start > spin_ns:
                self._block(deadline)

    def _block(self, deadline, opc=None):
        """Sleep until the CQ's vector fires, at most until `deadline` (or a
        slice); DeviceGone if the daemon went away (the watcher wakes us)."""
        if self.dev.gone:
            self._raise_gone(opc)
        self.cq.arm(True)
        try:
            if self.cq.ready():
                return
            wait = BLOCK_SLICE_S if deadline is None else max(
                0.0, min(BLOCK_SLICE_S, (deadline - time.monotonic_ns()) / 1e9))
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
        read(2) of the vector, not poll(2) then read(2). No timeout: it waits
        as long as the drive takes, but a daemon that goes away wakes it
        (csdemu.host.watch writes the vector) and it raises DeviceGone."""
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
            if self.dev.gone:
                self._raise_gone(None)
            cq.arm(True)
            try:
                if not cq.ready():
                    os.eventfd_read(fd)
            finally:
                cq.arm(False)

    def reap(self, limit: int = 1 << 30) -> list[Completion]:
        return [Completion(*e) for e in self.reap_raw(limit)]

    def wait(self, count: int = 1, timeout: float | None = None) -> list[Completion]:
        return [Completion(*e) for e in self.wait_raw(count, timeout)]

    # ------------------------------------------------------------ one command
    def execute(self, opc, timeout: float | None = None, on_late=None, **kw) -> Completion:
        """Submit one command and wait for its completion; others reaped
        meanwhile stay for the next reap. After `timeout` s (None: the
        queue's default) the command is aborted and TimeoutError raised; its
        CID stays taken until its completion comes, which is then dropped
        after calling `on_late()` (to release buffers it may still use).

        Spins only for an opcode whose last round trip was shorter than the
        spin budget: a command that ran longer (an attend over a long context)
        will again, and spinning through it takes a core from the drive's
        kernel threads on a small machine; blocking costs one wake-up."""
        t0 = time.monotonic_ns()
        cid = self.submit(opc, **kw)
        spin = SPIN_NS if self._last_ns.get(opc, 0) <= SPIN_NS else 0
        e = self._await(cid, opc, self.timeout if timeout is None else timeout, spin, on_late)
        self._last_ns[opc] = time.monotonic_ns() - t0
        return Completion(*e)

    def _await(self, cid, opc, timeout, spin_ns, on_late) -> tuple:
        start = time.monotonic_ns()
        deadline = _deadline(start, timeout)
        while True:
            got = self._pop()
            if got:
                if len(got) == 1 and got[0][CQ_CID] == cid:
                    return got[0]
                mine = None
                for e in got:
                    if mine is None and e[CQ_CID] == cid:
                        mine = e
                    else:
                        self._stash.append(e)
                if mine is not None:
                    return mine
            now = time.monotonic_ns()
            if deadline is not None and now > deadline:
                self._abort([cid], on_late)
                raise TimeoutError(f"{command_name(opc, self.qid == 0)}: timed out after "
                                   f"{timeout:g} s (queue {self.qid}, CID {cid}); aborted")
            if now - start > spin_ns:
                self._block(deadline, opc)

    # ------------------------------------------------------------ timeouts
    def _in_flight(self) -> list[int]:
        return sorted(set(range(self.sq.depth)) - set(self.free_cids) - set(self._abandoned))

    def _abort(self, cids, on_late=None) -> None:
        """Abort commands whose wait ran out (Abort, 08h, on the admin queue),
        not waiting for the answer: the drive may be what is stuck. Their
        CIDs stay taken until their completions come, which are dropped."""
        for cid in cids:
            self._abandoned[cid] = on_late
        adm = self.dev.admin
        if self.dev.gone:
            return
        for cid in cids:
            if adm.outstanding >= adm.sq.depth - 1:
                return              # best effort, as Abort itself is
            acid = adm.submit(AdminOpcode.ABORT, cdw10=self.qid | (cid << 16))
            adm._abandoned[acid] = None

    def settle(self, timeout: float | None = None) -> None:
        """Wait until every timed-out command of this queue has completed: one
        that may still run must not find its buffers reused (the staging
        buffer, KV sequence ids). TimeoutError if the drive has not completed
        them within `timeout` s (None: the queue's default)."""
        if not self._abandoned:
            return
        t = self.timeout if timeout is None else timeout
        deadline = _deadline(time.monotonic_ns(), t)
        while True:
            self._stash += self._pop()
            if not self._abandoned:
                return
            if deadline is not None and time.monotonic_ns() > deadline:
                raise TimeoutError(f"queue {self.qid}: {len(self._abandoned)} timed-out "
                                   f"command(s) still not completed after {t:g} s more; "
                                   "their buffers are still in use")
            self._block(deadline)

    def _raise_gone(self, opc):
        # Wake whoever else sleeps on this vector: the watcher wrote it once.
        try:
            os.eventfd_write(self.vector_fd, 1)
        except OSError:
            pass
        what = command_name(opc, self.qid == 0) if opc is not None else f"queue {self.qid}"
        raise DeviceGone(what, self.dev.gone)


def _deadline(start_ns: int, timeout: float | None) -> int | None:
    if timeout is None or timeout == math.inf:
        return None
    return start_ns + int(timeout * 1e9)
