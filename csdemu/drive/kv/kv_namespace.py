"""A KV namespace: decodes the vendor KV commands (81h-84h) into store and
engine calls. It belongs to the client that created it."""
from __future__ import annotations

import numpy as np

from csdemu.drive.kv.engine import MediaReadError
from csdemu.drive.kv.layout import KVShape
from csdemu.drive.kv.store import KVStore, StoreFull
from csdemu.drive.namespace import Request, Result
from nvme_cmds import identify as idf
from nvme_cmds.kv import ATTEND_APPEND, SEQ_ID, AttendMode
from nvme_cmds.opcodes import VendorIoOpcode as Op
from nvme_cmds.status import Status

F32 = 4


class KVNamespace:
    kind = "kv"
    nvm = False                 # NVM I/O opcodes are not accepted here

    def __init__(self, nsid: int, shape: KVShape, store: KVStore, engine, owner: int):
        self.nsid, self.shape, self.store, self.engine, self.owner = nsid, shape, store, engine, owner
        self.lba_size = shape.page_bytes
        self.nlbas = 0
        self.out = np.zeros(0, np.float32)

    # ------------------------------------------------------------ lengths
    def data_lengths(self, opc: int, cdw: tuple) -> tuple[int, int, int, int]:
        s = self.shape
        layer = cdw[0] & 0xFFFF
        token_bytes = s.kv_heads * s.head_dim * s.elem_bytes
        if opc == Op.KV_APPEND:
            tokens, batch = cdw[0] >> 16, cdw[1]
            if layer >= s.layers or not tokens or not batch or batch > self.store.max_seqs:
                return Status.INVALID_FIELD, 0, 0, 0
            return 0, 2 * batch * tokens * token_bytes, 0, batch * SEQ_ID.itemsize
        if opc == Op.KV_READ:
            count = cdw[4]
            if layer >= s.layers or cdw[0] >> 16 or not count:
                return Status.INVALID_FIELD, 0, 0, 0
            return 0, 0, 2 * count * token_bytes, 0
        if opc == Op.ATTEND:
            batch, mode = cdw[1], (cdw[0] >> 16) & 0xFF
            if layer >= s.layers or not batch or batch > self.store.max_seqs or cdw[0] >> 25:
                return Status.INVALID_FIELD, 0, 0, 0
            if mode not in (AttendMode.DENSE, AttendMode.SPARF) or (mode == AttendMode.SPARF and not s.sparse):
                return Status.INVALID_FIELD, 0, 0, 0
            qbytes = batch * s.q_heads * s.head_dim * F32
            kv_bytes = 2 * batch * token_bytes if cdw[0] & ATTEND_APPEND else 0
            return 0, qbytes, qbytes, batch * SEQ_ID.itemsize + kv_bytes
        if opc == Op.RECLAIM:
            batch = cdw[1]
            if not batch or cdw[0]:
                return Status.INVALID_FIELD, 0, 0, 0
            return 0, 0, 0, batch * SEQ_ID.itemsize
        return Status.INVALID_OPCODE, 0, 0, 0

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
        except StoreFull:
            return Result(Status.CAPACITY_EXCEEDED, req.arrival_ns)
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
        """kv [2, batch, tokens, H, D] into each sequence's layer; -> status."""
        store = self.store
        tokens = kv.shape[2]
        programmed = store.pages_programmed
        seqs = self._existing(ids) if tokens == 1 else None
        if seqs is not None and all(q.length[layer] < (1 << 31) for q in seqs):
            store.append_token(seqs, layer, kv[0, :, 0], kv[1, :, 0], t_in)
        else:
            new = {int(i) for i in ids.tolist() if int(i) not in store.seqs}
            if len(store.seqs) + len(new) > store.max_seqs:
                return Status.CAPACITY_EXCEEDED
            for b, sid in enumerate(ids.tolist()):
                seq = store.get(sid, create=True)
                if seq.length[layer] + tokens > (1 << 31):
                    return Status.CAPACITY_EXCEEDED
                store.append(seq, layer, kv[0, b], kv[1, b], t_in)
        st = self.engine.stats.c
        st["appends"] += 1
        st["tokens_appended"] += tokens * len(ids)
        st["pages_programmed"] += store.pages_programmed - programmed
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
        mode, cdw12 = (req.cdw[0] >> 16) & 0xFF, req.cdw[2]
        sparse = None
        if mode == AttendMode.SPARF:
            r, window, k = cdw12 & 0xFFFF, cdw12 >> 16, req.cdw[3]
            if not 1 <= r <= s.head_dim:
                return Result(Status.INVALID_FIELD, req.arrival_ns)
            sparse = (r, k, window)
        elif cdw12 or req.cdw[3]:
            return Result(Status.INVALID_FIELD, req.arrival_ns)
        ids = np.frombuffer(req.meta, SEQ_ID, count=batch)
        start = req.arrival_ns
        if req.cdw[0] & ATTEND_APPEND:            # the decode step's new token first
            kv = np.frombuffer(req.meta, s.storage, offset=batch * SEQ_ID.itemsize)
            start = self.engine.ftl.pcie(start, kv.nbytes)
            st = self._append(layer, ids, kv.reshape(2, batch, 1, s.kv_heads, s.head_dim), start)
            if st:
                return Result(st, req.arrival_ns)
        seqs = [self.store.get(i) for i in ids.tolist()]
        if None in seqs:
            return Result(Status.INVALID_FIELD, req.arrival_ns)
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
            return Result(Status.INVALID_FIELD, req.arrival_ns)
        if start + count > seq.length[layer]:
            return Result(Status.LBA_OUT_OF_RANGE, req.arrival_ns)
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
        self.store.close()


_HANDLERS = {Op.KV_APPEND: KVNamespace.append, Op.ATTEND: KVNamespace.attend,
             Op.KV_READ: KVNamespace.read, Op.RECLAIM: KVNamespace.reclaim}
_HANDLERS = {int(k): v for k, v in _HANDLERS.items()}
