"""`csdemu start --trace FILE`: the drive's modeled timeline as a trace file.

The timing kernels write every interval they charge into the trace ring
(csdemu.drive.flash.trace_ring) under the tag of the command being
processed; the controller calls `begin` before a command and `end` after
its completion is decided (they record the command: queue, CID, opcode,
arrival, completion). The ring is sized for the whole trace and is turned
into FILE at shutdown, so a traced command pays nothing per interval in
Python. Draining it per command cost too much: formatting JSON takes ~3 us
an interval (268x the charge of a 65,536-page attend), and even spooling
the rows to a file made that charge 3.7x its untraced time, against 1.2x
now (`csdemu bench trace`).

The file is Chrome's JSON trace-event format, which ui.perfetto.dev and
chrome://tracing open: one process per kind of resource (host queues, the
PCIe link, channels, LUNs, engine units), one thread track per resource,
an X (complete) event per interval with its command's tag in `args.cmd`,
each command as an async slice from arrival to completion, and a flow
arrow from its submission to its completion on its queue's track. Times are
modeled nanoseconds (`ts` and `dur` in microseconds with three decimals)
from the earliest instant recorded (`otherData.t0_ns` on the controller
clock).

Bounded: the ring holds `limit` rows (48 bytes each, touched only as they
fill); once intervals and commands reach `limit`, or a command's intervals
no longer fit, the drive stops recording (one header word off, so the rest
of the run costs what an untraced one does) and the file says so in
`otherData.truncated_at_cmd`. A daemon killed with SIGKILL writes no file.
"""
from __future__ import annotations

import json

import numpy as np

from csdemu.drive.flash import trace_ring as ring_mod
from csdemu.drive.flash.trace_ring import H_DROPPED, H_N, H_ON, H_TAG, Kind
from nvme_cmds.opcodes import VendorIoOpcode, opcode_name

DEFAULT_LIMIT = 500_000          # intervals and commands per file: ~50 MB of JSON
CHUNK = 1 << 16                  # rows formatted at a time
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
    """The ring is the store: it holds `limit` rows, every command's
    intervals stay where the kernels wrote them, and the file is made from
    it at shutdown. So a traced command costs its intervals' rows and a
    tuple, nothing per interval in Python."""

    def __init__(self, path: str, clocks, geometry: dict, profile: dict,
                 limit: int = DEFAULT_LIMIT):
        self.path = path
        self.ring = ring_mod.new_ring(limit)      # pages are touched only as rows fill
        clocks.trace = self.ring
        self.ways = int(geometry["ways"])
        self.meta = {"format": FORMAT, "geometry": geometry, "profile": profile,
                     "limit": int(limit)}
        self.limit = int(limit)
        self.tag = 0
        self.truncated_at = None
        self.commands: list = []          # (tag, session, qid, cid, opc, cdw10, nsid, status, arrival, done)
        self.cur = None                   # the open command: (tag, session, qid, cid, opc, cdw10, nsid)
        self.done = None                  # its completion: (status, arrival, done)
        with open(path, "w"):             # fail at start, not at shutdown, if FILE cannot be made
            pass
        self.closed = False

    # ------------------------------------------------------------ per command
    def begin(self, session_id: int, qid: int, cmd) -> None:
        self.tag += 1
        self.ring[0, H_TAG] = self.tag
        self.cur = (self.tag, session_id, qid, cmd[2], cmd[0], cmd[9], cmd[3])
        self.done = None

    def note(self, qid: int, cid: int, status: int, arrival_ns: int, done_ns: int) -> None:
        """A completion decided (Controller.complete): the open command's if it matches."""
        c = self.cur
        if c is not None and c[2] == qid and c[3] == cid and self.done is None:
            self.done = (status, arrival_ns, done_ns if done_ns > arrival_ns else arrival_ns)

    def end(self) -> None:
        c, d = self.cur, self.done
        self.cur = None
        ring = self.ring
        ring[0, H_TAG] = 0
        if c is None or d is None or not ring[0, H_ON]:
            return
        self.commands.append(c + d)
        if ring[0, H_N] + len(self.commands) >= self.limit or ring[0, H_DROPPED]:
            self.truncated_at = c[0]
            ring[0, H_ON] = 0

    # ------------------------------------------------------------ the file
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.ring[0, H_ON] = 0
        with open(self.path, "w", buffering=1 << 20) as f:
            self._write(f)

    def _write(self, f) -> None:
        rows = self.ring[1:1 + int(self.ring[0, H_N])]
        # the earliest instant recorded: commands on other queues may arrive
        # before the first one's (virtual time runs ahead per queue)
        firsts = [c[8] for c in self.commands] + ([int(rows[:, 2].min())] if len(rows) else [])
        t0 = min(firsts, default=0)
        f.write('{"displayTimeUnit":"ns","traceEvents":[\n')
        events = self._metadata(rows)
        f.write(",\n".join(events))
        prefix = {}
        for k in range(0, len(rows), CHUNK):
            r = rows[k:k + CHUNK]
            s = r[:, 2] - t0
            d = r[:, 3] - r[:, 2]
            out = []
            for kind, res, s_us, s_ns, d_us, d_ns, tag, nb in zip(
                    r[:, 0].tolist(), r[:, 1].tolist(), (s // 1000).tolist(), (s % 1000).tolist(),
                    (d // 1000).tolist(), (d % 1000).tolist(), r[:, 4].tolist(), r[:, 5].tolist()):
                p = prefix.get((kind, res))
                if p is None:
                    pid, tid, _ = track_of(kind, res, self.ways)
                    p = prefix[(kind, res)] = (f',\n{{"ph":"X","pid":{pid},"tid":{tid},'
                                               f'"name":"{KIND_NAMES[kind]}","ts":')
                out.append(f'{p}{s_us}.{s_ns:03d},"dur":{d_us}.{d_ns:03d},'
                           f'"args":{{"cmd":{tag},"bytes":{nb}}}}}')
            f.write("".join(out))
        queues = {}
        for tag, sid, qid, cid, opc, cdw10, nsid, status, arrival, done in self.commands:
            name = command_name(int(opc), int(cdw10))
            tid = queues.setdefault((sid, qid), len(queues))
            a, e = _us(arrival - t0), _us(done - t0)
            args = (f'{{"cmd":{tag},"qid":{qid},"cid":{cid},"nsid":{nsid},"status":{status},'
                    f'"device_ns":{done - arrival}}}')
            f.write(f',\n{{"ph":"X","pid":{PID_QUEUE},"tid":{tid},"ts":{a},"dur":0,'
                    f'"name":"submit","bind_id":{tag},"flow_out":true,"args":{args}}}'
                    f',\n{{"ph":"X","pid":{PID_QUEUE},"tid":{tid},"ts":{e},"dur":0,'
                    f'"name":"complete","bind_id":{tag},"flow_in":true,"args":{args}}}'
                    f',\n{{"ph":"b","cat":"command","id":{tag},"pid":{PID_QUEUE},"tid":{tid},'
                    f'"ts":{a},"name":"{name}","args":{args}}}'
                    f',\n{{"ph":"e","cat":"command","id":{tag},"pid":{PID_QUEUE},"tid":{tid},'
                    f'"ts":{e},"name":"{name}"}}')
        for (sid, qid), tid in queues.items():
            f.write(",\n" + ",\n".join(_track_meta(PID_QUEUE, tid, f"client {sid} queue {qid}")))
        meta = dict(self.meta, commands=len(self.commands), intervals=len(rows),
                    dropped_intervals=int(self.ring[0, H_DROPPED]),
                    truncated_at_cmd=self.truncated_at, t0_ns=t0)
        f.write('\n],"otherData":' + json.dumps(meta) + "}\n")

    def _metadata(self, rows) -> list[str]:
        """Names and order of every process (group) and track the rows use."""
        out = []
        for pid, group in GROUPS.items():
            out += [json.dumps({"ph": "M", "pid": pid, "name": "process_name",
                                "args": {"name": group}}),
                    json.dumps({"ph": "M", "pid": pid, "name": "process_sort_index",
                                "args": {"sort_index": pid}})]
        pairs = np.unique(rows[:, :2], axis=0) if len(rows) else np.zeros((0, 2), np.int64)
        seen = set()
        for kind, res in pairs.tolist():
            pid, tid, name = track_of(kind, res, self.ways)
            if (pid, tid) not in seen:
                seen.add((pid, tid))
                out += _track_meta(pid, tid, name)
        return out


def _track_meta(pid: int, tid: int, name: str) -> list[str]:
    return [json.dumps({"ph": "M", "pid": pid, "tid": tid, "name": "thread_name",
                        "args": {"name": name}}),
            json.dumps({"ph": "M", "pid": pid, "tid": tid, "name": "thread_sort_index",
                        "args": {"sort_index": tid}})]
