"""The controller: fetches commands from every queue, moves data, dispatches
to admin handlers or namespaces, and posts completions.

It never touches NAND or the FTL: an I/O command goes to a namespace through
`process_io(Request) -> Result` (csdemu.drive.namespace), which returns the
modeled completion time. In virtual mode the CQE is posted at once; in
realtime mode it is held in a heap until the controller clock reaches it,
as FEMU does.
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

import numpy as np

from csdemu.drive import admin
from csdemu.drive.dma import dma_from_host, dma_to_host
from csdemu.drive.namespace import Request
from csdemu.transport.qpair import CONTROL_BYTES
from nvme_cmds.features import TimingMode
from nvme_cmds.nvm import CDW12_FUA, nlb, nvm_data_lengths
from nvme_cmds.opcodes import NvmOpcode, VendorIoOpcode
from nvme_cmds.spec import FLAGS_FUSE_MASK, FLAGS_PSDT_SHIFT, FLAGS_RSVD_MASK
from nvme_cmds.status import DNR_BIT, Status, split_status

BATCH = 64        # SQEs fetched per queue per pass (fairness between queues)


@dataclass
class ControllerConfig:
    mdts_bytes: int = 8 << 20
    timing_mode: int = TimingMode.VIRTUAL
    serial: str = "CSDEMU0001"
    model: str = "csdemu computational storage drive"
    profile_name: str = ""


def status_field(status: int) -> int:
    """CQE DW3 upper half without the phase bit."""
    sct, sc = split_status(status)
    return (sc << 1) | (sct << 9) | (DNR_BIT if status else 0)


_SUCCESS_FIELD = status_field(Status.SUCCESS)
_REALTIME = int(TimingMode.REALTIME)
_mono = time.monotonic_ns


class Counters:
    def __init__(self):
        self.host_read_commands = 0
        self.host_write_commands = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.media_errors = 0
        self.commands = 0
        self.busy_ns = 0


class Controller:
    def __init__(self, config: ControllerConfig, namespaces: dict, device_info: dict | None = None):
        self.config = config
        self.namespaces = dict(namespaces)      # nsid -> Namespace
        self.owners: dict[int, int] = {}        # nsid -> owning client id (KV namespaces)
        self.device_info = device_info or {}
        self.counters = Counters()
        self.features: dict[int, int] = {}
        self.held: list = []                    # realtime heap of (done_ns, seq, session, ...)
        self._seq = 0
        self.epoch = 0            # bumped when the modeled timeline restarts (timing mode switch)
        self.bounce = np.zeros(config.mdts_bytes, np.uint8)
        self.bounce_addr = self.bounce.ctypes.data
        self.lifetime = None      # csdemu.drive.lifetime.Lifetime: SMART power-on counters
        self.kv = None            # the KV layer (csdemu.drive.kv.manager.KVManager): C1h/C4h, log C1h

    # ------------------------------------------------------------ fetching
    def poll(self, session) -> int:
        """One pass over a client's submission queues; returns commands handled."""
        n = 0
        w32 = session.arena.w32
        busy = set()
        for sq in list(session.sqs.values()):
            # An idle queue is the common case of a pass: its doorbell alone
            # says so, unless completions wait for room in its CQ.
            cq = sq.cq
            if w32[sq.db_word] == sq.head and (cq is None or not cq.backlog):
                continue
            if cq is None:
                # An SQ's CQ is fixed and outlives it (Delete I/O CQ refuses
                # a CQ with SQs), so the lookup is done once.
                cq = sq.cq = session.cqs.get(sq.cqid)
                if cq is None:
                    continue
            if cq.backlog:
                self._drain_backlog(session, cq)
                if cq.backlog:
                    continue
            room = cq.room()
            if room <= 0:
                continue
            cmds = sq.fetch(BATCH if room > BATCH else room)
            if not cmds:
                continue
            n += len(cmds)
            busy.add(cq)
            if sq.qid == 0:
                for cmd in cmds:
                    self._admin(session, sq, cq, cmd)
            else:
                io, before = self._io, sq.consumed_before
                for i, cmd in enumerate(cmds):
                    io(session, sq, cq, cmd, before(i))
        if session.pending_cqs:
            n += self._release_pending(session, busy)
        return n

    # ------------------------------------------------------------ completing
    def complete(self, session, sq, cq, cid, status, dw0=0, dw1=0,
                 arrival_ns=0, done_ns=0, release=True):
        if status and split_status(status)[0] == 2:
            self.counters.media_errors += 1
        device_ns = done_ns - arrival_ns if done_ns > arrival_ns else 0
        if self.config.timing_mode == _REALTIME:
            if done_ns > _mono():
                if release:
                    sq.inflight[cid] = 1
                self._seq += 1
                heapq.heappush(self.held, (done_ns, self._seq, session, sq, cq, cid, status,
                                           dw0, dw1, device_ns, release))
                return
            return self._post(session, sq, cq, cid, status, dw0, dw1, device_ns, release, done_ns)
        # Virtual: posted at once, but in modeled-time order (_release_pending);
        # nothing to order when nothing waits and the time is already past.
        if not cq.pending and done_ns <= _mono():
            return self._post(session, sq, cq, cid, status, dw0, dw1, device_ns, release, done_ns)
        if release:
            sq.inflight[cid] = 1
        self._seq += 1
        heapq.heappush(cq.pending, (done_ns, self._seq, sq, cid, status, dw0, dw1, device_ns,
                                    release))
        session.pending_cqs.add(cq)

    def _release_pending(self, session, busy) -> int:
        """Post virtual-mode completions in modeled-time order. Those due by
        the wall clock go at once: whatever arrives later arrives after now
        and cannot finish before them. Of the rest, ahead of the wall clock,
        each CQ whose SQs brought nothing new this pass posts its earliest
        (all that share that time): one step of modeled time. So a host sees
        its completions in the order the modeled drive finishes them, as in
        realtime mode, however far the emulator runs ahead, and a command it
        submits in answer arrives at that completion's time (arrival()), not
        at the latest of a batch the emulator finished in another order.
        Returns CQEs posted."""
        n = 0
        now = _mono()
        for cq in list(session.pending_cqs):
            pend = cq.pending
            due = pend[0][0] if now < pend[0][0] and cq not in busy else now
            while pend and pend[0][0] <= due:
                done, _, sq, cid, status, dw0, dw1, device_ns, release = heapq.heappop(pend)
                self._post(session, sq, cq, cid, status, dw0, dw1, device_ns, release, done)
                n += 1
            if not pend:
                session.pending_cqs.discard(cq)
        return n

    def flush_pending(self, session) -> None:
        """Post every pending virtual-mode completion of `session` (shutdown)."""
        while session.pending_cqs:
            self._release_pending(session, ())

    def drop_pending(self, session, sq) -> None:
        """Forget the pending completions of a deleted SQ."""
        cq = sq.cq or session.cqs.get(sq.cqid)
        if cq is not None and cq.pending:
            cq.pending[:] = [p for p in cq.pending if p[2] is not sq]
            heapq.heapify(cq.pending)
            if not cq.pending:
                session.pending_cqs.discard(cq)

    def _post(self, session, sq, cq, cid, status, dw0, dw1, device_ns, release, done_ns):
        if release:
            sq.inflight[cid] = 0
        field = _SUCCESS_FIELD if status == 0 else status_field(status)
        if cq.backlog or cq.room() <= 0:
            cq.backlog.append((dw0, dw1, sq.head, sq.qid, cid, field, device_ns, done_ns))
            return
        cq.post(dw0, dw1, sq.head, sq.qid, cid, field, device_ns, done_ns)
        session.interrupt(cq)

    def _drain_backlog(self, session, cq):
        room = cq.room()
        k = min(room, len(cq.backlog))
        for entry in cq.backlog[:k]:
            cq.post(*entry)
        del cq.backlog[:k]
        if k:
            session.interrupt(cq)

    def release_due(self, now_ns: int) -> int | None:
        """Post held completions whose time has come; return the next due time."""
        held = self.held
        while held and held[0][0] <= now_ns:
            done, _, session, sq, cq, cid, status, dw0, dw1, dev_ns, release = heapq.heappop(held)
            if session.closed:
                continue
            self._post(session, sq, cq, cid, status, dw0, dw1, dev_ns, release, done)
        return held[0][0] if held else None

    def abort_held(self, session, sqid: int, cid: int) -> bool:
        for i, item in enumerate(self.held):
            if item[2] is session and item[3].qid == sqid and item[5] == cid:
                self.held[i] = (0,) + item[1:6] + (Status.ABORT_REQUESTED,) + item[7:]
                heapq.heapify(self.held)
                return True
        return False

    def ns_access(self, session, nsid: int) -> int:
        """0 if `session` may use namespace `nsid`; a KV namespace is its owner's alone."""
        if nsid not in self.namespaces:
            return Status.INVALID_NAMESPACE
        owner = self.owners.get(nsid)
        return Status.ACCESS_DENIED if owner is not None and owner != session.id else 0

    def visible(self, session, nsid: int) -> bool:
        return self.ns_access(session, nsid) == 0

    def drop_session(self, session):
        self.held = [h for h in self.held if h[2] is not session]
        heapq.heapify(self.held)
        for nsid in [n for n, owner in self.owners.items() if owner == session.id]:
            self.delete_namespace(nsid)

    def delete_namespace(self, nsid: int):
        ns = self.namespaces.pop(nsid, None)
        self.owners.pop(nsid, None)
        if ns is not None:
            ns.close()

    # ------------------------------------------------------------ data
    def check_flags(self, flags: int) -> int:
        if flags & (FLAGS_RSVD_MASK | FLAGS_FUSE_MASK):
            return Status.INVALID_FIELD
        if (flags >> FLAGS_PSDT_SHIFT) > 1:
            return Status.INVALID_FIELD
        return 0

    def _locate(self, session, flags, addr, sgl_len, length):
        """-> (status, arena offset or -1 for PRP)."""
        if length > self.config.mdts_bytes:
            return Status.INVALID_FIELD, 0
        if flags >> FLAGS_PSDT_SHIFT:                   # SGL data block in the arena
            return self._sgl_status(session, addr, sgl_len, length), addr
        if addr & 3:
            return Status.PRP_OFFSET_INVALID, 0
        if not session.iommu.allows(addr, length):
            return Status.DATA_TRANSFER_ERROR, 0
        return 0, -1

    @staticmethod
    def _sgl_status(session, addr, sgl_len, length) -> int:
        """0 if one SGL data block descriptor (address `addr` in the arena,
        length field `sgl_len`) holds `length` bytes."""
        if (sgl_len >> 60) & 0xF != 0:
            return Status.SGL_DESCRIPTOR_TYPE_INVALID
        if (sgl_len & 0xFFFFFFFF) < length:
            return Status.DATA_SGL_LENGTH_INVALID
        if addr < CONTROL_BYTES or addr + length > session.size:
            return Status.DATA_TRANSFER_ERROR
        return 0

    def arena_slice(self, session, off, length):
        """A small payload the client left in its arena (vendor metadata)."""
        if length > self.config.mdts_bytes or off < CONTROL_BYTES or off + length > session.size:
            return Status.DATA_TRANSFER_ERROR, None
        return 0, memoryview(session.mm)[off:off + length]

    def data_in(self, session, flags, addr, sgl_len, length):
        """Host→device payload -> (status, memoryview)."""
        st, off = self._locate(session, flags, addr, sgl_len, length)
        if st:
            return st, None
        if off >= 0:
            return 0, memoryview(session.mm)[off:off + length]
        if not dma_from_host(session.pid, addr, self.bounce_addr, length):
            return Status.DATA_TRANSFER_ERROR, None
        return 0, memoryview(self.bounce)[:length]

    def data_out(self, session, flags, addr, sgl_len, data, length) -> int:
        st, off = self._locate(session, flags, addr, sgl_len, length)
        if st:
            return st
        src = data if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
        if src.nbytes < length:
            return Status.INTERNAL_ERROR
        if off >= 0:
            # a slice of the arena's mmap takes the bytes in one memcpy, a few
            # microseconds sooner per command than a numpy slice assignment
            session.mm[off:off + length] = src.reshape(-1).view(np.uint8)[:length]
            return 0
        if not src.flags.c_contiguous:
            src = np.ascontiguousarray(src)
        if not dma_to_host(session.pid, addr, src.ctypes.data, length):
            return Status.DATA_TRANSFER_ERROR
        return 0

    # ------------------------------------------------------------ arrival
    def arrival(self, cq, consumed: int = 0) -> int:
        """When a command fetched now for `cq` arrives in modeled time: now,
        but in virtual mode no earlier than the latest modeled completion its
        host had consumed from that CQ when it wrote the command (`consumed`
        CQEs, as its SQ slot says; else as far as the CQ head doorbell says
        now). The emulator runs ahead of the drive, so the wall clock alone
        would have a dependent command arrive before the work it waited for
        had finished (docs/architecture.md, "Timing modes")."""
        now = _mono()
        if self.config.timing_mode == _REALTIME:
            cq.horizon()             # keeps the consumed count; the time is never ahead
            return now
        if cq.epoch != self.epoch:
            cq.epoch = self.epoch
            cq.forget_horizon()
        hz = cq.horizon_at(consumed) if consumed else cq.horizon()
        return hz if hz > now else now

    # ------------------------------------------------------------ admin
    def _admin(self, session, sq, cq, cmd):
        cid = cmd[2]
        arrival = self.arrival(cq)
        if sq.inflight[cid]:
            return self.complete(session, sq, cq, cid, Status.CID_CONFLICT,
                                 arrival_ns=arrival, done_ns=arrival, release=False)
        status, dw0, dw1 = admin.handle(self, session, cmd)
        if status is None:          # held (Async Event Request)
            sq.inflight[cid] = 1
            return
        self.complete(session, sq, cq, cid, status, dw0, dw1, arrival, arrival)

    # ------------------------------------------------------------ I/O
    def _io(self, session, sq, cq, cmd, consumed=0):
        opc, flags, cid, nsid = cmd[0], cmd[1], cmd[2], cmd[3]
        arrival = self.arrival(cq, consumed)
        self.counters.commands += 1
        if sq.inflight[cid]:
            return self.complete(session, sq, cq, cid, Status.CID_CONFLICT,
                                 arrival_ns=arrival, done_ns=arrival, release=False)
        if opc == _NOP:
            st = self.check_flags(flags) or (self.ns_access(session, nsid) if nsid else 0)
            return self.complete(session, sq, cq, cid, st, arrival_ns=arrival, done_ns=arrival)
        if opc == _READ and flags == _SGL_ONLY and self._read_into(session, sq, cq, cmd, arrival):
            return
        st = self.ns_access(session, nsid)
        if st:
            return self.complete(session, sq, cq, cid, st, arrival_ns=arrival, done_ns=arrival)
        ns = self.namespaces[nsid]
        if opc < 0x80 and not getattr(ns, "nvm", True):
            return self.complete(session, sq, cq, cid, Status.INVALID_OPCODE,
                                 arrival_ns=arrival, done_ns=arrival)
        st = self.check_flags(flags)
        cdw = cmd[9:15]
        meta_len = 0
        if not st:
            if opc < 0x80:
                if opc not in _NVM_OPCODES:
                    st = Status.INVALID_OPCODE
                else:
                    in_len, out_len = nvm_data_lengths(opc, cdw[0], cdw[2], ns.lba_size)
            else:
                lengths = getattr(ns, "data_lengths", None)
                st, in_len, out_len, meta_len = (lengths(opc, cdw) if lengths
                                                 else (Status.INVALID_OPCODE, 0, 0, 0))
        if st:
            return self.complete(session, sq, cq, cid, st, arrival_ns=arrival, done_ns=arrival)
        data = meta = None
        if meta_len:
            st, meta = self.arena_slice(session, cmd[6], meta_len)
        if in_len and not st:
            st, data = self.data_in(session, flags, cmd[7], cmd[8], in_len)
        if st:
            return self.complete(session, sq, cq, cid, st, arrival_ns=arrival, done_ns=arrival)
        req = Request(opc, nsid, cdw, arrival, data, out_len, session.id,
                      bool(cdw[2] & CDW12_FUA) if opc < 0x80 else False, meta)
        try:
            res = ns.process_io(req)
        except Exception as exc:      # a namespace bug must not take the daemon down
            self.log_exception(exc)
            return self.complete(session, sq, cq, cid, Status.INTERNAL_ERROR,
                                 arrival_ns=arrival, done_ns=arrival)
        st = res.status
        if not st and out_len and res.data is not None:
            if in_len:     # bidirectional: PRP2, or with SGL the arena offset in CDW15
                out_addr, out_sgl = (cdw[5], 0xFFFFFFFF) if flags >> FLAGS_PSDT_SHIFT else (cmd[8], 0)
            else:
                out_addr, out_sgl = cmd[7], cmd[8]
            st = self.data_out(session, flags, out_addr, out_sgl, res.data, out_len)
        self._account(opc, in_len, out_len, st)
        self.complete(session, sq, cq, cid, st, res.dw0, res.dw1, arrival, max(res.done_ns, arrival))

    def _read_into(self, session, sq, cq, cmd, arrival) -> bool:
        """A Read into the arena whose namespace can place the data there
        itself (its optional read_into, see csdemu.drive.namespace): one call, no
        Request, no data_out. At QD1 this took a 4 KiB read's round trip
        from ~12.7 to ~9.5 us. False if this Read is not that case; nothing
        was done then, and _io goes on as for any command, reporting
        whatever is wrong with it."""
        nsid = cmd[3]
        ns = self.namespaces.get(nsid)
        read_into = getattr(ns, "read_into", None)
        if read_into is None or self.owners.get(nsid, session.id) != session.id:
            return False
        length = nlb(cmd[11]) * ns.lba_size
        addr = cmd[7]
        if length > self.config.mdts_bytes or self._sgl_status(session, addr, cmd[8], length):
            return False
        done = read_into(cmd[9], cmd[10], cmd[11], arrival, session.arena.u8[addr:addr + length])
        if done < 0:
            return False
        c = self.counters
        c.host_read_commands += 1
        c.bytes_read += length
        self.complete(session, sq, cq, cmd[2], 0, 0, 0, arrival, done if done > arrival else arrival)
        return True

    def _account(self, opc, in_len, out_len, st):
        c = self.counters
        if st:
            return
        if opc == NvmOpcode.READ:
            c.host_read_commands += 1
            c.bytes_read += out_len
        elif opc == NvmOpcode.WRITE:
            c.host_write_commands += 1
            c.bytes_written += in_len
        elif opc >= 0x80:
            c.bytes_read += out_len
            c.bytes_written += in_len

    def log_exception(self, exc):
        import traceback
        traceback.print_exception(exc)


_NVM_OPCODES = {int(o) for o in NvmOpcode}
_NOP = int(VendorIoOpcode.NOP)
_READ = int(NvmOpcode.READ)
_SGL_ONLY = 1 << FLAGS_PSDT_SHIFT        # PSDT 01b, no fused operation, no reserved bits
