"""`--cpus`: the CPU-list syntax, and a daemon and nbdkit that really run there."""
import json
import os
import subprocess
import sys

import pytest

from csdemu.drive.cpus import format_cpu_list, parse_cpu_list, pin_process, thread_affinities

ALLOWED = sorted(os.sched_getaffinity(0))


def test_parse_and_format_round_trip():
    assert parse_cpu_list(str(ALLOWED[0])) == {ALLOWED[0]}
    whole = format_cpu_list(ALLOWED)
    assert parse_cpu_list(whole) == set(ALLOWED)
    assert format_cpu_list({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert format_cpu_list({3}) == "3"


@pytest.mark.parametrize("text,needle", [
    ("x", "'x'"), ("1-0", "'1-0'"), ("-1", "'-1'"), ("", "''"), ("0,,1", "''"),
    (str(max(ALLOWED) + 1), f"CPU {max(ALLOWED) + 1} is not available"),
])
def test_bad_lists_name_the_item(text, needle):
    with pytest.raises(ValueError) as e:
        parse_cpu_list(text)
    assert needle in str(e.value)


def test_pin_process_covers_every_thread():
    import threading
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        pin_process({ALLOWED[0]})
        assert all(a == {ALLOWED[0]} for a in thread_affinities())
    finally:
        pin_process(set(ALLOWED))
        stop.set()
        t.join()
    assert all(a == set(ALLOWED) for a in thread_affinities())


def test_started_daemon_runs_on_its_cpus(tmp_path):
    sock, data = str(tmp_path / "d.sock"), str(tmp_path / "data")
    cpu = ALLOWED[-1]
    run = lambda *a: subprocess.run([sys.executable, "-m", "csdemu", *a, "--socket", sock],
                                    capture_output=True, text=True, timeout=120)
    r = run("start", "--data-dir", data, "--cpus", str(cpu))
    assert r.returncode == 0, r.stderr
    try:
        pid = int(r.stdout.split()[2])          # "csdemu daemon PID listening on ..."
        assert all(a == {cpu} for a in thread_affinities(pid))
        r = run("identify", "--json")
        assert r.returncode == 0 and '"sqes"' in r.stdout
        r = run("status", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["cpus"] == str(cpu)
    finally:
        assert run("stop").returncode == 0
