"""`csdemu stress`: a short run gives fio-shaped JSON with real counts; a bad
job file is a one-line error naming the bad key."""
import json
import subprocess
import sys

import pytest

JOB = """\
; two jobs, as tools/stress/*.ini but tiny
[global]
layers=2
q_heads=4
kv_heads=2
head_dim=128
batch=2
context=48
context_max=96
steps=60

[dense]
iodepth=4
mix=append:1,attend:2,reclaim:0.1

[sparf]
attention=sparf
numjobs=2
iodepth=2
mix=append:1,attend:1
"""


def csdemu(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "csdemu", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_stress_short_run_json(daemon, tmp_path):
    job = tmp_path / "job.ini"
    job.write_text(JOB)
    out = tmp_path / "out.json"
    r = csdemu("stress", str(job), "--socket", daemon.socket_path, "--json", "--no-progress",
               "-o", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert json.loads(out.read_text()) == res
    jobs = {j["jobname"]: j for j in res["jobs"]}
    assert set(jobs) == {"dense", "sparf"}
    d, s = jobs["dense"], jobs["sparf"]
    assert d["error"] == 0 and s["error"] == 0
    assert d["total_ios"] == 60 and s["total_ios"] == 120      # steps x numjobs
    for j in (d, s):
        for kind in ("append", "attend"):
            k = j[kind]
            assert k["total_ios"] > 0 and k["iops"] > 0 and k["bw_bytes"] > 0
            lat = k["lat_ns"]
            assert lat["N"] == k["total_ios"] and 0 < lat["min"] <= lat["percentile"]["50.000000"] <= lat["max"]
            assert set(lat["percentile"]) >= {"50.000000", "99.000000", "99.900000"}
            assert k["device_lat_ns"]["N"] == k["total_ios"]
        assert j["attend"]["device_lat_ns"]["percentile"]["50.000000"] > 0
        assert sum(j["channel_bytes_read"]) > 0 and all(b > 0 for b in j["channel_bytes_read"])
        eng = j["device_deltas"]["engine"]
        assert eng["attends"] == j["attend"]["total_ios"]
    assert d["reclaim"]["total_ios"] > 0 and d["prefill"]["total_ios"] > 0   # context_max reached
    assert s["device_deltas"]["engine"]["sparf_attends"] == s["attend"]["total_ios"]
    assert d["job options"]["iodepth"] == 4 and s["job options"]["attention"] == "sparf"
    assert res["device_deltas"]["engine"]["appends"] > 0


def test_stress_text_output_has_deltas(daemon, tmp_path):
    job = tmp_path / "job.ini"
    job.write_text("[one]\nlayers=1\nq_heads=2\nkv_heads=2\nhead_dim=64\nbatch=1\ncontext=16\n"
                   "steps=10\n")
    r = csdemu("stress", str(job), "--socket", daemon.socket_path, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "attend" in r.stdout and "lat (usec)" in r.stdout
    assert "WAF" in r.stdout and "GC runs" in r.stdout


@pytest.mark.parametrize("text,needles", [
    ("[j]\nlayers=2\nbogus_key=3\n", ["bogus_key", "[j]"]),
    ("[global]\niodepht=4\n[j]\n", ["iodepht", "[global]"]),
    ("[j]\niodepth=zero\n", ["iodepth", "zero"]),
    ("[j]\nmix=append:1,explode:2\n", ["mix", "explode"]),
    ("[j]\nattention=sparse\n", ["attention", "sparse"]),
    ("[j]\nq_heads=6\nkv_heads=4\n", ["q_heads", "kv_heads"]),
    ("layers=2\n", ["job.ini"]),
    ("[j]\nlayers=1\nlayers=2\n", ["layers"]),
])
def test_stress_bad_job_file_one_line(tmp_path, text, needles):
    job = tmp_path / "job.ini"
    job.write_text(text)
    r = csdemu("stress", str(job), "--socket", str(tmp_path / "no-daemon.sock"), timeout=60)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_stress_missing_job_file(tmp_path):
    r = csdemu("stress", str(tmp_path / "nope.ini"), timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and "nope.ini" in lines[0]


def test_shipped_job_files_parse():
    import glob
    import os
    from csdemu.stress.jobs import parse_job_file
    from tests import ROOT as root
    files = glob.glob(os.path.join(root, "tools", "stress", "*.ini"))
    assert files
    for f in files:
        assert parse_job_file(f)
