"""The controller: fetches commands from every queue, moves data, dispatches
to admin handlers or namespaces, and posts completions.

It never touches NAND or the FTL: an I/O command goes to a namespace through
`process_io(Request) -> Result` (csdemu.drive.namespace), which returns the
modeled completion time; when and in what order completions are posted,
and when a command arrives in modeled time, is completions.py's concern.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from csdemu.drive import admin
from csdemu.drive.completions import Completions
from csdemu.drive.dma import dma_from_host, dma_to_host
from csdemu.drive.error_log import log_error
from csdemu.drive.namespace import Request
from csdemu.transport.qpair import CONTROL_BYTES
from nvme_cmds.features import TimingMode
from nvme_cmds.nvm import CDW12_FUA, nlb, nvm_data_lengths
from nvme_cmds.opcodes import NvmOpcode, VendorIoOpcode
from nvme_cmds.spec import FLAGS_FUSE_MASK, FLAGS_PSDT_SHIFT, FLAGS_RSVD_MASK
from nvme_cmds.status import Status

BATCH = 64        # SQEs fetched per queue per pass (fairness between queues)


@dataclass
class ControllerConfig:
    mdts_bytes: int = 8 << 20
    timing_mode: int = TimingMode.VIRTUAL
    causal_arrival: bool = True   # False: arrival = fetch time (csdemu bench causal's "before")
    serial: str = "CSDEMU0001"
    model: str = "csdemu computational storage drive"
    profile_name: str = ""




class Counters:
    def __init__(self):
        self.host_read_commands = 0
        self.host_write_commands = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.media_errors = 0
        self.commands = 0
        self.busy_ns = 0


class Controller(Completions):
    def __init__(self, config: ControllerConfig, namespaces: dict, device_info: dict | None = None):
        self.config = config
        self.namespaces = dict(namespaces)      # nsid -> Namespace
        self.owners: dict[int, int] = {}        # nsid -> owning client id (KV namespaces)
        self.device_info = device_info or {}
        self.counters = Counters()
        self.features: dict[int, int] = {}
        self.held: list = []                    # realtime heap of (done_ns, seq, session, ...)
        self._seq = 0
        self.timeline_ns = 0      # when the modeled timeline last restarted
        self.epoch = 0            # bumped when the modeled timeline restarts (timing mode switch)
        self.bounce = np.zeros(config.mdts_bytes, np.uint8)
        self.bounce_addr = self.bounce.ctypes.data
        self.lifetime = None      # csdemu.drive.lifetime.Lifetime: SMART power-on counters
        self.kv = None            # the KV layer (csdemu.drive.kv.manager.KVManager): C1h/C4h, log C1h
        self.error_logs: dict = {}  # session id -> error_log.ErrorLog (log page 01h)
        self.tracer = None        # csdemu.drive.trace.Tracer while the drive traces

    def trace_to(self, tracer) -> None:
        """Record every I/O command's modeled intervals (`csdemu start --trace`).
        The traced paths are bound per instance, so an untraced drive runs
        exactly the code it ran before tracing existed."""
        self.tracer = tracer
        self._io = self._io_traced
        self.complete = self._complete_traced

    def _io_traced(self, session, sq, cq, cmd, *when):
        tracer = self.tracer
        tracer.begin(session.id, sq.qid, cmd)
        try:
            Controller._io(self, session, sq, cq, cmd, *when)
        finally:
            tracer.end()

    def _complete_traced(self, session, sq, cq, cid, status, dw0=0, dw1=0,
                         arrival_ns=0, done_ns=0, release=True):
        self.tracer.note(sq.qid, cid, status, arrival_ns, done_ns)
        return Completions.complete(self, session, sq, cq, cid, status, dw0, dw1, arrival_ns,
                                    done_ns, release)

    # ------------------------------------------------------------ fetching
    def poll(self, session) -> int:
        """One pass over a client's submission queues; returns commands handled."""
        n = 0
        w32 = session.arena.w32
        busy = ()                                # CQs whose SQs brought commands this pass
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
            busy = (*busy, cq)
            if sq.qid == 0:
                for cmd in cmds:
                    self._admin(session, sq, cq, cmd)
            else:
                io, written = self._io, sq.written
                for i, cmd in enumerate(cmds):
                    io(session, sq, cq, cmd, *written(i))
        if session.pending_cqs:
            n += self._release_pending(session, busy)
        return n

    def ns_access(self, session, nsid: int) -> int:
        """0 if `session` may use namespace `nsid`; a KV namespace is its owner's alone."""
        if nsid not in self.namespaces:
            return Status.INVALID_NAMESPACE
        owner = self.owners.get(nsid)
        return Status.ACCESS_DENIED if owner is not None and owner != session.id else 0

    def visible(self, session, nsid: int) -> bool:
        return self.ns_access(session, nsid) == 0

    def drop_session(self, session):
        self.error_logs.pop(session.id, None)
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
        if status:
            log_error(self, session, 0, cid, status, cmd[3], cmd[0])
        self.complete(session, sq, cq, cid, status, dw0, dw1, arrival, arrival)

    # ------------------------------------------------------------ I/O
    def _io(self, session, sq, cq, cmd, rung_ns=0, reaped_ns=0, consumed=0):
        opc, flags, cid, nsid = cmd[0], cmd[1], cmd[2], cmd[3]
        arrival = self.arrival(cq, consumed, rung_ns, reaped_ns)
        self.counters.commands += 1
        if sq.inflight[cid]:
            return self.complete(session, sq, cq, cid, Status.CID_CONFLICT,
                                 arrival_ns=arrival, done_ns=arrival, release=False)
        if opc == _NOP:
            st = self.check_flags(flags) or (self.ns_access(session, nsid) if nsid else 0)
            if st:
                return self._refuse(session, sq, cq, cmd, st, arrival)
            return self.complete(session, sq, cq, cid, 0, arrival_ns=arrival, done_ns=arrival)
        if opc == _READ and flags == _SGL_ONLY and self._read_into(session, sq, cq, cmd, arrival):
            return
        st = self.ns_access(session, nsid)
        if st:
            return self._refuse(session, sq, cq, cmd, st, arrival)
        ns = self.namespaces[nsid]
        if opc < 0x80 and not getattr(ns, "nvm", True):
            return self._refuse(session, sq, cq, cmd, Status.INVALID_OPCODE, arrival)
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
            return self._refuse(session, sq, cq, cmd, st, arrival)
        data = meta = None
        if meta_len:
            st, meta = self.arena_slice(session, cmd[6], meta_len)
        if in_len and not st:
            st, data = self.data_in(session, flags, cmd[7], cmd[8], in_len)
        if st:
            return self._refuse(session, sq, cq, cmd, st, arrival)
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
        if st:
            log_error(self, session, sq.qid, cid, st, nsid, opc)
        self.complete(session, sq, cq, cid, st, res.dw0, res.dw1, arrival, max(res.done_ns, arrival))

    def _refuse(self, session, sq, cq, cmd, st, arrival):
        """Complete a command that did no work (logging it if it failed)."""
        if st:
            log_error(self, session, sq.qid, cmd[2], st, cmd[3], cmd[0])
        return self.complete(session, sq, cq, cmd[2], st, arrival_ns=arrival, done_ns=arrival)

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
