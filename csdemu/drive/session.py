"""One attached client: its arena, queues, IOMMU and interrupt vectors."""
from __future__ import annotations

import mmap
import os
import time

import numpy as np

from csdemu.drive.dma import Iommu
from csdemu.transport.qpair import (ADMIN_CQ_OFF, ADMIN_DEPTH, ADMIN_SQ_OFF, CONTROL_BYTES,
                          NEED_WAKEUP_WORD, ArenaView, DeviceCQ, DeviceSQ, cq_bytes,
                          sq_bytes)

NUM_VECTORS = 16      # "MSI-X" vectors per client: eventfds the daemon signals


class Session:
    def __init__(self, client_id: int, sock, pid: int, uid: int, arena_bytes: int):
        self.id, self.sock, self.pid, self.uid = client_id, sock, pid, uid
        self.attached_at = time.time()
        self.closed = False
        self.arena_fd = os.memfd_create(f"csdemu-arena-{client_id}", os.MFD_CLOEXEC)
        os.ftruncate(self.arena_fd, arena_bytes)
        self.mm = mmap.mmap(self.arena_fd, arena_bytes)
        self.arena = ArenaView(self.mm, arena_bytes)
        self.kick_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.vector_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                           for _ in range(NUM_VECTORS)]
        self.iommu = Iommu()
        self.cqs: dict[int, DeviceCQ] = {}
        self.sqs: dict[int, DeviceSQ] = {}
        self.queue_spans: dict[tuple[str, int], tuple[int, int]] = {}
        self.aers: list[int] = []          # outstanding Async Event Request CIDs
        self.pending_cqs: set = set()      # CQs with virtual-mode completions to post
        self.scratch = np.zeros(8, np.uint8)
        self.add_cq(0, ADMIN_CQ_OFF, ADMIN_DEPTH, 0, True)
        self.add_sq(0, ADMIN_SQ_OFF, ADMIN_DEPTH, 0)

    @property
    def size(self) -> int:
        return self.arena.size

    def span_ok(self, kind: str, qid: int, off: int, nbytes: int) -> bool:
        """A new queue must lie in the client part of the arena and overlap no other queue."""
        if qid == 0:
            return True
        if off < CONTROL_BYTES or off % 64 or off + nbytes > self.size:
            return False
        return all(off + nbytes <= s or e <= off for s, e in self.queue_spans.values())

    def add_cq(self, qid, off, depth, vector, irq) -> DeviceCQ:
        cq = DeviceCQ(self.arena, qid, off, depth, vector, irq)
        self.cqs[qid] = cq
        self.queue_spans[("cq", qid)] = (off, off + cq_bytes(depth))
        self.arena.u8[off:off + cq_bytes(depth)] = 0
        self.arena.u32[(8 * qid + 4) // 4] = 0          # a new queue starts with head 0
        return cq

    def add_sq(self, qid, off, depth, cqid) -> DeviceSQ:
        sq = DeviceSQ(self.arena, qid, off, depth, cqid)
        self.sqs[qid] = sq
        self.cqs[cqid].sq_ids.add(qid)
        self.queue_spans[("sq", qid)] = (off, off + sq_bytes(depth))
        self.arena.u32[(8 * qid) // 4] = 0
        return sq

    def remove_sq(self, qid):
        sq = self.sqs.pop(qid)
        self.cqs[sq.cqid].sq_ids.discard(qid)
        del self.queue_spans[("sq", qid)]

    def remove_cq(self, qid):
        del self.cqs[qid]
        del self.queue_spans[("cq", qid)]

    def set_need_wakeup(self, on: bool):
        self.arena.u32[NEED_WAKEUP_WORD] = 1 if on else 0

    def interrupt(self, cq: DeviceCQ):
        if cq.irq_enabled and cq.armed():
            try:
                os.eventfd_write(self.vector_fds[cq.vector], 1)
            except OSError:
                pass

    def fds_to_send(self) -> list[int]:
        return [self.arena_fd, self.kick_fd] + self.vector_fds

    def close(self):
        self.closed = True
        self.sqs.clear()
        self.cqs.clear()
        self.arena.close()
        try:
            self.mm.close()
        except BufferError:
            pass   # a view is still alive somewhere; the GC closes it
        for fd in [self.arena_fd, self.kick_fd] + self.vector_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.sock.close()
        except OSError:
            pass
