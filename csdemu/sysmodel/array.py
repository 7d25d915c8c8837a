"""An Attend over N CSDs in the system model: the live array's own rule.

The kv heads (and sequences, past one drive per kv head) are split by
csdemu.topology.split.plan, each drive's share is charged by the daemon's
timing code (csdemu.sysmodel.csd), and the step's time is
csdemu.topology.array_time: the slowest drive plus q out and outputs back
over the host links the drives share. csdemu.host.array charges a live
array's step with the same two functions, so the two agree by construction
(tests/live/test_array.py checks it on a live array of 1, 2 and 4 drives).
"""
from __future__ import annotations

import numpy as np

from csdemu.sysmodel.csd import _profile, csd_attend, layer_attend
from csdemu.topology import MemberStep, array_time, attend_io_bytes, load_topology, plan, rows_for


def array_attend(profile, topology, q_heads: int, kv_heads: int, head_dim: int, seq_lens,
                 dtype_bytes: int, tokens_per_page: int, drives: int, sparse=None, seq_ids=None):
    """(ArrayTime, {member: AttendTime}) of one layer's Attend on an idle
    array of `drives` drives; the sequences' ids default to 0, 1, ..."""
    prof, topo = _profile(profile), load_topology(topology)
    lens = np.atleast_1d(np.asarray(seq_lens, np.int64))
    ids = np.arange(lens.size, dtype=np.uint64) if seq_ids is None else np.asarray(seq_ids, np.uint64)
    group = q_heads // kv_heads
    steps, times = [], {}
    for s in plan(kv_heads, drives):
        rows = rows_for(s, ids)
        sub = lens if rows is None else lens[rows]
        if sub.size == 0:
            continue
        qh = s.heads * group
        t = csd_attend(prof, qh, s.heads, head_dim, sub.tolist(), dtype_bytes, tokens_per_page,
                       sparse)
        times[s.member] = t
        io = attend_io_bytes(sub.size, qh, head_dim)
        steps.append(MemberStep(s.member, int(t.done_ns), io, io))
    return array_time(topo, drives, steps), times


def array_attend_ns(profile, topology, q_heads: int, kv_heads: int, head_dim: int, seq_lens,
                    dtype_bytes: int, tokens_per_page: int, drives: int, sparse=None,
                    seq_ids=None) -> int:
    """Modeled ns of one layer's Attend on an idle array (see array_attend)."""
    return array_attend(profile, topology, q_heads, kv_heads, head_dim, seq_lens, dtype_bytes,
                        tokens_per_page, drives, sparse, seq_ids)[0].device_ns


def busiest_load(kv_heads: int, drives: int, batch: int) -> int:
    """kv heads x sequences of the drive holding most of a batch of ids 0..batch-1."""
    return max(s.heads * len(range(s.rem, batch, s.mod)) for s in plan(kv_heads, drives))


def layer_array_attend(prof, topology, q_heads: int, kv_heads: int, head_dim: int, batch: int,
                       seq_len: int, dtype_bytes: int, T: int, drives: int, sparse=None):
    """(ArrayTime, breakdown of its slowest drive) of one layer's Attend for
    `batch` equal sequences (ids 0..batch-1), each share cached."""
    topo = load_topology(topology)
    group = q_heads // kv_heads
    steps, bds = [], {}
    for s in plan(kv_heads, drives):
        n = len(range(s.rem, batch, s.mod))
        if n == 0:
            continue
        qh = s.heads * group
        done, bd, _ = layer_attend(prof, qh, s.heads, head_dim, n, seq_len, dtype_bytes, T, sparse)
        io = attend_io_bytes(n, qh, head_dim)
        steps.append(MemberStep(s.member, int(done), io, io))
        bds[s.member] = bd
    at = array_time(topo, drives, steps)
    return at, bds[at.slowest_member]
