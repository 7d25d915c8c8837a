"""A KV namespace over an array of drives (csdemu.host.array).

Member i holds the kv heads (and, past one drive per kv head, the
sequences) csdemu.topology.plan gives it, in a KV namespace of its own
shaped for them. Every call takes the same arguments as
csdemu.host.kv.KVNamespace's and returns what one drive would: the array
checks them against the whole model's shape, hands each member its slice
(q heads follow their kv head), runs the members at once
(ArrayDevice.run) and joins the outputs by placement. Attention of one
(sequence, kv head) never needs another's, so the joined output equals one
drive's up to fp32 summation order (the members' pages sit on other
channels, so their partials merge in another order).

`kv.last` is an ArrayCompletion: `device_ns` is the array's modeled time
(csdemu.topology.array_time: the slowest member plus q out and outputs back
over the host links the drives share), `members` each member's own.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from csdemu.host import tensors
from csdemu.host.kv import SparF, attend_args, seq_id_array
from csdemu.topology import MemberStep, array_time, attend_io_bytes, plan, rows_for
from nvme_cmds.kv import DTYPE_NAMES, KVDtype


@dataclass(frozen=True)
class MemberTime:
    """One member's part of an array call."""
    member: int
    device_ns: int            # its modeled device time (summed over its commands)
    bytes_in: int             # host -> drive
    bytes_out: int            # drive -> host
    issued_ns: int            # monotonic wall clock: handed to the member's thread
    done_ns: int              # ... and its result back


class ArrayCompletion:
    """kv.last of an array call (duck-types a Completion's device_ns/ok)."""
    ok = True
    status = 0

    def __init__(self, time, members: list[MemberTime]):
        self.time, self.members = time, members

    @property
    def device_ns(self) -> int:
        return self.time.device_ns

    @property
    def slowest_ns(self) -> int:
        return self.time.slowest_ns

    @property
    def host_ns(self) -> int:
        return self.time.host_ns

    def __repr__(self):
        per = ", ".join(f"{m.member}: {m.device_ns}" for m in self.members)
        return (f"ArrayCompletion(device_ns={self.device_ns}, slowest={self.slowest_ns}, "
                f"host={self.host_ns}, members={{{per}}})")


@dataclass
class Part:
    member: int
    share: object              # csdemu.topology.Share
    ns: object                 # the member's KVNamespace


class ArrayKV:
    def __init__(self, array, parts: list[Part], layers: int, q_heads: int, kv_heads: int,
                 head_dim: int, dtype: KVDtype, sparse_layout: bool):
        self.array, self.parts = array, parts
        self.layers, self.q_heads, self.kv_heads, self.head_dim = layers, q_heads, kv_heads, head_dim
        self.dtype, self.sparse_layout = dtype, sparse_layout
        self.group = q_heads // kv_heads
        self.elem = 4 if dtype == KVDtype.FLOAT32 else 2
        self.last = None
        self._bufs: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    # ------------------------------------------------------------ plumbing
    def _layer(self, layer, what: str) -> int:
        if not 0 <= int(layer) < self.layers:
            raise ValueError(f"{what}: layer {layer} out of range 0..{self.layers - 1}")
        return int(layer)

    def _run(self, jobs: dict) -> dict:
        """{member: (fn, bytes_in, bytes_out)}, fn -> (result, device ns) ->
        {member: result}; sets self.last."""
        done = self.array.run({i: fn for i, (fn, _, _) in jobs.items()})
        times = [MemberTime(i, int(done[i][0][1]), jobs[i][1], jobs[i][2], done[i][1], done[i][2])
                 for i in sorted(done)]
        steps = [MemberStep(t.member, t.device_ns, t.bytes_in, t.bytes_out) for t in times]
        self.last = ArrayCompletion(array_time(self.array.topology, len(self.array), steps), times)
        return {i: r[0][0] for i, r in done.items()}

    def _split(self, ids: np.ndarray):
        """(part, rows or None, that part's ids) for every part holding some of `ids`."""
        for p in self.parts:
            rows = rows_for(p.share, ids)
            if rows is None:
                yield p, None, ids
            elif rows.size:
                yield p, rows, ids[rows]

    def _kv_check(self, k, v, what: str, tokens: int | None = None):
        bits = self.dtype == KVDtype.BFLOAT16        # a bf16 tensor stays its bits
        k, v = tensors.as_numpy(k, f"{what} k", bits), tensors.as_numpy(v, f"{what} v", bits)
        if k.ndim != 4 or k.shape != v.shape or k.shape[2:] != (self.kv_heads, self.head_dim) \
                or (tokens is not None and k.shape[1] != tokens):
            t = "tokens" if tokens is None else str(tokens)
            raise ValueError(f"{what}: k and v must both be [batch, {t}, {self.kv_heads}, "
                             f"{self.head_dim}]")
        return k, v

    # ------------------------------------------------------------ commands
    def append(self, layer: int, seq_ids, k, v) -> int:
        """Append k, v [batch, new_tokens, kv_heads, head_dim]; -> the
        array's modeled time (ns)."""
        layer = self._layer(layer, "kv append")
        k, v = self._kv_check(k, v, "kv append")
        ids = seq_id_array(seq_ids)
        if ids.size != k.shape[0]:
            raise ValueError(f"{ids.size} sequence ids for a batch of {k.shape[0]}")
        if k.shape[1] == 0:
            return 0
        jobs = {}
        for p, rows, sub in self._split(ids):
            hs = p.share.kv_heads()
            kk = k[:, :, hs] if rows is None else k[rows][:, :, hs]
            vv = v[:, :, hs] if rows is None else v[rows][:, :, hs]
            nbytes = 2 * kk.shape[0] * kk.shape[1] * kk.shape[2] * self.head_dim * self.elem

            def job(ns=p.ns, sub=sub, kk=kk, vv=vv):
                return None, ns.append(layer, sub, kk, vv)
            jobs[p.member] = (job, nbytes, 0)
        self._run(jobs)
        return self.last.device_ns

    def _buffers(self, member: int, batch: int):
        """q and output buffers of one member for one batch size, kept so
        their DMA registrations are reused call after call."""
        key = (member, batch)
        bufs = self._bufs.get(key)
        if bufs is None:
            heads = next(p.share.heads for p in self.parts if p.member == member) * self.group
            shape = (batch, heads, self.head_dim)
            bufs = self._bufs[key] = (np.empty(shape, np.float32), np.empty(shape, np.float32))
        return bufs

    def attend(self, layer: int, seq_ids, q, sparse: SparF | None = None,
               out=None, append=None, out_dtype=None):
        """Attention output, as KVNamespace.attend (any array kind, dtype and
        layout in; q's kind out); append=(k, v) [batch, 1, kv_heads, head_dim]."""
        given_out = out
        layer, q, like, out = attend_args(self, layer, q, sparse, out)
        ids = seq_id_array(seq_ids)
        if ids.size != q.shape[0]:
            raise ValueError(f"{ids.size} sequence ids for a batch of {q.shape[0]}")
        if append is not None:
            ak, av = self._kv_check(*append, "attend append", tokens=1)
            if ak.shape[0] != ids.size:
                raise ValueError(f"attend append: {ak.shape[0]} rows for a batch of {ids.size}")
        jobs, placed = {}, []
        for p, rows, sub in self._split(ids):
            qs, hs = p.share.q_heads(self.group), p.share.kv_heads()
            qb, ob = self._buffers(p.member, sub.size)
            qb[:] = q[:, qs] if rows is None else q[rows, qs]
            app, extra = None, 0
            if append is not None:
                app = ((ak[:, :, hs], av[:, :, hs]) if rows is None
                       else (ak[rows][:, :, hs], av[rows][:, :, hs]))
                extra = 2 * sub.size * p.share.heads * self.head_dim * self.elem

            def job(ns=p.ns, sub=sub, qb=qb, ob=ob, app=app):
                ns.attend(layer, sub, qb, sparse=sparse, out=ob, append=app)
                return None, ns.last.device_ns
            io = attend_io_bytes(sub.size, qs.stop - qs.start, self.head_dim)
            jobs[p.member] = (job, io + extra, io)
            placed.append((rows, qs, ob))
        self._run(jobs)
        for rows, qs, ob in placed:
            if rows is None:
                out[:, qs] = ob
            else:
                out[rows, qs] = ob
        return given_out if given_out is not None else tensors.output_like(out, like, out_dtype)

    def read(self, layer: int, seq_id: int, start: int, count: int):
        """-> (k, v) [count, kv_heads, head_dim] of one sequence, gathered
        from the members holding its heads."""
        layer = self._layer(layer, "kv read")
        holders = [p for p in self.parts if p.share.holds(seq_id)]
        jobs = {}
        for p in holders:
            def job(ns=p.ns):
                kv = ns.read(layer, seq_id, start, count)
                return kv, ns.last.device_ns
            jobs[p.member] = (job, 0, 2 * count * p.share.heads * self.head_dim * self.elem)
        got = self._run(jobs)
        holders.sort(key=lambda p: p.share.head0)
        k = np.concatenate([got[p.member][0] for p in holders], axis=1)
        v = np.concatenate([got[p.member][1] for p in holders], axis=1)
        return k, v

    def reclaim(self, seq_ids) -> int:
        """Free sequences on every member; -> how many existed."""
        ids = seq_id_array(seq_ids)
        jobs = {}
        for p, _, sub in self._split(ids):
            def job(ns=p.ns, sub=sub):
                n = ns.reclaim(sub)
                return n, ns.last.device_ns
            jobs[p.member] = (job, sub.nbytes, 0)
        got = self._run(jobs)
        # each sequence is counted once: by the members holding kv head 0
        return sum(got[p.member] for p in self.parts if p.share.head0 == 0 and p.member in got)

    def delete(self) -> None:
        self.array.run({p.member: p.ns.delete for p in self.parts})

    def engine_log(self) -> dict:
        return self.array.engine_log()


def create_array_kv(array, layers: int, q_heads: int, kv_heads: int, head_dim: int,
                    dtype: str = "float16", sparse_layout: bool = False, **kw) -> ArrayKV:
    try:
        code = DTYPE_NAMES[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype!r}: use float16, bfloat16 or float32") from None
    if kv_heads < 1 or q_heads < 1 or q_heads % kv_heads:
        raise ValueError(f"create kv namespace: q_heads ({q_heads}) must be a positive "
                         f"multiple of kv_heads ({kv_heads})")
    group = q_heads // kv_heads
    shares = plan(kv_heads, len(array))
    made = {}

    def make(s):
        ns = array.member(s.member).create_kv_namespace(layers, s.heads * group, s.heads,
                                                        head_dim, dtype, sparse_layout, **kw)
        made[s.member] = ns
        return ns
    try:
        array.run({s.member: (lambda s=s: make(s)) for s in shares})
    except Exception:
        for i, ns in made.items():       # what the members that succeeded made goes again
            try:
                array.run({i: ns.delete})
            except Exception:
                pass
        raise
    parts = [Part(s.member, s, made[s.member]) for s in shares]
    return ArrayKV(array, parts, layers, q_heads, kv_heads, head_dim, code, sparse_layout)
