"""Create / Delete KV Namespace (admin C1h / C4h) and the engine log (C1h page)."""
from __future__ import annotations

import itertools

import numpy as np

from csdemu.drive.kv.engine import Engine
from csdemu.drive.kv.layout import DramBudget, KVShape
from csdemu.drive.kv.kv_namespace import KVNamespace
from csdemu.drive.kv.store import KVStore
from nvme_cmds.errlog import NO_LOCATION, SQE_DPTR, SQE_NSID, ErrorStatus, location
from nvme_cmds.kv import (DTYPE_BYTES, FLAG_SPARSE_LAYOUT, FLAGS_VALID, KV_NS_DESC, KV_NSIDS,
                          MAX_KV_NS_PER_CLIENT, KVDtype, KVReason, csi)
from nvme_cmds.opcodes import VendorAdminOpcode
from nvme_cmds.status import Status

FIRST_KV_NSID = 2
MAX_NSID = FIRST_KV_NSID + KV_NSIDS
DEFAULT_MAX_SEQS = 256
MAX_SEQS = 4096
DEFAULT_DIMS_PER_PAGE = 1      # one head dim per page: SparF reads only the r dims it picked
FIRST_STREAM = 2          # streams 0 and 1 belong to the block FTL


class KVManager:
    """Owns the drive's attention engine and hands out KV namespaces."""

    def __init__(self, ftl, profile, engine_threads: int = 1):
        self.ftl, self.profile = ftl, profile
        self.engine = Engine(ftl, profile, engine_threads)
        self.dram = DramBudget(profile.engine.kv_dram_bytes)
        self._streams = itertools.count(FIRST_STREAM)

    def new_stream(self) -> int:
        return next(self._streams)

    def handle(self, ctrl, session, cmd):
        if cmd[0] == VendorAdminOpcode.CREATE_KV_NAMESPACE:
            return self.create(ctrl, session, cmd)
        return self.delete(ctrl, session, cmd)

    def shape_from(self, d) -> KVShape | str:
        """Validate a KV_NS_DESC record: its shape, or the name of the
        first field found wrong."""
        page = self.ftl.geom.page_bytes
        try:
            dtype = KVDtype(int(d["dtype"]))
        except ValueError:
            return "dtype"
        L, Hq, Hkv, D = (int(d[k]) for k in ("layers", "q_heads", "kv_heads", "head_dim"))
        flags = int(d["flags"])
        for name, value in (("layers", L), ("q_heads", Hq), ("kv_heads", Hkv), ("head_dim", D)):
            if not value:
                return name
        if Hq % Hkv:
            return "q_heads"
        if flags & ~FLAGS_VALID:
            return "flags"
        eb = DTYPE_BYTES[dtype]
        if page % (D * eb):
            return "head_dim"
        T = int(d["tokens_per_page"]) or page // (D * eb)
        if T * D * eb != page:
            return "tokens_per_page"
        sparse = bool(flags & FLAG_SPARSE_LAYOUT)
        Dp = int(d["dims_per_page"]) or min(DEFAULT_DIMS_PER_PAGE, D)
        if sparse and (D % Dp or page % (Dp * eb)):
            return "dims_per_page"
        Tp = page // (Dp * eb) if sparse else 0
        return KVShape(L, Hq, Hkv, D, dtype, T, sparse, Dp if sparse else 0, Tp, page)

    @staticmethod
    def sequence_dram(shape: KVShape) -> int:
        """Device DRAM one sequence of `shape` takes: its group buffers
        (K and V of every layer and head, plus the K copy's) and V sum."""
        s = shape
        slots = 2 * s.layers * s.kv_heads * s.page_bytes
        if s.sparse:
            slots += s.layers * s.kv_heads * s.dim_blocks * s.page_bytes
        return slots + s.layers * s.kv_heads * s.head_dim * 8

    def create(self, ctrl, session, cmd):
        st, data = ctrl.data_in(session, cmd[1], cmd[7], cmd[8], KV_NS_DESC.itemsize)
        if st:
            return st, 0, 0
        d = np.frombuffer(bytes(data), KV_NS_DESC)[0]
        shape = self.shape_from(d)
        max_seqs = int(d["max_seqs"]) or DEFAULT_MAX_SEQS
        if isinstance(shape, str) or max_seqs > MAX_SEQS:
            return _desc_error(Status.INVALID_FIELD, shape if isinstance(shape, str) else "max_seqs")
        if self.sequence_dram(shape) > self.dram.limit:
            # Not even one sequence would fit the drive's DRAM.
            return _desc_error(Status.NS_INSUFFICIENT_CAPACITY, "layers", KVReason.DRAM_FULL)
        mine = sum(1 for owner in ctrl.owners.values() if owner == session.id)
        if mine >= MAX_KV_NS_PER_CLIENT:
            return ErrorStatus(Status.NS_ID_UNAVAILABLE, NO_LOCATION, csi(KVReason.NS_LIMIT)), 0, 0
        nsid = next((n for n in range(FIRST_KV_NSID, MAX_NSID) if n not in ctrl.namespaces), None)
        if nsid is None:
            return ErrorStatus(Status.NS_ID_UNAVAILABLE, NO_LOCATION, csi(KVReason.NSID_FULL)), 0, 0
        store = KVStore(shape, self.ftl, max_seqs, self.new_stream, self.dram)
        ctrl.namespaces[nsid] = KVNamespace(nsid, shape, store, self.engine, session.id)
        ctrl.owners[nsid] = session.id
        return Status.SUCCESS, nsid, 0

    def delete(self, ctrl, session, cmd):
        nsid = cmd[3]
        ns = ctrl.namespaces.get(nsid)
        if not isinstance(ns, KVNamespace):
            return ErrorStatus(Status.INVALID_NAMESPACE, location(SQE_NSID)), 0, 0
        if ctrl.owners.get(nsid) != session.id:
            return ErrorStatus(Status.ACCESS_DENIED, location(SQE_NSID)), 0, 0
        ctrl.delete_namespace(nsid)
        return Status.SUCCESS, 0, 0

    def engine_log(self, ctrl) -> bytes:
        kvs = [ns for ns in ctrl.namespaces.values() if isinstance(ns, KVNamespace)]
        return self.engine.stats.as_log(len(kvs), sum(len(ns.store.seqs) for ns in kvs))


def _desc_error(status: int, field: str, reason: KVReason = KVReason.RANGE):
    """A bad KV_NS_DESC field: the location is the data pointer, the
    Command Specific Information the field's byte offset in the record."""
    return ErrorStatus(status, location(SQE_DPTR), csi(reason, KV_NS_DESC.fields[field][1])), 0, 0
