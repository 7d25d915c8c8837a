"""`csdemu start --trace FILE`: the drive's modeled timeline as a trace file.

The timing kernels write every interval they charge into the trace ring
(csdemu.drive.flash.trace_ring) under the tag of the command being
processed; the controller calls `begin` before a command and `end` after
its completion is decided, and `end` drains the ring into the file. So the
ring only ever holds one command's intervals, and its size bounds one
command, not the run.

The file is Chrome's JSON trace-event format, which ui.perfetto.dev and
chrome://tracing open: one process per kind of resource (host queues, the
PCIe link, channels, LUNs, engine units), one thread track per resource,
an X (complete) event per interval with its command's tag in `args.cmd`,
each command as an async slice from arrival to completion, and a flow
arrow from its submission to its completion on its queue's track. Times are
modeled nanoseconds (`ts` and `dur` in microseconds with three decimals)
from the first traced command's arrival.

Bounded: after `limit` intervals the drive stops recording (one header word
off, so the rest of the run costs what an untraced one does) and the file
says so in `otherData.truncated_at_cmd`. Written as it goes; closed with its
totals at shutdown.
"""
from __future__ import annotations

import json

from csdemu.drive.flash import trace_ring as ring_mod
from csdemu.drive.flash.trace_ring import H_DROPPED, H_N, H_ON, H_TAG, Kind
from nvme_cmds.opcodes import VendorIoOpcode, opcode_name

DEFAULT_LIMIT = 500_000          # intervals per file: ~55 MB of JSON
FORMAT = "csdemu-trace/1"

#: process ids (the groups of tracks) and their display order
PID_QUEUE, PID_LINK, PID_CHANNEL, PID_LUN, PID_ENGINE = 1, 2, 3, 4, 5
GROUPS = {PID_QUEUE: "host queues", PID_LINK: "PCIe link", PID_CHANNEL: "channels",
          PID_LUN: "LUNs", PID_ENGINE: "engine units"}
KIND_NAMES = {Kind.SENSE: "sense", Kind.PROGRAM: "program", Kind.ERASE: "erase",
              Kind.CHANNEL: "xfer", Kind.LINK: "link", Kind.GEMV: "gemv",
              Kind.SOFTMAX: "softmax", Kind.FILTER: "filter"}
_ATTEND = int(VendorIoOpcode.ATTEND)
_STAGES = (Kind.GEMV, Kind.SOFTMAX, Kind.FILTER)


def track_of(kind: int, res: int, ways: int) -> tuple[int, int, str]:
    """(pid, tid, track name) of an interval's resource."""
    if kind in (Kind.SENSE, Kind.PROGRAM, Kind.ERASE):
        return PID_LUN, res, f"ch{res // ways} lun{res % ways}"
    if kind == Kind.CHANNEL:
        return PID_CHANNEL, res, f"channel {res}"
    if kind == Kind.LINK:
        return PID_LINK, 0, "PCIe link"
    stage = _STAGES.index(Kind(kind))
    return PID_ENGINE, res * 3 + stage, f"unit {res} {KIND_NAMES[kind]}"


def _us(ns: int) -> str:
    """ns as microseconds with three decimals, exactly (no float rounding)."""
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    return f"{sign}{ns // 1000}.{ns % 1000:03d}"


def command_name(opc: int, cdw10: int) -> str:
    name = opcode_name(opc, False)
    if opc == _ATTEND:
        return f"{name} {'dense' if (cdw10 >> 16) & 0xFF == 0 else 'sparf'}"
    return name


class Tracer:
    def __init__(self, path: str, clocks, geometry: dict, profile: dict,
                 limit: int = DEFAULT_LIMIT, rows: int = ring_mod.DEFAULT_ROWS):
        self.path = path
        self.ring = ring_mod.new_ring(rows)
        clocks.trace = self.ring
        self.ways = int(geometry["ways"])
        self.meta = {"format": FORMAT, "geometry": geometry, "profile": profile,
                     "limit_intervals": int(limit)}
        self.limit = int(limit)
        self.t0 = None
        self.tag = 0
        self.intervals = 0
        self.commands = 0
        self.dropped = 0
        self.truncated_at = None
        self.tracks: set = set()
        self.queues: dict = {}            # (session id, qid) -> tid
        self.cur = None                   # the open command: [tag, session, qid, cid, name, nsid]
        self.done = None                  # its completion: (status, arrival, done)
        self.f = open(path, "w", buffering=1 << 20)
        self.f.write('{"displayTimeUnit":"ns","traceEvents":[\n')
        self.first = True

    @property
    def on(self) -> bool:
        return bool(self.ring[0, H_ON])

    # ------------------------------------------------------------ per command
    def begin(self, session_id: int, qid: int, cmd) -> None:
        if self.ring[0, H_N]:
            self._drain()                 # strays charged between commands: tag 0
        self.tag += 1
        self.ring[0, H_TAG] = self.tag
        self.cur = (self.tag, session_id, qid, int(cmd[2]), command_name(int(cmd[0]), int(cmd[9])),
                    int(cmd[3]))
        self.done = None

    def note(self, qid: int, cid: int, status: int, arrival_ns: int, done_ns: int) -> None:
        """A completion decided (Controller.complete): the open command's if it matches."""
        c = self.cur
        if c is not None and c[2] == qid and c[3] == cid and self.done is None:
            self.done = (int(status), int(arrival_ns), int(max(done_ns, arrival_ns)))

    def end(self) -> None:
        c, d = self.cur, self.done
        self.cur = None
        if c is None or d is None:
            self.ring[0, H_TAG] = 0
            self._drain()
            return
        if self.t0 is None:
            self.t0 = d[1]
        self._drain()
        self.ring[0, H_TAG] = 0
        self._command(c, d)
        if self.intervals >= self.limit and self.truncated_at is None:
            self.truncated_at = c[0]
            self.ring[0, H_ON] = 0

    def _drain(self) -> None:
        n = int(self.ring[0, H_N])
        self.dropped += int(self.ring[0, H_DROPPED])
        self.ring[0, H_N] = 0
        self.ring[0, H_DROPPED] = 0
        if not n:
            return
        rows = self.ring[1:1 + n].tolist()
        if self.t0 is None:
            self.t0 = min(r[2] for r in rows)
        t0 = self.t0
        out = []
        for kind, res, s, e, tag, nb in rows:
            pid, tid, name = track_of(kind, res, self.ways)
            if (pid, tid) not in self.tracks:
                self._name_track(pid, tid, name, out)
            out.append(f'{{"ph":"X","pid":{pid},"tid":{tid},"ts":{_us(s - t0)},'
                       f'"dur":{_us(e - s)},"name":"{KIND_NAMES[kind]}",'
                       f'"args":{{"cmd":{tag},"bytes":{nb}}}}}')
        self.intervals += n
        self._write(out)

    def _command(self, c, d) -> None:
        tag, sid, qid, cid, name, nsid = c
        status, arrival, done = d
        key = (sid, qid)
        out = []
        tid = self.queues.get(key)
        if tid is None:
            tid = self.queues[key] = len(self.queues)
            self._name_track(PID_QUEUE, tid, f"client {sid} queue {qid}", out)
        a, e = _us(arrival - self.t0), _us(done - self.t0)
        args = (f'{{"cmd":{tag},"qid":{qid},"cid":{cid},"nsid":{nsid},"status":{status},'
                f'"device_ns":{done - arrival}}}')
        out += [f'{{"ph":"X","pid":{PID_QUEUE},"tid":{tid},"ts":{a},"dur":0,"name":"submit",'
                f'"bind_id":{tag},"flow_out":true,"args":{args}}}',
                f'{{"ph":"X","pid":{PID_QUEUE},"tid":{tid},"ts":{e},"dur":0,"name":"complete",'
                f'"bind_id":{tag},"flow_in":true,"args":{args}}}',
                f'{{"ph":"b","cat":"command","id":{tag},"pid":{PID_QUEUE},"tid":{tid},'
                f'"ts":{a},"name":"{name}","args":{args}}}',
                f'{{"ph":"e","cat":"command","id":{tag},"pid":{PID_QUEUE},"tid":{tid},'
                f'"ts":{e},"name":"{name}"}}']
        self.commands += 1
        self._write(out)

    def _name_track(self, pid: int, tid: int, name: str, out: list) -> None:
        if not any(p == pid for p, _ in self.tracks):
            out.append(json.dumps({"ph": "M", "pid": pid, "name": "process_name",
                                   "args": {"name": GROUPS[pid]}}))
            out.append(json.dumps({"ph": "M", "pid": pid, "name": "process_sort_index",
                                   "args": {"sort_index": pid}}))
        self.tracks.add((pid, tid))
        out.append(json.dumps({"ph": "M", "pid": pid, "tid": tid, "name": "thread_name",
                               "args": {"name": name}}))
        out.append(json.dumps({"ph": "M", "pid": pid, "tid": tid, "name": "thread_sort_index",
                               "args": {"sort_index": tid}}))

    def _write(self, events: list) -> None:
        if not events:
            return
        if not self.first:
            self.f.write(",\n")
        self.first = False
        self.f.write(",\n".join(events))

    def close(self) -> None:
        if self.f.closed:
            return
        self._drain()
        self.ring[0, H_ON] = 0
        meta = dict(self.meta, commands=self.commands, intervals=self.intervals,
                    dropped_intervals=self.dropped, truncated_at_cmd=self.truncated_at,
                    t0_ns=self.t0)
        self.f.write('\n],"otherData":' + json.dumps(meta) + "}\n")
        self.f.close()

