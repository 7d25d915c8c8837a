"""Rebuild the L2P after a restart (clean or not).

Inputs: the last checkpoint (L2P as of sequence S, or none: S = 0), the OOB
record of every physical page, and the deallocation journal. Steps, all
vectorized over the OOB array:

1. Keep a checkpoint entry lpn -> ppn only if that page still holds lpn with a
   sequence number <= S (its block may have been erased and reused since).
2. Candidates: programmed host/GC pages with seq > S. Each is CRC-checked; a
   torn page (crash in the middle of a program) fails its CRC and is ignored,
   so it is never returned as data -- the previous version of that LBA is used.
3. Per lpn the candidate with the highest seq wins over the checkpoint entry.
4. Journal records with seq > S unmap every lpn in their range whose chosen
   version is older than the record.

Pages of user streams (>= 2) are not in the L2P; they are reported as valid
so their owner (e.g. a KV layer) can rebuild its own index from the OOB keys.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from csdemu.drive.flash.lines import STREAM_GC
from csdemu.drive.flash.nand import OOB_PRESENT, NandArray


@dataclass
class Rebuilt:
    l2p: np.ndarray          # int64 [nlpns]
    valid: np.ndarray        # bool [total_pages]
    next_seq: int
    checkpoint_seq: int
    scanned: int             # candidate pages newer than the checkpoint
    torn: int                # candidates rejected by their CRC
    trims_replayed: int


def rebuild(nand: NandArray, nlpns: int, ckpt, journal: np.ndarray) -> Rebuilt:
    oob = np.array(nand.oob)                     # one copy of the records
    present = (oob["flags"] & OOB_PRESENT) != 0
    seq = oob["seq"].astype(np.int64)
    lpn = oob["lpn"]
    stream = oob["stream"]

    if ckpt is not None:
        l2p, S = ckpt[0].copy(), ckpt[1]
    else:
        l2p, S = np.full(nlpns, -1, np.int64), 0
    cur_seq = np.full(nlpns, -1, np.int64)

    # 1. validate checkpoint entries
    m = np.flatnonzero(l2p >= 0)
    if m.size:
        p = l2p[m]
        ok = present[p] & (lpn[p] == m) & (seq[p] <= S) & (stream[p] <= STREAM_GC)
        l2p[m[~ok]] = -1
        cur_seq[m[ok]] = seq[p[ok]]

    # 2. candidates newer than the checkpoint
    host = present & (stream <= STREAM_GC)
    cand = np.flatnonzero(host & (seq > S) & (lpn >= 0) & (lpn < nlpns))
    torn = 0
    if cand.size:
        ok = nand.verify(cand)
        torn = int((~ok).sum())
        cand = cand[ok]
    # 3. highest seq per lpn wins
    if cand.size:
        order = np.lexsort((seq[cand], lpn[cand]))
        c = cand[order]
        cl = lpn[c]
        last = np.ones(c.size, bool)
        last[:-1] = cl[1:] != cl[:-1]
        c, cl = c[last], cl[last]
        newer = seq[c] > cur_seq[cl]
        l2p[cl[newer]] = c[newer]
        cur_seq[cl[newer]] = seq[c[newer]]

    # 4. replay deallocations newer than the checkpoint
    trims = journal[journal["seq"] > S] if journal.size else journal
    for rec in trims:
        lo = int(rec["lpn"])
        hi = min(nlpns, lo + int(rec["count"]))
        s = int(rec["seq"])
        sl = slice(lo, hi)
        older = cur_seq[sl] < s
        l2p[sl][older] = -1
        cur_seq[sl][older] = s

    valid = np.zeros(oob.size, bool)
    valid[l2p[l2p >= 0]] = True
    valid |= present & (stream > STREAM_GC)     # user streams: owner decides
    top = max(int(seq.max()) if seq.size else 0, S,
              int(journal["seq"].max()) if journal.size else 0)
    return Rebuilt(l2p=l2p, valid=valid, next_seq=top + 1, checkpoint_seq=S,
                   scanned=int(cand.size) + torn, torn=torn, trims_replayed=len(trims))
