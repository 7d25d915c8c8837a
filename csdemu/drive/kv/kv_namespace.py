"""A KV namespace: decodes the vendor KV commands (81h-84h) into store and
engine calls. It belongs to the client that created it."""
from __future__ import annotations

import numpy as np

from csdemu.drive.kv.engine import MediaReadError
from csdemu.drive.kv.layout import KVShape
from csdemu.drive.kv.store import KVStore, StoreFull
from csdemu.drive.namespace import Request, Result
from nvme_cmds import identify as idf
from nvme_cmds.errlog import SQE_MPTR, ErrorStatus, location
from nvme_cmds.kv import (ATTEND_APPEND, ATTEND_RSVD, ATTEND_RSVD_SHIFT, BATCH, CDW10_RSVD_HI,
                          CDW12_RSVD_HI, COUNT, LAYER, MAX_SEQ_TOKENS, MODE, R,
                          RECLAIM_RSVD, SEQ_ID, SEQ_ID_LO, TOKENS, WINDOW, AttendMode, KVReason,
                          csi)
from nvme_cmds.kv import K as K_FIELD
from nvme_cmds.opcodes import VendorIoOpcode as Op
from nvme_cmds.status import Status

F32 = 4
SEQ_IDS = location(SQE_MPTR)


def bad(field, reason: KVReason = KVReason.RANGE, index: int = 0,
        status: int = Status.INVALID_FIELD) -> ErrorStatus:
    """`status`, naming `field` (a nvme_cmds.kv.Field, or a location) and why."""
    loc = field if isinstance(field, int) else field.loc
    return ErrorStatus(status, loc, csi(reason, index))


def no_room(e: StoreFull, index: int = 0) -> ErrorStatus:
    return bad(SEQ_IDS, e.reason, index, Status.CAPACITY_EXCEEDED)


class KVNamespace:
    kind = "kv"
    nvm = False                 # NVM I/O opcodes are not accepted here

    def __init__(self, nsid: int, shape: KVShape, store: KVStore, engine, owner: int):
        self.nsid, self.shape, self.store, self.engine, self.owner = nsid, shape, store, engine, owner
        self.lba_size = shape.page_bytes
        self.nlbas = 0
        self.out = np.zeros(0, np.float32)
        self.closed = False

    # ------------------------------------------------------------ lengths
    def data_lengths(self, opc: int, cdw: tuple) -> tuple[int, int, int, int]:
        st = self._check_fields(opc, cdw)
        if st:
            return st, 0, 0, 0
        s = self.shape
        token_bytes = s.kv_heads * s.head_dim * s.elem_bytes
        batch = cdw[1]
        if opc == Op.KV_APPEND:
            return 0, 2 * batch * (cdw[0] >> 16) * token_bytes, 0, batch * SEQ_ID.itemsize
        if opc == Op.KV_READ:
            return 0, 0, 2 * cdw[4] * token_bytes, 0
        if opc == Op.ATTEND:
            qbytes = batch * s.q_heads * s.head_dim * F32
            kv_bytes = 2 * batch * token_bytes if cdw[0] & ATTEND_APPEND else 0
            return 0, qbytes, qbytes, batch * SEQ_ID.itemsize + kv_bytes
        return 0, 0, 0, batch * SEQ_ID.itemsize           # RECLAIM

    def _check_fields(self, opc: int, cdw: tuple) -> int:
        """0, or Invalid Field (Invalid Opcode) naming the first bad field."""
        s = self.shape
        c10, batch = cdw[0], cdw[1]
        if opc == Op.RECLAIM:
            return bad(RECLAIM_RSVD, KVReason.RESERVED) if c10 else bad(BATCH) if not batch else 0
        if opc not in _HANDLERS:
            return Status.INVALID_OPCODE
        if (c10 & 0xFFFF) >= s.layers:
            return bad(LAYER)
        if opc == Op.KV_READ:
            return (bad(CDW10_RSVD_HI, KVReason.RESERVED) if c10 >> 16
                    else bad(COUNT) if not cdw[4] else 0)
        if not batch or batch > self.store.max_seqs:
            return bad(BATCH)
        if opc == Op.KV_APPEND:
            return 0 if c10 >> 16 else bad(TOKENS)
        # ATTEND
        mode = (c10 >> 16) & 0xFF
        if c10 >> ATTEND_RSVD_SHIFT:
            return bad(ATTEND_RSVD, KVReason.RESERVED)
        if mode == AttendMode.DENSE:
            for field, value in ((R, cdw[2]), (K_FIELD, cdw[3]), (WINDOW, cdw[4])):
                if value:                   # SparF's parameters: reserved in a dense attend
                    return bad(field, KVReason.RESERVED)
            return 0
        if mode != AttendMode.SPARF or not s.sparse:
            return bad(MODE)
        if cdw[2] >> 16:
            return bad(CDW12_RSVD_HI, KVReason.RESERVED)
        return 0 if 1 <= cdw[2] <= s.head_dim else bad(R)

    # ------------------------------------------------------------ commands
    def process_io(self, req: Request) -> Result:
        ftl = self.engine.ftl
        if req.arrival_ns > ftl.floor:
            # Nothing later starts before this arrival (as for flash commands).
            # Without it every bus keeps BUS_SLOTS stale intervals, and charging
            # an attend's thousands of reads scans and merges them each time.
            ftl.floor = req.arrival_ns
            ftl.clocks.forget_before(req.arrival_ns)
        try:
            return _HANDLERS[req.opcode](self, req)
        except StoreFull as e:
            return Result(no_room(e), req.arrival_ns)
        except MediaReadError:
            return Result(Status.UNRECOVERED_READ_ERROR, req.arrival_ns)

    def _seq_ids(self, req) -> np.ndarray:
        return np.frombuffer(req.meta, SEQ_ID)

    def append(self, req: Request) -> Result:
        s = self.shape
        layer, tokens = req.cdw[0] & 0xFFFF, req.cdw[0] >> 16
        ids = self._seq_ids(req)
        kv = np.frombuffer(req.data, s.storage).reshape(2, len(ids), tokens, s.kv_heads, s.head_dim)
        t_in = self.engine.ftl.pcie(req.arrival_ns, len(req.data))
        st = self._append(layer, ids, kv, t_in)
        return Result(st, t_in) if st else Result(done_ns=t_in)

    def _append(self, layer: int, ids: np.ndarray, kv: np.ndarray, t_in: int) -> int:
        """kv [2, batch, tokens, H, D] into each sequence's layer; -> status.
        A batch that does not fit (sequence limit, DRAM, length) changes nothing."""
        store = self.store
        tokens = kv.shape[2]
        programmed = store.pages_programmed
        seqs = self._existing(ids) if tokens == 1 else None
        if seqs is not None and all(q.length[layer] < MAX_SEQ_TOKENS for q in seqs):
            store.append_token(seqs, layer, kv[0, :, 0], kv[1, :, 0], t_in)
        else:
            st = self._make_room(layer, ids.tolist(), tokens, t_in)
            if st:
                return st
            for b, sid in enumerate(ids.tolist()):
                store.append(store.seqs[sid], layer, kv[0, b], kv[1, b], t_in)
        st = self.engine.stats.c
        st["appends"] += 1
        st["tokens_appended"] += tokens * len(ids)
        st["pages_programmed"] += store.pages_programmed - programmed
        return 0

    def _make_room(self, layer: int, ids: list, tokens: int, now: int) -> int:
        """Check every sequence of the batch can take `tokens` more and
        create the new ones; -> 0, or Capacity Exceeded with nothing done."""
        store = self.store
        new = [sid for sid in dict.fromkeys(ids) if sid not in store.seqs]
        if len(store.seqs) + len(new) > store.max_seqs:
            return bad(SEQ_IDS, KVReason.SEQ_LIMIT, ids.index(new[0]), Status.CAPACITY_EXCEEDED)
        grow: dict[int, int] = {}
        for sid in ids:
            grow[sid] = grow.get(sid, 0) + tokens
        for sid, n in grow.items():
            seq = store.seqs.get(sid)
            if (int(seq.length[layer]) if seq is not None else 0) + n > MAX_SEQ_TOKENS:
                return bad(SEQ_IDS, KVReason.SEQ_TOO_LONG, ids.index(sid), Status.CAPACITY_EXCEEDED)
        made = []
        try:
            for sid in new:
                store.get(sid, create=True)
                made.append(sid)
        except StoreFull as e:
            for sid in made:
                store.reclaim(sid, now)
            return no_room(e, ids.index(new[len(made)]))
        return 0

    def _existing(self, ids: np.ndarray) -> list | None:
        """The batch's sequences if all exist and none repeats (what the
        batched one-token append needs), else None."""
        get = self.store.seqs.get
        seqs = [get(i) for i in ids.tolist()]
        if None in seqs or len({id(q) for q in seqs}) != len(seqs):
            return None
        return seqs

    def attend(self, req: Request) -> Result:
        s = self.shape
        batch, layer = req.cdw[1], req.cdw[0] & 0xFFFF
        sparse = None
        if (req.cdw[0] >> 16) & 0xFF == AttendMode.SPARF:
            sparse = (req.cdw[2], req.cdw[3], req.cdw[4])          # r, k, window
        ids = np.frombuffer(req.meta, SEQ_ID, count=batch)
        start = req.arrival_ns
        if req.cdw[0] & ATTEND_APPEND:            # the decode step's new token first
            kv = np.frombuffer(req.meta, s.storage, offset=batch * SEQ_ID.itemsize)
            start = self.engine.ftl.pcie(start, kv.nbytes)
            st = self._append(layer, ids, kv.reshape(2, batch, 1, s.kv_heads, s.head_dim), start)
            if st:
                return Result(st, req.arrival_ns)
        seqs = [self.store.get(i) for i in ids.tolist()]
        for b, q in enumerate(seqs):
            # Attention over nothing has no answer: an empty layer is unwritten data.
            if q is None:
                return Result(bad(SEQ_IDS, KVReason.NO_SEQUENCE, b), req.arrival_ns)
            if not q.length[layer]:
                return Result(bad(LAYER, KVReason.NO_TOKENS, b, Status.DEALLOCATED_OR_UNWRITTEN),
                              req.arrival_ns)
        if not self.store.intact(seqs, layer, dims=sparse is not None):
            self.engine.ftl.counters["crc_errors"] += 1
            return Result(Status.UNRECOVERED_READ_ERROR, req.arrival_ns)
        q = np.frombuffer(req.data, np.float32).reshape(batch, s.q_heads, s.head_dim)
        n = q.size
        if self.out.size < n:
            self.out = np.zeros(n, np.float32)
        out = self.out[:n].reshape(q.shape)
        done = self.engine.attend(self.store, seqs, layer, q, out, start, sparse)
        return Result(done_ns=done, data=out)

    def read(self, req: Request) -> Result:
        layer, sid = req.cdw[0] & 0xFFFF, req.cdw[1] | (req.cdw[2] << 32)
        start, count = req.cdw[3], req.cdw[4]
        seq = self.store.get(sid)
        if seq is None:
            return Result(bad(SEQ_ID_LO, KVReason.NO_SEQUENCE), req.arrival_ns)
        if start + count > seq.length[layer]:
            return Result(bad(COUNT, status=Status.LBA_OUT_OF_RANGE), req.arrival_ns)
        ok, k, v, done = self.store.read(seq, layer, start, count, req.arrival_ns)
        if not ok:
            return Result(Status.UNRECOVERED_READ_ERROR, done)
        data = np.concatenate([k.reshape(-1), v.reshape(-1)]).view(np.uint8)
        return Result(done_ns=self.engine.ftl.pcie(done, data.nbytes), data=data)

    def reclaim(self, req: Request) -> Result:
        t = req.arrival_ns
        n = 0
        for sid in self._seq_ids(req).tolist():
            if sid in self.store.seqs:
                t = max(t, self.store.reclaim(sid, req.arrival_ns))
                n += 1
        self.engine.stats.c["reclaims"] += n
        return Result(done_ns=t, dw0=n)

    # ------------------------------------------------------------ the rest of Namespace
    def identify(self) -> bytes:
        rec = np.zeros(1, idf.ID_NS)
        rec["lbaf0_lbads"] = self.lba_size.bit_length() - 1
        rec["kind"] = b"kv"
        return rec.tobytes()

    def health(self) -> dict:
        return {}

    def log_page(self, lid: int):
        return None

    def close(self) -> None:
        """Drop every sequence; safe in any state (the flash may have closed
        first at shutdown, a command may have been cut short) and twice."""
        if not self.closed:
            self.closed = True
            self.store.close()


_HANDLERS = {Op.KV_APPEND: KVNamespace.append, Op.ATTEND: KVNamespace.attend,
             Op.KV_READ: KVNamespace.read, Op.RECLAIM: KVNamespace.reclaim}
_HANDLERS = {int(k): v for k, v in _HANDLERS.items()}
