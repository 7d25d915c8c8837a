"""When completions are posted, and when commands arrive, in modeled time.

Realtime mode holds each completion in a heap until the controller clock
reaches its modeled time, as FEMU does. Virtual mode posts it as soon as
the work is done, but in modeled-time order per CQ, and a command arrives
no earlier than the latest completion its host had consumed when it wrote
it (docs/architecture.md, "Timing modes"). Mixed into the Controller, whose
config, counters, held heap and epoch it uses.
"""
from __future__ import annotations

import heapq
import time

from nvme_cmds.features import TimingMode
from nvme_cmds.status import Status, encode_status_field, split_status

_SUCCESS_FIELD = encode_status_field(Status.SUCCESS, 0)
_REALTIME = int(TimingMode.REALTIME)
_mono = time.monotonic_ns
# A doorbell time older than this is not believed (a host's garbage, or a
# clock from before the daemon was looking): the fetch time stands in.
_STALE_RING_NS = 1_000_000_000


class Completions:
    def complete(self, session, sq, cq, cid, status, dw0=0, dw1=0,
                 arrival_ns=0, done_ns=0, release=True):
        if status and split_status(status)[0] == 2:
            self.counters.media_errors += 1
        device_ns = done_ns - arrival_ns if done_ns > arrival_ns else 0
        if self.config.timing_mode == _REALTIME:
            if done_ns > _mono():
                if release:
                    sq.inflight[cid] = 1
                self._seq += 1
                heapq.heappush(self.held, (done_ns, self._seq, session, sq, cq, cid, status,
                                           dw0, dw1, device_ns, release))
                return
            return self._post(session, sq, cq, cid, status, dw0, dw1, device_ns, release, done_ns)
        # Virtual: posted at once, but in modeled-time order (_release_pending);
        # nothing to order when nothing waits and the time is already past.
        if not cq.pending and done_ns <= _mono():
            return self._post(session, sq, cq, cid, status, dw0, dw1, device_ns, release, done_ns)
        if release:
            sq.inflight[cid] = 1
        self._seq += 1
        heapq.heappush(cq.pending, (done_ns, self._seq, sq, cid, status, dw0, dw1, device_ns,
                                    release))
        session.pending_cqs.add(cq)

    def _release_pending(self, session, busy) -> int:
        """Post virtual-mode completions in modeled-time order. Those due by
        the wall clock go at once: whatever arrives later arrives after now
        and cannot finish before them. Of the rest, ahead of the wall clock,
        each CQ whose SQs brought nothing new this pass posts its earliest
        (all that share that time): one step of modeled time. So a host sees
        its completions in the order the modeled drive finishes them, as in
        realtime mode, however far the emulator runs ahead, and a command it
        submits in answer arrives at that completion's time (arrival()), not
        at the latest of a batch the emulator finished in another order.
        Returns CQEs posted."""
        n = 0
        now = _mono()
        for cq in list(session.pending_cqs):
            pend = cq.pending
            due = pend[0][0] if now < pend[0][0] and cq not in busy else now
            while pend and pend[0][0] <= due:
                done, _, sq, cid, status, dw0, dw1, device_ns, release = heapq.heappop(pend)
                self._post(session, sq, cq, cid, status, dw0, dw1, device_ns, release, done)
                n += 1
            if not pend:
                session.pending_cqs.discard(cq)
        return n

    def flush_pending(self, session) -> None:
        """Post every pending virtual-mode completion of `session` (shutdown)."""
        while session.pending_cqs:
            self._release_pending(session, ())

    def drop_sq(self, session, sq) -> None:
        """Forget the held (realtime) and pending (virtual) completions of a
        deleted SQ."""
        self.held[:] = [h for h in self.held if h[3] is not sq]
        heapq.heapify(self.held)
        cq = sq.cq or session.cqs.get(sq.cqid)
        if cq is not None and cq.pending:
            cq.pending[:] = [p for p in cq.pending if p[2] is not sq]
            heapq.heapify(cq.pending)
            if not cq.pending:
                session.pending_cqs.discard(cq)

    def _post(self, session, sq, cq, cid, status, dw0, dw1, device_ns, release, done_ns):
        if release:
            sq.inflight[cid] = 0
        field = _SUCCESS_FIELD if status == 0 else encode_status_field(status, 0)
        if cq.backlog or cq.room() <= 0:
            cq.backlog.append((dw0, dw1, sq.head, sq.qid, cid, field, device_ns, done_ns))
            return
        cq.post(dw0, dw1, sq.head, sq.qid, cid, field, device_ns, done_ns)
        session.interrupt(cq)

    def _drain_backlog(self, session, cq):
        room = cq.room()
        k = min(room, len(cq.backlog))
        for entry in cq.backlog[:k]:
            cq.post(*entry)
        del cq.backlog[:k]
        if k:
            session.interrupt(cq)

    def release_due(self, now_ns: int) -> int | None:
        """Post held completions whose time has come; return the next due time."""
        held = self.held
        while held and held[0][0] <= now_ns:
            done, _, session, sq, cq, cid, status, dw0, dw1, dev_ns, release = heapq.heappop(held)
            if session.closed:
                continue
            self._post(session, sq, cq, cid, status, dw0, dw1, dev_ns, release, done)
        return held[0][0] if held else None

    def abort_held(self, session, sqid: int, cid: int) -> bool:
        """Abort (08h) a command of `session` whose completion is held: in
        the realtime heap, in a CQ's virtual-time pending heap, or an Async
        Event Request waiting for an event. It completes at once with
        Command Abort Requested; what it did stays done (Abort is best
        effort; its data already moved). False if none is held: not fetched
        yet (it will run) or already completed."""
        for i, h in enumerate(self.held):
            if h[2] is session and h[3].qid == sqid and h[5] == cid:
                # (done_ns, seq, session, sq, cq, cid, status, dw0, dw1, device_ns, release)
                self.held[i] = (0, h[1], session, h[3], h[4], cid, Status.ABORT_REQUESTED,
                                0, 0) + h[9:]
                heapq.heapify(self.held)
                return True
        for cq in session.pending_cqs:
            for i, p in enumerate(cq.pending):
                if p[2].qid == sqid and p[3] == cid:
                    # (done_ns, seq, sq, cid, status, dw0, dw1, device_ns, release)
                    cq.pending[i] = (0, p[1], p[2], cid, Status.ABORT_REQUESTED, 0, 0) + p[7:]
                    heapq.heapify(cq.pending)
                    return True
        if sqid == 0 and cid in session.aers:
            session.aers.remove(cid)
            self.complete(session, session.sqs[0], session.cqs[0], cid, Status.ABORT_REQUESTED)
            return True
        return False

    # ------------------------------------------------------------ arrival
    def arrival(self, cq, consumed: int = 0, rung_ns: int = 0, reaped_ns: int = 0) -> int:
        """When a command fetched now for `cq` arrives in modeled time.

        Where its host says which completions it had consumed when it wrote
        the command (`consumed`, as its SQ slot says), when it consumed them
        (`reaped_ns`) and when it rang the doorbell (`rung_ns`): at the
        latest of those completions' modeled times plus the host's own time
        from consuming them to ringing. So a host that answers a completion
        at once queues behind nothing it had seen finish, however far ahead
        of the wall clock the emulator posted it (virtual mode), and the
        daemon's own delay in posting a due completion is not charged to the
        drive (realtime mode). Otherwise at the doorbell time (else now),
        in virtual mode no earlier than the latest completion the CQ head
        doorbell says the host had consumed (docs/architecture.md, "Timing
        modes")."""
        now = _mono()
        if not self.config.causal_arrival:
            return now
        rung = rung_ns if self.timeline_ns < rung_ns <= now and now - rung_ns < _STALE_RING_NS else 0
        if rung:
            now = rung
        if cq.epoch != self.epoch:
            cq.epoch = self.epoch
            cq.forget_horizon()
        hz = cq.horizon_at(consumed) if consumed else cq.horizon()
        if consumed and hz and rung and 0 < reaped_ns <= rung:
            return hz + (rung - reaped_ns)
        if self.config.timing_mode == _REALTIME:
            return now               # completions are never early here: the horizon is behind
        return hz if hz > now else now
