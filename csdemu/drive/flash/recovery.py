"""Rebuild the L2P after a restart (clean or not).

Inputs: the last checkpoint (L2P as of sequence S, or none: S = 0), the OOB
record of every physical page, and the deallocation journal (whose base
holds every deallocation up to its checkpoint, see checkpoint.py). Steps,
all vectorized over the OOB array:

0. Sort the records: all-zero is erased; a record with unknown flag bits, a
   cleared present bit over non-zero fields, a sequence number of 0 or
   >= SEQ_LIMIT, or a host page's LPN past the namespace is corrupt. Corrupt records still occupy their page (it is
   never programmed over), but never map an LBA on their own word and never
   set the next sequence number.
1. A checkpoint entry lpn -> ppn stands if that page's record still says lpn
   with a seq <= S. It is dropped if the page was erased, or programmed
   again since (a plausible record with seq > S), or if the page's record
   and data agree with each other on something else. Otherwise the record or the data is corrupt: the entry
   stands and reads of the LBA fail with Unrecovered Read Error (nand.check),
   never returning another LBA's or an older version's data.
2. Candidates: programmed host/GC pages with seq > S. Each is CRC-checked; a
   torn page (crash in the middle of a program) fails and is ignored, so it is
   never returned as data -- the previous version of that LBA is used. Only
   a page newer than the last Flush (the journal's synced_seq) can be torn:
   an older one that fails is corrupt, and is taken as its LBA's version
   (reads fail). So is a page GC copied from a failing one
   (OOB_UNCORRECTABLE): its LBA reads fail, as they did before the copy.
3. Per lpn the candidate with the highest seq wins over the checkpoint entry.
4. Journal records with seq > S unmap every lpn in their range whose chosen
   version is older than the record.

Pages of user streams (>= 2) are not in the L2P; they are reported as valid
so their owner (e.g. a KV layer) can rebuild its own index from the OOB keys
(those newer than the checkpoint once their CRC matches, as for step 2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from csdemu.drive.flash.checkpoint import JOURNAL_NAME, TRIM_REC, JournalError, read_checkpoint
from csdemu.drive.flash.files import DataDirError
from csdemu.drive.flash.lines import STREAM_GC
from csdemu.drive.flash.nand import (OOB_KNOWN_FLAGS, OOB_PRESENT, OOB_TORN, OOB_UNCORRECTABLE,
                                     NandArray, records_i64)

# Sequence numbers count pages written: at ten million pages a second 2^62
# takes 14,000 years, so a larger one is a corrupt record, and every real one
# fits the int64 arithmetic below.
SEQ_LIMIT = 1 << 62


@dataclass
class Rebuilt:
    l2p: np.ndarray          # int64 [nlpns]
    valid: np.ndarray        # bool [total_pages]
    next_seq: int
    checkpoint_seq: int
    scanned: int             # candidate pages newer than the checkpoint
    torn: int                # candidates newer than the last Flush rejected by their CRC
    trims_replayed: int
    corrupt_records: int = 0     # OOB records that are not a record (skipped)
    suspect_kept: int = 0        # flushed pages kept though they fail (reads: URE)
    records: np.ndarray | None = None   # the OOB records, corrupt ones cleaned, for LineManager
    torn_pages: np.ndarray | None = None  # PPNs found torn now: to mark OOB_TORN


def sort_records(oob: np.ndarray):
    """-> (occupied, sane) per page: any non-zero record, and a plausible one."""
    raw = records_i64(oob)
    occupied = raw.any(axis=1)
    flags = oob["flags"]
    seq = oob["seq"]
    sane = (occupied & ((flags & OOB_PRESENT) != 0) & ((flags & (0xFFFF ^ OOB_KNOWN_FLAGS)) == 0)
            & ((flags & OOB_TORN) == 0) & (seq > 0) & (seq < SEQ_LIMIT))
    return occupied, sane


def rebuild(nand: NandArray, nlpns: int, ckpt, journal: np.ndarray,
            oob: np.ndarray | None = None, synced_seq: int = 0) -> Rebuilt:
    if oob is None:
        oob = nand.read_records()                # a copy, read with pread
    occupied, sane = sort_records(oob)
    lpn = oob["lpn"]
    stream = oob["stream"]
    flags = oob["flags"]
    sane &= (stream > STREAM_GC) | ((lpn >= 0) & (lpn < nlpns))    # a host page of no LBA
    # marked torn by an earlier recovery (a record with unknown flags is corrupt)
    torn_before = (occupied & ((flags & OOB_TORN) != 0) & ((flags & OOB_PRESENT) != 0)
                   & ((flags & (0xFFFF ^ OOB_KNOWN_FLAGS)) == 0))
    corrupt = occupied & ~sane & ~torn_before
    seq = np.where(sane, oob["seq"], 0).astype(np.int64)
    raw_seq = oob["seq"]
    # The next sequence number must pass every sane record's, the torn ones'
    # included: their records stay on flash until their line is erased, and
    # a reused number would make a later recovery take such a page for one
    # a Flush had made durable (kept, so its LBA would fail to read).
    seen_top = int(seq.max()) if seq.size else 0

    if ckpt is not None:
        l2p, S = ckpt[0].copy(), ckpt[1]
    else:
        l2p, S = np.full(nlpns, -1, np.int64), 0
    cur_seq = np.full(nlpns, -1, np.int64)

    # 1. validate checkpoint entries
    suspect_kept = 0
    m = np.flatnonzero((l2p >= 0) & (l2p < oob.size))
    l2p[(l2p >= oob.size)] = -1
    if m.size:
        p = l2p[m]
        same = occupied[p] & (lpn[p] == m) & (raw_seq[p] > 0) & (raw_seq[p] <= S)
        cur_seq[m[same]] = raw_seq[p[same]].astype(np.int64)
        l2p[m[~same & ~occupied[p]]] = -1            # erased since: moved or trimmed
        # erased and programmed again, for another LBA (the same LBA again is
        # also what a corrupt seq looks like: the CRC below tells them apart)
        reused = ~same & sane[p] & (raw_seq[p] > S) & (lpn[p] != m)
        l2p[m[reused]] = -1
        odd = np.flatnonzero(~same & occupied[p] & ~reused)
        if odd.size:
            consistent = nand.verify(p[odd], oob)
            l2p[m[odd[consistent]]] = -1             # reused since, for another LBA
            kept = m[odd[~consistent]]
            cur_seq[kept] = S
            suspect_kept = int(kept.size)

    # 2. candidates newer than the checkpoint
    host = sane & (stream <= STREAM_GC)
    cand = np.flatnonzero(host & (seq > S))
    torn = 0
    torn_pages = []
    if cand.size:
        ok = (flags[cand] & OOB_UNCORRECTABLE) != 0
        if (~ok).any():
            ok[~ok] = nand.verify(cand[~ok], oob)
        # no crash tears a page a Flush had made durable: that one is corrupt,
        # and stays its LBA's version (whose reads fail), as in step 1
        suspect = ~ok & (seq[cand] <= synced_seq)
        suspect_kept += int(suspect.sum())
        ok |= suspect
        torn = int((~ok).sum())
        torn_pages.append(cand[~ok])
        seq[cand[~ok]] = 0                      # a torn page's seq sets nothing
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
    # user streams: owner decides; those newer than the checkpoint are
    # checked as host pages are (a host page whose stream byte flipped is one)
    user = np.flatnonzero(sane & (stream > STREAM_GC) & (seq > S))
    if user.size:
        bad = user[~nand.verify(user, oob)]
        torn += int(bad.size)
        torn_pages.append(bad)
        sane[bad] = False
        seq[bad] = 0
    valid |= sane & (stream > STREAM_GC)
    top = max(seen_top, S, int(journal["seq"].max()) if journal.size else 0)
    clean = oob.copy()
    clean["seq"][corrupt] = 0                   # occupied, of no stream, of no age
    clean["stream"][corrupt] = 0
    clean["flags"][corrupt] = OOB_PRESENT
    return Rebuilt(l2p=l2p, valid=valid, next_seq=top + 1, checkpoint_seq=S,
                   scanned=int(cand.size) + torn, torn=torn, trims_replayed=len(trims),
                   corrupt_records=int(corrupt.sum()), suspect_kept=suspect_kept, records=clean,
                   torn_pages=np.concatenate(torn_pages) if torn_pages else np.zeros(0, np.int64))


def recover(nand: NandArray, nlpns: int, data_dir, journal) -> tuple[Rebuilt, list[str], bool]:
    """Open a formatted drive's L2P: -> (rebuilt, what to log, whether a
    fresh checkpoint should be written now). A damaged checkpoint costs a
    full OOB scan; a damaged journal is harmless after a clean shutdown (the
    checkpoint holds every deallocation). Otherwise deallocated LBAs cannot
    be told from written ones, and DataDirError refuses the start."""
    ck, ck_why = read_checkpoint(data_dir, nlpns)
    try:
        trims, j_why = journal.load(), None
    except JournalError as e:
        trims, j_why = np.empty(0, TRIM_REC), str(e)
    fix = ("restore the file, or start with --format to erase the drive")
    if j_why and ck is None:
        raise DataDirError(f"{ck_why} and {j_why}: the deallocated LBAs cannot be recovered "
                           f"(their old data would come back); {fix}")
    notes = []
    if j_why:
        if not ck[2]:
            raise DataDirError(f"{j_why}, and the drive was not shut down cleanly: deallocations "
                               f"since the last checkpoint would be lost (their old data would "
                               f"come back); {fix}")
        notes.append(f"{j_why}; the drive was shut down cleanly, so the checkpoint holds "
                     f"every deallocation, and the journal is written afresh")
    if ck is None:
        notes.append(f"{ck_why}; the L2P is rebuilt from every OOB record and {JOURNAL_NAME}")
    r = rebuild(nand, nlpns, ck, trims, nand.at_open, journal.synced_seq)
    if r.torn:
        notes.append(f"{r.torn} page(s) newer than the checkpoint fail their CRC (torn by a "
                     f"crash, or corrupt): their LBAs keep their previous version")
    if r.corrupt_records:
        notes.append(f"{r.corrupt_records} OOB record(s) are corrupt: their pages are skipped")
    if r.suspect_kept:
        notes.append(f"{r.suspect_kept} flushed page(s) fail their CRC or disagree with the "
                     f"checkpoint: reads of their LBAs fail with Unrecovered Read Error")
    return r, notes, bool(j_why or ck is None)
