"""Rebuild the L2P after a restart (clean or not).

Inputs: the last checkpoint (L2P as of sequence S, or none: S = 0), the OOB
record of every physical page, and the deallocation journal (whose base
holds every deallocation up to its checkpoint, see checkpoint.py). Steps
0-2 are vectorized over one chunk of the OOB records at a time (oob.py), so
the memory recovery needs does not grow with the OOB area (_Scan says what
it keeps); 3 and 4 work on the candidates found and the L2P:

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

from csdemu.drive.flash.checkpoint import (JOURNAL_NAME, L2P_DTYPE, TRIM_REC, JournalError,
                                           read_checkpoint)
from csdemu.drive.flash.files import DataDirError
from csdemu.drive.flash.lines import STREAM_GC
from csdemu.drive.flash.nand import NandArray
from csdemu.drive.flash.oob import (OOB_KNOWN_FLAGS, OOB_PRESENT, OOB_TORN, OOB_UNCORRECTABLE,
                                    records_i64)

# Sequence numbers count pages written: at ten million pages a second 2^62
# takes 14,000 years, so a larger one is a corrupt record, and every real one
# fits the int64 arithmetic below.
SEQ_LIMIT = 1 << 62


@dataclass
class Rebuilt:
    l2p: np.ndarray          # L2P_DTYPE [nlpns]
    valid: np.ndarray        # bool [total_pages]
    next_seq: int
    checkpoint_seq: int
    scanned: int             # candidate pages newer than the checkpoint
    torn: int                # candidates newer than the last Flush rejected by their CRC
    trims_replayed: int
    corrupt_records: int = 0     # OOB records that are not a record (skipped)
    suspect_kept: int = 0        # flushed pages kept though they fail (reads: URE)
    lines: LineSummary | None = None    # per line, for LineManager.rebuild
    torn_pages: np.ndarray | None = None  # PPNs found torn now: to mark OOB_TORN


@dataclass
class LineSummary:
    """What LineManager.rebuild needs of each line's records (corrupt ones
    count as present, of stream 0 and seq 0)."""
    last: np.ndarray         # position of the last present record, -1: none
    stream: np.ndarray       # stream of that record
    max_seq: np.ndarray      # highest seq in the line

    @classmethod
    def empty(cls, lines: int) -> "LineSummary":
        return cls(np.full(lines, -1, np.int64), np.zeros(lines, np.int64),
                   np.zeros(lines, np.int64))

    def add(self, line0: int, ppl: int, present, stream, seq) -> None:
        k = present.size // ppl
        pres = present.reshape(k, ppl)
        has = pres.any(axis=1)
        last = ppl - 1 - np.argmax(pres[:, ::-1], axis=1)
        rows = np.flatnonzero(has)
        sl = slice(line0, line0 + k)
        self.last[sl] = np.where(has, last, -1)
        self.stream[line0 + rows] = stream.reshape(k, ppl)[rows, last[rows]]
        self.max_seq[sl] = seq.reshape(k, ppl).max(axis=1)


def sort_records(oob: np.ndarray):
    """-> (occupied, sane) per page: any non-zero record, and a plausible one."""
    raw = records_i64(oob)
    occupied = raw.any(axis=1)
    flags = oob["flags"]
    seq = oob["seq"]
    sane = (occupied & ((flags & OOB_PRESENT) != 0) & ((flags & (0xFFFF ^ OOB_KNOWN_FLAGS)) == 0)
            & ((flags & OOB_TORN) == 0) & (seq > 0) & (seq < SEQ_LIMIT))
    return occupied, sane


def classify(oob: np.ndarray, nlpns: int):
    """-> (occupied, sane, corrupt) per record; see step 0."""
    occupied, sane = sort_records(oob)
    lpn, flags = oob["lpn"], oob["flags"]
    sane &= (oob["stream"] > STREAM_GC) | ((lpn >= 0) & (lpn < nlpns))  # a host page of no LBA
    # marked torn by an earlier recovery (a record with unknown flags is corrupt)
    torn_before = (occupied & ((flags & OOB_TORN) != 0) & ((flags & OOB_PRESENT) != 0)
                   & ((flags & (0xFFFF ^ OOB_KNOWN_FLAGS)) == 0))
    return occupied, sane, occupied & ~sane & ~torn_before


class _Scan:
    """Steps 0-2 and the user-stream check over one chunk of records at a
    time (nand.record_chunks), so recovery's memory does not grow with the
    OOB area: what it keeps per page is the valid bitmap and one bit per
    LPN; per candidate (a page newer than the checkpoint) its PPN, LPN and seq."""

    def __init__(self, nand: NandArray, nlpns: int, l2p, S: int, synced_seq: int):
        g = nand.geom
        self.nand, self.nlpns, self.l2p, self.S, self.synced_seq = nand, nlpns, l2p, S, synced_seq
        self.confirmed = np.zeros(nlpns, bool)      # step 1: the entry's page still says so
        self.valid = np.zeros(g.total_pages, bool)
        self.lines = LineSummary.empty(g.lines)
        self.cands: list[tuple] = []
        self.torn_pages: list[np.ndarray] = []
        self.seen_top = self.torn = self.corrupt = self.suspect_kept = self.candidates = 0

    def chunk(self, p0: int, oob: np.ndarray) -> None:
        nand, S, l2p = self.nand, self.S, self.l2p
        occupied, sane, corrupt = classify(oob, self.nlpns)
        lpn, stream, flags, raw_seq = oob["lpn"], oob["stream"], oob["flags"], oob["seq"]
        seq = np.where(sane, raw_seq, 0).astype(np.int64)
        self.corrupt += int(corrupt.sum())
        # The next sequence number must pass every sane record's, the torn
        # ones' included: their records stay on flash until their line is
        # erased, and a reused number would make a later recovery take such
        # a page for one a Flush had made durable (kept, so its LBA would fail).
        if seq.size:
            self.seen_top = max(self.seen_top, int(seq.max()))
        # 1. a checkpoint entry lpn -> p is confirmed by p's record saying lpn, seq <= S
        m = np.flatnonzero(occupied & (raw_seq > 0) & (raw_seq <= S) & (lpn >= 0) & (lpn < self.nlpns))
        if m.size:
            hit = l2p[lpn[m]] == p0 + m
            self.confirmed[lpn[m[hit]]] = True
        # 2. candidates newer than the checkpoint, CRC-checked
        cand = np.flatnonzero(sane & (stream <= STREAM_GC) & (seq > S))
        if cand.size:
            ok = (flags[cand] & OOB_UNCORRECTABLE) != 0
            if (~ok).any():
                ok[~ok] = nand.verify(p0 + cand[~ok], oob[cand[~ok]])
            # no crash tears a page a Flush had made durable: that one is
            # corrupt, and stays its LBA's version (whose reads fail), as in step 1
            suspect = ~ok & (seq[cand] <= self.synced_seq)
            self.suspect_kept += int(suspect.sum())
            ok |= suspect
            self.torn += int((~ok).sum())
            self.torn_pages.append(p0 + cand[~ok])
            c = cand[ok]
            self.candidates += int(c.size)
            self.cands.append((p0 + c, lpn[c].astype(np.int64), seq[c]))
        # user streams: the owner decides; those newer than the checkpoint
        # are checked as host pages are (a host page whose stream byte flipped is one)
        user = np.flatnonzero(sane & (stream > STREAM_GC) & (seq > S))
        if user.size:
            bad = user[~nand.verify(p0 + user, oob[user])]
            self.torn += int(bad.size)
            self.torn_pages.append(p0 + bad)
            sane[bad] = False
        self.valid[p0:p0 + oob.size] = sane & (stream > STREAM_GC)
        present = ((flags & OOB_PRESENT) != 0) | corrupt
        self.lines.add(p0 // nand.geom.pages_per_line, nand.geom.pages_per_line, present,
                       np.where(corrupt, 0, stream), np.where(corrupt, 0, raw_seq.astype(np.int64)))

    def unconfirmed(self) -> None:
        """Step 1 for the checkpoint entries no record confirmed."""
        l2p, S, conf = self.l2p, self.S, self.confirmed
        m = np.concatenate([c0 + np.flatnonzero((l2p[c0:c0 + _LPN_CHUNK] >= 0)
                                                & ~conf[c0:c0 + _LPN_CHUNK])
                            for c0 in range(0, l2p.size, _LPN_CHUNK)] or [np.zeros(0, np.int64)])
        self.confirmed = None
        if not m.size:
            return
        p = l2p[m].astype(np.int64)
        recs = self.nand.records_at(p)
        occupied, sane, _ = classify(recs, self.nlpns)
        raw_seq, lpn = recs["seq"], recs["lpn"]
        l2p[m[~occupied]] = -1                       # erased since: moved or trimmed
        # erased and programmed again, for another LBA (the same LBA again is
        # also what a corrupt seq looks like: the CRC below tells them apart)
        reused = sane & (raw_seq > S) & (lpn != m)
        l2p[m[reused]] = -1
        odd = np.flatnonzero(occupied & ~reused)
        if odd.size:
            consistent = self.nand.verify(p[odd], recs[odd])
            l2p[m[odd[consistent]]] = -1             # reused since, for another LBA
            self.suspect_kept += int((~consistent).sum())

    def winners(self):
        """3. Per LPN the candidate with the highest seq wins over the
        checkpoint entry (whose seq is at most S) -> (lpns, ppns, seqs)."""
        if not self.cands:
            z = np.zeros(0, np.int64)
            return z, z, z
        c, cl, cs = (np.concatenate(x) for x in zip(*self.cands))
        self.cands = None
        order = np.lexsort((cs, cl))
        c, cl, cs = c[order], cl[order], cs[order]
        last = np.ones(c.size, bool)
        last[:-1] = cl[1:] != cl[:-1]
        c, cl, cs = c[last], cl[last], cs[last]
        self.l2p[cl] = c
        return cl, c, cs


# LPNs per step of a pass over the L2P: its temporaries stay a few MiB, which
# the allocator reuses instead of faulting in fresh memory for every pass
_LPN_CHUNK = 1 << 22


def rebuild(nand: NandArray, nlpns: int, ckpt, journal: np.ndarray, synced_seq: int = 0,
            chunk_pages: int | None = None) -> Rebuilt:
    if ckpt is not None:
        l2p, S = ckpt[0], ckpt[1]
    else:
        l2p, S = np.full(nlpns, -1, L2P_DTYPE), 0
    for c0 in range(0, nlpns, _LPN_CHUNK):
        part = l2p[c0:c0 + _LPN_CHUNK]
        part[part >= nand.geom.total_pages] = -1
    scan = _Scan(nand, nlpns, l2p, S, synced_seq)
    for p0, oob in nand.record_chunks(chunk_pages):
        scan.chunk(p0, oob)
    scan.unconfirmed()
    wl, wp, ws = scan.winners()

    # 4. replay deallocations newer than the checkpoint: every LPN in a range
    # whose chosen version is older than the record goes unmapped; only a
    # winning candidate can be newer (a checkpoint entry's seq is <= S)
    trims = journal[journal["seq"] > S] if journal.size else journal
    for rec in trims:
        lo = int(rec["lpn"])
        hi = min(nlpns, lo + int(rec["count"]))
        if hi <= lo:
            continue
        s = int(rec["seq"])
        k0, k1 = np.searchsorted(wl, (lo, hi))
        keep = k0 + np.flatnonzero(ws[k0:k1] >= s)
        kept = l2p[wl[keep]].copy()
        l2p[lo:hi] = -1
        l2p[wl[keep]] = kept
        ws[k0:k1] = np.maximum(ws[k0:k1], s)

    valid = scan.valid
    for c0 in range(0, nlpns, _LPN_CHUNK):
        part = l2p[c0:c0 + _LPN_CHUNK]
        valid[part[part >= 0]] = True
    top = max(scan.seen_top, S, int(journal["seq"].max()) if journal.size else 0)
    torn = scan.torn_pages
    return Rebuilt(l2p=l2p, valid=valid, next_seq=top + 1, checkpoint_seq=S,
                   scanned=scan.candidates + scan.torn,
                   torn=scan.torn, trims_replayed=len(trims),
                   corrupt_records=scan.corrupt, suspect_kept=scan.suspect_kept,
                   lines=scan.lines,
                   torn_pages=np.concatenate(torn) if torn else np.zeros(0, np.int64))


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
    r = rebuild(nand, nlpns, ck, trims, journal.synced_seq)
    if r.torn:
        notes.append(f"{r.torn} page(s) newer than the checkpoint fail their CRC (torn by a "
                     f"crash, or corrupt): their LBAs keep their previous version")
    if r.corrupt_records:
        notes.append(f"{r.corrupt_records} OOB record(s) are corrupt: their pages are skipped")
    if r.suspect_kept:
        notes.append(f"{r.suspect_kept} flushed page(s) fail their CRC or disagree with the "
                     f"checkpoint: reads of their LBAs fail with Unrecovered Read Error")
    return r, notes, bool(j_why or ck is None)
