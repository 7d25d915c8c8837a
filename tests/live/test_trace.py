"""`csdemu start --trace`: the trace of a real drive against its completions."""
import json
import subprocess
import sys

import numpy as np
import pytest

import csdemu
from csdemu.drive import trace_summary as ts
from csdemu.drive.profile import load_profile
from csdemu.drive.trace import PID_ENGINE, PID_LINK, PID_LUN, PID_CHANNEL
from csdemu.host.spawn import DaemonProcess

Q_HEADS, KV_HEADS, D = 4, 2, 64
LENS = [700, 1024]
SPARF = csdemu.SparF(r=8, k=128, window=16)


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """A dense and a SparF attend on a traced instinfer drive: the trace and,
    per attend, what the client saw (device_ns, engine-log deltas)."""
    path = str(tmp_path_factory.mktemp("trace") / "drive.json")
    d = DaemonProcess(profile="instinfer", extra_args=["--trace", path]).start()
    seen = {}
    try:
        rng = np.random.default_rng(5)
        with csdemu.connect(d.socket_path) as dev:
            kv = dev.create_kv_namespace(layers=1, q_heads=Q_HEADS, kv_heads=KV_HEADS,
                                         head_dim=D, dtype="float16", sparse_layout=True)
            ids = [1, 2]
            for i, n in zip(ids, LENS):
                k = rng.standard_normal((1, n, KV_HEADS, D)).astype(np.float32)
                kv.append(0, [i], k, k[..., ::-1].copy())
            q = rng.standard_normal((len(ids), Q_HEADS, D)).astype(np.float32)
            for mode, sparse in (("dense", None), ("sparf", SPARF)):
                before = dev.engine_log()
                kv.attend(0, ids, q, sparse=sparse)
                after = dev.engine_log()
                seen[mode] = {"device_ns": kv.last.device_ns,
                              "pages": after["pages_read_flash"] - before["pages_read_flash"],
                              "bytes": after["bytes_read_flash"] - before["bytes_read_flash"]}
            kv.delete()
    finally:
        assert d.stop() == 0, d.log_text()[-2000:]
        d.cleanup()
    return ts.load(path), seen, path


def attend_tag(tr, mode):
    tags = [t for t, c in tr.commands.items() if c["name"] == f"ATTEND {mode}"]
    assert len(tags) == 1
    return tags[0]


@pytest.mark.parametrize("mode", ["dense", "sparf"])
def test_intervals_add_up_to_the_completion(traced, mode):
    tr, seen, _ = traced
    tag = attend_tag(tr, mode)
    c = tr.commands[tag]
    assert c["device_ns"] == seen[mode]["device_ns"] > 0
    path = ts.critical_path(tr, tag)
    assert path[0]["start"] == c["arrival"] and path[-1]["end"] == c["done"]
    assert all(a["end"] == b["start"] for a, b in zip(path, path[1:]))
    assert sum(s["end"] - s["start"] for s in path) == seen[mode]["device_ns"]
    # every segment is a recorded interval or the link's latency: none is unexplained
    lat = load_profile("instinfer").pcie.latency_ns
    for s in path:
        assert s["what"] != "not a modeled resource", path
        if s["what"] == "link latency":
            assert s["end"] - s["start"] == lat
    whats = [s["what"] for s in path if s["what"] != "link latency"]
    assert whats[0] == "link" and whats[-1] == "link"             # q in, output out


@pytest.mark.parametrize("mode", ["dense", "sparf"])
def test_trace_holds_every_read_the_engine_counted(traced, mode):
    tr, seen, _ = traced
    tag = attend_tag(tr, mode)
    own = tr.iv[tr.iv[:, ts.CMD] == tag]
    sense = own[own[:, ts.PID] == PID_LUN]
    xfer = own[own[:, ts.PID] == PID_CHANNEL]
    assert len(sense) == len(xfer) == seen[mode]["pages"] > 0
    assert int(xfer[:, ts.BYTES].sum()) == seen[mode]["bytes"]
    assert (sense[:, ts.BYTES] == 4096).all()                     # each page sensed whole
    if mode == "sparf":
        assert (xfer[:, ts.BYTES] < 4096).any()                   # column reads
    link = own[own[:, ts.PID] == PID_LINK]
    assert sorted(link[:, ts.BYTES].tolist()) == [len(LENS) * Q_HEADS * D * 4] * 2
    stages = {tr.names[n] for n in own[own[:, ts.PID] == PID_ENGINE][:, ts.NAME]}
    assert stages == ({"gemv", "softmax", "filter"} if mode == "sparf" else {"gemv", "softmax"})
    units = set(own[own[:, ts.PID] == PID_ENGINE][:, ts.TID] // 3)
    assert units == set(range(load_profile("instinfer").geometry.channels))


def test_appends_program_pages_and_summary_runs(traced):
    tr, _, path = traced
    appends = [t for t, c in tr.commands.items() if c["name"] == "KV_APPEND"]
    assert len(appends) == len(LENS)
    progs = tr.iv[np.isin(tr.iv[:, ts.CMD], appends)]
    assert {tr.names[n] for n in progs[:, ts.NAME]} >= {"link", "xfer", "program"}
    r = subprocess.run([sys.executable, "-m", "csdemu", "trace", "summary", path, "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    longest = max(c["device_ns"] for c in tr.commands.values())
    assert doc["command"]["device_ns"] == longest
    assert sum(s["end"] - s["start"] for s in doc["critical_path"]) == longest
    assert all(0 < u["utilisation"] <= 1 for u in doc["utilisation"])
