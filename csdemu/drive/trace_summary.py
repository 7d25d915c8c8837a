"""Reads a trace file (csdemu.drive.trace): how busy each resource was, and
the critical path of a command.

Utilisation of a track is the union of its intervals over the trace's span
(the first command's arrival to the last completion or interval end).

The critical path walks back from a command's completion. At each instant T
it takes, in this order: one of the command's own intervals that ends at T
(the longest, if several do); the PCIe link's latency, if one of its own
link transfers ends exactly that long before T; an interval of another
command that ends at T (what the command queued behind: a die still
programming, a busy bus, the engine); else a gap, back to the latest of its
own intervals that ends before T (time no modeled resource accounts for,
e.g. firmware overhead). An interval whose start nothing explains while
another of the command's intervals ends inside it (the engine working
behind the reads) counts only from that end. So the segments tile the
command's time exactly: they add up to its device_ns.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from csdemu.drive.trace import GROUPS, PID_QUEUE

#: interval columns
PID, TID, START, END, CMD, BYTES, NAME = range(7)


@dataclass
class Trace:
    iv: np.ndarray          # int64 [n, 7]: pid, tid, start, end, cmd, bytes, name index
    names: list             # interval names, by the index in column NAME
    tracks: dict            # (pid, tid) -> track name
    commands: dict          # tag -> {"name", "arrival", "done", "device_ns", ...}
    meta: dict

    def track(self, row) -> str:
        return self.tracks.get((int(row[PID]), int(row[TID])), f"{row[PID]}/{row[TID]}")


def _ns(us) -> int:
    return int(round(float(us) * 1000))


def load(path: str) -> Trace:
    with open(path) as f:
        doc = json.load(f)
    names, name_ix, tracks, commands, rows = [], {}, {}, {}, []
    for ev in doc["traceEvents"]:
        ph = ev.get("ph")
        if ph == "X" and ev["pid"] != PID_QUEUE:
            s = _ns(ev["ts"])
            k = name_ix.get(ev["name"])
            if k is None:
                k = name_ix[ev["name"]] = len(names)
                names.append(ev["name"])
            rows.append((ev["pid"], ev["tid"], s, s + _ns(ev["dur"]), ev["args"]["cmd"],
                         ev["args"]["bytes"], k))
        elif ph == "b":
            a = ev["args"]
            arrival = _ns(ev["ts"])
            commands[a["cmd"]] = dict(a, name=ev["name"], arrival=arrival,
                                      done=arrival + a["device_ns"])
        elif ph == "M" and ev.get("name") == "thread_name":
            tracks[(ev["pid"], ev["tid"])] = ev["args"]["name"]
    iv = np.array(rows, np.int64).reshape(-1, 7)
    return Trace(iv, names, tracks, commands, doc.get("otherData", {}))


def span(tr: Trace) -> tuple[int, int]:
    lo = [int(tr.iv[:, START].min())] if len(tr.iv) else []
    hi = [int(tr.iv[:, END].max())] if len(tr.iv) else []
    lo += [c["arrival"] for c in tr.commands.values()]
    hi += [c["done"] for c in tr.commands.values()]
    return (min(lo), max(hi)) if lo else (0, 0)


def busy_ns(starts: np.ndarray, ends: np.ndarray) -> int:
    """Length of the union of intervals."""
    if not len(starts):
        return 0
    o = np.argsort(starts, kind="stable")
    total, cur_s, cur_e = 0, int(starts[o[0]]), int(ends[o[0]])
    for s, e in zip(starts[o[1:]].tolist(), ends[o[1:]].tolist()):
        if s > cur_e:
            total += cur_e - cur_s
            cur_s, cur_e = s, e
        elif e > cur_e:
            cur_e = e
    return total + cur_e - cur_s


def utilisation(tr: Trace, window: tuple[int, int] | None = None) -> list[dict]:
    """One row per resource track: group, name, busy ns, share of the span
    (or of `window`, intervals clipped to it), bytes."""
    lo, hi = window or span(tr)
    width = max(1, hi - lo)
    out = []
    iv = tr.iv
    if window is not None:
        iv = iv[(iv[:, END] > lo) & (iv[:, START] < hi)]
    key = iv[:, PID] * (1 << 32) + iv[:, TID]
    for k in np.unique(key):
        m = key == k
        rows = iv[m]
        pid, tid = int(rows[0, PID]), int(rows[0, TID])
        b = busy_ns(np.maximum(rows[:, START], lo), np.minimum(rows[:, END], hi))
        out.append({"group": GROUPS.get(pid, str(pid)), "pid": pid, "tid": tid,
                    "track": tr.tracks.get((pid, tid), str(tid)), "busy_ns": b,
                    "utilisation": b / width, "intervals": int(m.sum()),
                    "bytes": int(rows[:, BYTES].sum())})
    return out


def incomplete(tr: Trace) -> int | None:
    """The command whose intervals did not all fit (the ring filled during it)."""
    m = tr.meta
    return m.get("truncated_at_cmd") if m.get("dropped_intervals") else None


def longest_command(tr: Trace) -> int | None:
    tags = [t for t in tr.commands if t != incomplete(tr)]
    if not tags:
        return None
    return max(tags, key=lambda t: (tr.commands[t]["device_ns"], -t))


def critical_path(tr: Trace, tag: int, link_latency_ns: int | None = None) -> list[dict]:
    """Segments from the command's arrival to its completion (module doc);
    each {"start", "end", "what", "track", "cmd"}, in time order."""
    c = tr.commands[tag]
    arrival, done = c["arrival"], c["done"]
    lat = int(tr.meta.get("profile", {}).get("pcie_latency_ns", 0)
              if link_latency_ns is None else link_latency_ns)
    iv = tr.iv
    own = np.flatnonzero(iv[:, CMD] == tag)
    own_by_end = defaultdict(list)
    for i in own.tolist():
        own_by_end[int(iv[i, END])].append(i)
    own_ends = np.sort(iv[own, END]) if len(own) else np.zeros(0, np.int64)
    link_pid = next((p for p, g in GROUPS.items() if g == "PCIe link"), None)
    own_link_ends = {int(iv[i, END]) for i in own.tolist() if iv[i, PID] == link_pid}
    other_by_end = defaultdict(list)
    for i in np.flatnonzero(iv[:, CMD] != tag).tolist():
        other_by_end[int(iv[i, END])].append(i)
    any_end = set(own_by_end) | set(other_by_end)
    used = set()

    def latest_own_end_before(t):
        k = int(np.searchsorted(own_ends, t, side="left"))
        return int(own_ends[k - 1]) if k else None

    def seg(s, e, what, row=None):
        return {"start": int(s), "end": int(e), "what": what,
                "track": tr.track(iv[row]) if row is not None else "",
                "cmd": int(iv[row, CMD]) if row is not None else tag}

    ways = int(tr.meta.get("geometry", {}).get("ways", 0)) or None
    lun_pid = next(p for p, g in GROUPS.items() if g == "LUNs")
    ch_pid = next(p for p, g in GROUPS.items() if g == "channels")

    def channel(j):
        pid, tid = int(iv[j, PID]), int(iv[j, TID])
        if pid == ch_pid:
            return tid
        return tid // ways if pid == lun_pid and ways else None

    def kinship(j, cur):
        """0: the same resource as `cur` (the die or bus it queued on), 1: a
        die and its channel's bus (a die is held until its data has left),
        2: anything else. Pages of one attend run in lock step, so several
        of its intervals often end on the same nanosecond; the one on the
        same resource is the cause."""
        if cur is None:
            return 2
        if iv[j, PID] == iv[cur, PID] and iv[j, TID] == iv[cur, TID]:
            return 0
        if iv[j, PID] == iv[cur, PID]:
            return 2
        c = channel(j)
        return 1 if c is not None and c == channel(cur) else 2

    out, T, cur = [], done, None
    for _ in range(4 * len(own) + 64):
        if T <= arrival:
            break
        cands = [i for i in own_by_end.get(T, ()) if i not in used]
        if cands:
            i = min(cands, key=lambda j: (kinship(j, cur), iv[j, START], j))   # then the longest
            cur = i
            used.add(i)
            s = int(iv[i, START])
            explained = (s <= arrival or s in any_end or (lat and s - lat in own_link_ends))
            if not explained:
                e = latest_own_end_before(T)
                if e is not None and e > s:
                    s = e
            s = max(s, arrival)
            out.append(seg(s, T, tr.names[iv[i, NAME]], i))
            T = s
            continue
        if lat and T - lat in own_link_ends and T - lat >= arrival:
            out.append(seg(T - lat, T, "link latency"))
            T -= lat
            continue
        blockers = [i for i in other_by_end.get(T, ()) if i not in used]
        if blockers:
            i = min(blockers, key=lambda j: (kinship(j, cur), iv[j, START], j))
            cur = i
            used.add(i)
            s = max(int(iv[i, START]), arrival)
            out.append(seg(s, T, f"queued behind {tr.names[iv[i, NAME]]}", i))
            T = s
            continue
        e = latest_own_end_before(T)
        s = arrival if e is None or e < arrival else e
        out.append(seg(s, T, "not a modeled resource"))
        T = s
    out.reverse()
    return out


def runs(path: list[dict]) -> list[dict]:
    """Consecutive segments of one kind on one track (and command) as one."""
    out = []
    for sg in path:
        last = out[-1] if out else None
        if last and (last["what"], last["track"], last["cmd"]) == (sg["what"], sg["track"], sg["cmd"]):
            last["end"] = sg["end"]
            last["n"] += 1
        else:
            out.append(dict(sg, n=1))
    return out


def _util_lines(util: list[dict], top: int) -> list[str]:
    lines = []
    for pid, group in GROUPS.items():
        rows = [u for u in util if u["pid"] == pid]
        if not rows:
            continue
        us = np.array([u["utilisation"] for u in rows])
        lines.append(f"  {group}: {len(rows)} tracks, mean {100 * us.mean():.1f} %, "
                     f"min {100 * us.min():.1f} %, max {100 * us.max():.1f} %")
        shown = sorted(rows, key=lambda u: (-u["utilisation"], u["tid"]))[:top]
        for u in sorted(shown, key=lambda u: u["tid"]):
            lines.append(f"    {u['track']:<22} {100 * u['utilisation']:6.1f} %  "
                         f"{u['busy_ns'] / 1e3:12.3f} us busy  {u['intervals']:8d} intervals  "
                         f"{u['bytes'] / 2**20:10.2f} MiB")
        if len(rows) > top:
            lines.append(f"    ... {len(rows) - top} less busy tracks not shown")
    return lines


def format_summary(tr: Trace, top: int = 8, tag: int | None = None) -> str:
    lo, hi = span(tr)
    m = tr.meta
    lines = [f"trace: {len(tr.commands)} commands, {len(tr.iv)} intervals over "
             f"{(hi - lo) / 1e6:.3f} ms modeled"
             + (f"; recording stopped after command {m['truncated_at_cmd']} (--trace-limit)"
                if m.get("truncated_at_cmd") else "")
             + (f"; {m['dropped_intervals']} intervals dropped" if m.get("dropped_intervals")
                else "")]
    lines.append("\nutilisation over the whole trace (busy time / span):")
    lines += _util_lines(utilisation(tr), top)
    which = "command" if tag is not None else "longest command"
    tag = longest_command(tr) if tag is None else tag
    if tag is None:
        return "\n".join(lines)
    c = tr.commands[tag]
    path = critical_path(tr, tag)
    lines.append(f"\n{which}: cmd {tag} {c['name']} (queue {c['qid']}, cid {c['cid']}), "
                 f"device time {c['device_ns'] / 1e3:.3f} us"
                 + ("; INCOMPLETE: the trace filled during it" if tag == incomplete(tr) else ""))
    lines.append("utilisation while it ran (all commands' intervals):")
    lines += _util_lines(utilisation(tr, (c["arrival"], c["done"])), top)
    lines.append(f"critical path: {len(path)} segments")
    totals, counts = defaultdict(int), defaultdict(int)
    for sg in path:
        totals[sg["what"]] += sg["end"] - sg["start"]
        counts[sg["what"]] += 1
    for what, ns in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {what:<28} {ns / 1e3:12.3f} us  {100 * ns / max(1, c['device_ns']):5.1f} %"
                     f"  {counts[what]:6d} segments")
    rs = runs(path)
    lines.append("  in order (us from arrival; runs of one kind on one track merged):")
    show = rs if len(rs) <= 2 * top else rs[:top] + [None] + rs[-top:]
    for sg in show:
        if sg is None:
            lines.append(f"    ... {len(rs) - 2 * top} more runs")
            continue
        who = "" if sg["cmd"] == tag else f" (cmd {sg['cmd']})"
        many = f" x{sg['n']}" if sg["n"] > 1 else ""
        lines.append(f"    {(sg['start'] - c['arrival']) / 1e3:10.3f} -> "
                     f"{(sg['end'] - c['arrival']) / 1e3:10.3f}  {sg['what'] + many:<24} "
                     f"{sg['track']}{who}")
    return "\n".join(lines)
