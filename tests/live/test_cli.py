"""The command line against a real daemon: verbs work, bad input is one line."""
import json
import os
import subprocess
import sys

import pytest

from tests import ROOT


def csdemu(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "csdemu", *args], capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(r, *needles):
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_identify_smart_log_passthru(daemon):
    s = ["--socket", daemon.socket_path]
    r = csdemu("identify", *s, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["sqes"] == 0x66
    r = csdemu("identify", *s, "-n", "1")
    assert r.returncode == 0 and "nsze" in r.stdout
    r = csdemu("smart", *s, "--json")
    assert "data_units_read" in json.loads(r.stdout)
    r = csdemu("passthru", *s, "-o", "0x80", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "SUCCESS"
    r = csdemu("passthru", *s, "-o", "0x02", "-n", "1", "-l", "4096", "--json")
    out = json.loads(r.stdout)
    assert out["status"] == "SUCCESS" and len(out["data"]) == 8192
    r = csdemu("passthru", *s, "-o", "0x7e", "-n", "1")
    assert r.returncode == 1 and "INVALID_OPCODE" in r.stdout


@pytest.mark.parametrize("args,needles", [
    (["start", "--poll-idle-us", "-5"], ["--poll-idle-us"]),
    (["start", "--timing", "sometimes"], ["--timing"]),
    (["log", "bogus", "--socket", "/nonexistent.sock"], ["bogus"]),
    (["smart", "--socket", "/nonexistent.sock"], ["/nonexistent.sock"]),
    (["passthru", "--opcode", "zz"], ["--opcode"]),
    (["frobnicate"], ["frobnicate"]),
    (["bench", "qpair", "--qd", "0"], ["--qd"]),
    (["bench", "qpair", "--seconds", "-1"], ["--seconds"]),
    (["bench", "generate", "--steps", "0"], ["--steps"]),
    (["bench", "attention", "--contexts", "1k"], ["--contexts", "1k"]),
    (["bench", "attention", "--contexts", "100"], ["--contexts", "16"]),
    (["bench", "attention", "--repeat", "0"], ["--repeat"]),
    (["eval-sparse", "--contexts", "0"], ["--contexts"]),
    (["reproduce", "--batch", "1,x"], ["--batch"]),
    (["log", "--length", "0"], ["--length"]),
    (["bench", "flash", "--profile", "nope"], ["profile nope"]),
    (["generate", "--profile", "nope"], ["profile nope"]),
    (["eval-sparse", "--profile", "nope"], ["profile nope"]),
    (["stress", os.path.join(ROOT, "tools", "stress", "decode-dense.ini"), "--profile", "nope"],
     ["profile nope"]),
    (["bench", "generate", "--socket", "/nonexistent.sock"], ["/nonexistent.sock"]),
    (["start", "--cpus", "x"], ["--cpus", "'x'"]),
    (["start", "--cpus", "4096"], ["--cpus", "CPU 4096"]),
    (["nbd", "--cpus", "1-0", "--socket", "/nonexistent.sock"], ["--cpus", "'1-0'"]),
])
def test_bad_arguments_give_one_line(args, needles):
    one_line_error(csdemu(*args), *needles)


@pytest.mark.parametrize("foreground", [False, True])
def test_start_refuses_a_socket_path_that_is_a_file(tmp_path, foreground):
    """--socket naming a regular file: refused in one line, the file kept,
    and nothing formatted in the data dir."""
    victim = tmp_path / "notes.txt"
    victim.write_text("keep me")
    data = tmp_path / "data"
    r = csdemu("start", "--socket", str(victim), "--data-dir", str(data),
               *(["--foreground"] if foreground else []))
    one_line_error(r, "--socket", str(victim), "not a socket")
    assert victim.read_text() == "keep me"
    assert not data.exists() or not os.listdir(data)


def test_start_refuses_a_live_socket_and_the_daemon_keeps_serving(daemon, tmp_path):
    data = tmp_path / "other-data"
    r = csdemu("start", "--socket", daemon.socket_path, "--data-dir", str(data))
    one_line_error(r, "already listening", daemon.socket_path)
    assert not data.exists() or not os.listdir(data)
    r = csdemu("identify", "--socket", daemon.socket_path, "--json")
    assert r.returncode == 0


def test_logs_and_data_read_as_nvme_cli_shows_them(daemon):
    """Decoded logs and hex dumps, not a line of 8,192 hex digits (issue 22)."""
    s = ["--socket", daemon.socket_path]
    r = csdemu("log", "engine", *s)
    assert r.returncode == 0 and "attends" in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) < 200
    r = csdemu("passthru", *s, "-o", "0x02", "-n", "1", "-l", "4096")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[1].split()[0] == "0"      # the column header
    assert lines[2].startswith("0000: ") and max(len(line) for line in lines) < 80
    r = csdemu("log", "0xC2", *s)
    assert r.returncode != 0 or "0000: " in r.stdout
    # the error log is each client's own: a fresh CLI client's is empty ...
    r = csdemu("log", "error", *s, "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"entries": 0}
    # ... and one client's failed command is decoded as nvme error-log lists it
    import csdemu as lib
    from csdemu.cli.admin import _error_log
    with lib.connect(daemon.socket_path) as dev:
        dev.passthru(0x02, 1, cdw10=0xFFFFFFFF, cdw11=0xFFFF)
        entry = _error_log(dev.log_page(0x01, 4096))["entry 0"]
    assert entry["status"] == "LBA_OUT_OF_RANGE" and entry["parm_err_loc"] == "byte 40 bit 0"


def test_long_commands_report_progress_on_stderr_json_stays_clean(daemon):
    s = ["--socket", daemon.socket_path]
    r = csdemu("eval-sparse", *s, "--contexts", "64", "--ratios", "1/2", "--eval-tokens", "2",
               "--batch", "1", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    assert [row["mode"] for row in json.loads(r.stdout)["rows"]] == ["dense", "sparf-1/2"]
    said = [ln for ln in r.stderr.splitlines() if ln.startswith("eval-sparse: context 64")]
    assert len(said) == 2 and "perplexity" in said[0]


def test_profiles_show_resolves_capacity_and_names_bad_keys():
    r = csdemu("profiles", "show", "instinfer", "--set", "device.capacity=2T", "--json")
    d = json.loads(r.stdout)
    assert r.returncode == 0 and d["derived"]["raw_bytes"] == 2 << 40
    r = csdemu("profiles", "show", "instinfer")
    assert r.returncode == 0 and r.stdout.startswith("profile instinfer:") and "[timing]" in r.stdout
    one_line_error(csdemu("profiles", "show", "instinfer", "--set", "device.capcity=1T"), "capcity")
    one_line_error(csdemu("profiles", "show", "nosuch"), "nosuch")
    assert csdemu("profiles").stdout.startswith("femu-bbssd")


def test_nvme_cli_names_work_as_aliases(daemon):
    s = ["--socket", daemon.socket_path]
    assert json.loads(csdemu("id-ctrl", *s, "--json").stdout)["sqes"] == 0x66
    assert "nsze" in json.loads(csdemu("id-ns", *s, "-n", "1", "--json").stdout)
    assert "data_units_read" in json.loads(csdemu("smart-log", *s, "--json").stdout)
    assert json.loads(csdemu("error-log", *s, "--json").stdout) == {"entries": 0}
    r = csdemu("get-log", *s, "-i", "0xC1", "--json")
    assert r.returncode == 0 and "attends" in json.loads(r.stdout)
    r = csdemu("io-passthru", *s, "-o", "0x80", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "SUCCESS"
    r = csdemu("admin-passthru", *s, "-o", "0x06", "--cdw10", "1", "-l", "4096", "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)["data"]) == 8192
    one_line_error(csdemu("id-ns", *s, "-n", "999"), "INVALID_NAMESPACE", "NSID")


def test_status_shows_geometry_capacity_and_overrides():
    from tools.torture.common import small_daemon
    d = small_daemon().start()
    try:
        r = csdemu("status", "--socket", d.socket_path)
        drive = [ln for ln in r.stdout.splitlines() if ln.startswith("drive:")]
        assert r.returncode == 0 and len(drive) == 1, r.stdout
        assert "0.25 GiB raw" in drive[0] and "16 lines" in drive[0]
        assert "--set geometry.blocks_per_plane=16 geometry.pages_per_block=64" in drive[0]
        st = json.loads(csdemu("status", "--socket", d.socket_path, "--json").stdout)
        assert st["raw_bytes"] == 256 << 20 and st["geometry"]["channels"] == 8
    finally:
        d.cleanup()
