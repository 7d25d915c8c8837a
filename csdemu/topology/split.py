"""How an array splits one model's KV across its drives.

The rule (docs/architecture.md, "Drive arrays"):
  * drives <= kv heads: the kv heads are cut into `drives` contiguous runs,
    as even as they go (the first kv_heads mod drives runs have one head
    more); every drive holds every sequence of its heads. This is the
    paper's split, n_heads / n per CSD.
  * drives > kv heads: each kv head gets drives // kv_heads drives (the
    first drives mod kv_heads heads one more), and the sequences of that
    head are dealt over its drives by sequence id: drive r of m holds the
    sequences whose id mod m == r. Keyed by id, not by position in a call's
    batch, so a sequence's KV stays on one drive from append to attend.
The q heads follow their kv head (GQA: q head j reads kv head j // group),
so drive i attends q heads [head0 * group, (head0 + heads) * group).
Attention of a (sequence, kv head) needs nothing from any other, so the
outputs join by placement alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Share:
    """What one drive holds: kv heads [head0, head0 + heads) of the
    sequences whose id mod `mod` == `rem` (mod 1: all of them)."""
    member: int
    head0: int
    heads: int
    mod: int = 1
    rem: int = 0

    def q_heads(self, group: int) -> slice:
        return slice(self.head0 * group, (self.head0 + self.heads) * group)

    def kv_heads(self) -> slice:
        return slice(self.head0, self.head0 + self.heads)

    def holds(self, seq_id: int) -> bool:
        return int(seq_id) % self.mod == self.rem


def plan(kv_heads: int, drives: int) -> list[Share]:
    """One Share per drive, by the rule above."""
    if kv_heads < 1 or drives < 1:
        raise ValueError(f"an array needs at least one kv head and one drive, "
                         f"got {kv_heads} kv heads over {drives} drives")
    shares = []
    if drives <= kv_heads:
        base, extra = divmod(kv_heads, drives)
        h = 0
        for i in range(drives):
            n = base + (i < extra)
            shares.append(Share(i, h, n))
            h += n
        return shares
    base, extra = divmod(drives, kv_heads)
    for h in range(kv_heads):
        m = base + (h < extra)
        for r in range(m):
            shares.append(Share(len(shares), h, 1, m, r))
    return shares


def rows_for(share: Share, seq_ids: np.ndarray) -> np.ndarray | None:
    """Positions in a call's batch of the sequences `share` holds (None: all)."""
    if share.mod == 1:
        return None
    ids = np.asarray(seq_ids, np.uint64)
    return np.flatnonzero(ids % np.uint64(share.mod) == np.uint64(share.rem))
