"""The trace writer and `csdemu trace summary` on a hand-made timeline."""
import json
import types

import numpy as np
import pytest
from click.testing import CliRunner

from csdemu.cli.app import main
from csdemu.drive import trace_summary as ts
from csdemu.drive.flash import trace_ring
from csdemu.drive.flash.timing import Clocks, NandTiming, Op, advance_batch
from csdemu.drive.flash.trace_ring import Kind, emit_rows
from csdemu.drive.trace import Tracer

LAT = 5
WAYS = 2
ATTEND_DENSE = (0x83, 0, 7, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
READ = (0x02, 0, 8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def run(tracer, cmd, rows, arrival, done, qid=1):
    tracer.begin(1, qid, cmd)
    emit_rows(tracer.ring, rows)
    tracer.note(qid, cmd[2], 0, arrival, done)
    tracer.end()


@pytest.fixture
def trace_file(tmp_path):
    """cmd 1: an attend over one page: q over the link, sense, transfer,
    the engine trailing the transfer, the output over the link. cmd 2: a
    read that waits for cmd 1's die, then its own sense, transfer, link."""
    path = str(tmp_path / "t.json")
    clocks = types.SimpleNamespace(trace=None)
    t = Tracer(path, clocks, {"ways": WAYS}, {"pcie_latency_ns": LAT})
    assert clocks.trace is t.ring
    run(t, ATTEND_DENSE, [
        (Kind.LINK, 0, 100, 110, 512),
        (Kind.SENSE, 1, 115, 165, 4096),          # ch0 lun1
        (Kind.CHANNEL, 0, 165, 180, 4096),
        (Kind.GEMV, 0, 150, 200, 0),              # started while the page moved
        (Kind.SOFTMAX, 0, 190, 200, 0),
        (Kind.LINK, 0, 200, 210, 512),
    ], 100, 215)
    run(t, READ, [
        (Kind.SENSE, 1, 180, 230, 4096),          # the die is free once cmd 1's data left
        (Kind.CHANNEL, 0, 230, 245, 4096),
        (Kind.LINK, 0, 245, 255, 4096),
    ], 120, 260, qid=2)
    t.close()
    return path


def test_file_is_chrome_trace_json(trace_file):
    doc = json.load(open(trace_file))
    ev = doc["traceEvents"]
    assert doc["otherData"]["commands"] == 2 and doc["otherData"]["intervals"] == 9
    xs = [e for e in ev if e["ph"] == "X" and e["pid"] != 1]
    assert {e["name"] for e in xs} == {"link", "sense", "xfer", "gemv", "softmax"}
    first = next(e for e in xs if e["name"] == "sense")
    assert first["ts"] == 0.015 and first["dur"] == 0.05 and first["args"] == {"cmd": 1, "bytes": 4096}
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in ev if e.get("name") == "thread_name"}
    assert names[(4, 1)] == "ch0 lun1" and names[(3, 0)] == "channel 0"
    assert names[(5, 0)] == "unit 0 gemv" and names[(2, 0)] == "PCIe link"
    flows = [e for e in ev if "bind_id" in e]
    assert sorted((e["bind_id"], e.get("flow_out", False)) for e in flows) == [
        (1, False), (1, True), (2, False), (2, True)]
    cmds = [e for e in ev if e["ph"] == "b"]
    assert [(c["name"], c["args"]["device_ns"]) for c in cmds] == [("ATTEND dense", 115),
                                                                   ("READ", 140)]


def test_utilisation(trace_file):
    tr = ts.load(trace_file)
    assert ts.span(tr) == (0, 160)
    u = {x["track"]: x for x in ts.utilisation(tr)}
    assert u["PCIe link"]["busy_ns"] == 30 and u["PCIe link"]["intervals"] == 3
    assert u["channel 0"]["busy_ns"] == 30 and u["channel 0"]["bytes"] == 8192
    assert u["ch0 lun1"]["busy_ns"] == 100
    assert u["ch0 lun1"]["utilisation"] == pytest.approx(100 / 160)
    assert u["unit 0 gemv"]["busy_ns"] == 50


def test_busy_is_a_union():
    assert ts.busy_ns(np.array([0, 5, 20]), np.array([10, 12, 25])) == 17


def test_critical_path_tiles_the_command(trace_file):
    tr = ts.load(trace_file)
    assert ts.longest_command(tr) == 2
    p1 = ts.critical_path(tr, 1)
    assert [(s["start"], s["end"], s["what"]) for s in p1] == [
        (0, 10, "link"), (10, 15, "link latency"), (15, 65, "sense"), (65, 80, "xfer"),
        (80, 100, "gemv"),                         # only what trails the transfer
        (100, 110, "link"), (110, 115, "link latency")]
    p2 = ts.critical_path(tr, 2)
    assert [(s["start"], s["end"], s["what"], s["cmd"]) for s in p2] == [
        (20, 65, "queued behind sense", 1),        # cmd 1's page held the die until it left
        (65, 80, "queued behind xfer", 1),
        (80, 130, "sense", 2), (130, 145, "xfer", 2), (145, 155, "link", 2),
        (155, 160, "link latency", 2)]
    for path, c in ((p1, tr.commands[1]), (p2, tr.commands[2])):
        assert path[0]["start"] == c["arrival"] and path[-1]["end"] == c["done"]
        assert all(a["end"] == b["start"] for a, b in zip(path, path[1:]))
        assert sum(s["end"] - s["start"] for s in path) == c["device_ns"]


def test_summary_command(trace_file):
    r = CliRunner().invoke(main, ["trace", "summary", trace_file])
    assert r.exit_code == 0, r.output
    assert "longest command: cmd 2 READ" in r.output and "critical path: 6 segments" in r.output
    assert "channel 0" in r.output and "62.5 %" in r.output     # ch0 lun1: 100 of 160 ns
    r = CliRunner().invoke(main, ["trace", "summary", trace_file, "--json", "--cmd", "1"])
    doc = json.loads(r.output)
    assert doc["cmd"] == 1 and sum(s["end"] - s["start"] for s in doc["critical_path"]) == 115
    r = CliRunner().invoke(main, ["trace", "summary", trace_file, "--cmd", "9"])
    assert r.exit_code == 2 and "no command 9" in r.output


def test_limit_stops_recording(tmp_path):
    clocks = types.SimpleNamespace(trace=None)
    t = Tracer(str(tmp_path / "t.json"), clocks, {"ways": WAYS}, {}, limit=5)
    for i in range(3):
        run(t, READ, [(Kind.SENSE, 0, 10 * i, 10 * i + 5, 4096)] * 3, 10 * i, 10 * i + 9)
    t.close()
    meta = json.load(open(tmp_path / "t.json"))["otherData"]
    # the ring holds 5 rows: command 2's third interval no longer fits
    assert meta["truncated_at_cmd"] == 2 and meta["intervals"] == 5
    assert meta["dropped_intervals"] == 1 and meta["commands"] == 2
    assert not clocks.trace[0, trace_ring.H_ON]
    tr = ts.load(str(tmp_path / "t.json"))
    assert ts.incomplete(tr) == 2 and ts.longest_command(tr) == 1


def test_kernels_record_what_they_charge():
    """The compiled timing kernels write one row per interval they book, and
    an untraced Clocks (the header-only ring) records nothing."""
    tm = NandTiming(tR_ns=1000, tR_4k_ns=1000, tPROG_ns=5000, tBERS_ns=9000, channel_mbps=1000,
                    channel_xfer_overhead_ns=0, pcie_mbps=2000, pcie_latency_ns=LAT)
    off = Clocks.create(2, 2)
    on = Clocks.create(2, 2)
    on.trace = trace_ring.new_ring(64)
    on.trace[0, trace_ring.H_TAG] = 7
    for clk in (off, on):
        advance_batch(Op.READ, [0, 1], [1, 0], 0, 4096, clk, tm, pcie=True)
        advance_batch(Op.PROGRAM, [1], [1], 0, 4096, clk, tm)
    assert off.trace.shape == (1, 6) and not off.trace.any()
    rows = on.trace[1:1 + on.trace[0, trace_ring.H_N]]
    assert rows[:, 0].tolist() == [Kind.SENSE, Kind.CHANNEL, Kind.LINK] * 2 + [
        Kind.CHANNEL, Kind.PROGRAM]
    assert (rows[:, 4] == 7).all()
    sense, xfer, link = rows[:3]
    assert sense[1:4].tolist() == [1, 0, 1000] and xfer[1:4].tolist() == [0, 1000, 1000 + 4096]
    assert link[2] == xfer[3] and link[3] - link[2] == 2048
    assert (on.state == off.state).all()              # tracing changes no modeled time


def test_a_trace_file_that_cannot_be_written_is_one_line(tmp_path):
    sock = tmp_path / "s"
    sock.mkdir(mode=0o700)
    r = CliRunner().invoke(main, ["start", "--foreground", "--socket", str(sock / "x.sock"),
                                  "--data-dir", str(tmp_path / "d"),
                                  "--trace", str(tmp_path / "no" / "t.json")])
    assert r.exit_code == 1
    assert f"--trace: directory {tmp_path / 'no'} does not exist" in r.output
    assert not (tmp_path / "d").exists()            # refused before anything was made
