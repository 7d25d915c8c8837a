"""The data dir is the drive: one daemon at a time, never reformatted
without --format, private to its user, and its trims outlive a lost
checkpoint. Real daemons, real files."""
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import csdemu
from tools.torture.common import SMALL_DRIVE, patterns, small_daemon

TIMEOUT = 120


def csdemu_cli(*args, timeout=TIMEOUT):
    return subprocess.run([sys.executable, "-m", "csdemu", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def write_flush(sock, lba: int, n: int, version: int) -> None:
    with csdemu.connect(sock) as dev:
        dev.write(lba, patterns(lba, n, version))
        dev.flush()


def read_all(sock, lba: int, n: int) -> bytes:
    with csdemu.connect(sock) as dev:
        return bytes(dev.read(lba, n))


def refused_start(data, sock, *extra) -> str:
    """`csdemu start` that must fail: -> its one-line error. A daemon it
    started anyway is stopped before the test fails."""
    r = csdemu_cli("start", "--data-dir", data, "--socket", sock, *extra)
    if os.path.exists(sock):
        csdemu_cli("stop", "--socket", sock)
    assert r.returncode != 0, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_a_second_daemon_on_the_same_data_dir_exits_naming_the_first(tmp_path):
    data = tmp_path / "data"
    d = small_daemon(data_dir=str(data)).start()
    other = tmp_path / "other.sock"
    try:
        write_flush(d.socket_path, 0, 100, 1)
        err = refused_start(data, other, *SMALL_DRIVE)
        assert f"pid {d.proc.pid}" in err and str(data) in err
        assert not os.path.exists(other)
        assert read_all(d.socket_path, 0, 100) == patterns(0, 100, 1).tobytes()
        assert d.stop() == 0
        d2 = small_daemon(data_dir=str(data)).start()       # the lock went with the daemon
        try:
            assert read_all(d2.socket_path, 0, 100) == patterns(0, 100, 1).tobytes()
        finally:
            d2.cleanup()
    finally:
        d.cleanup()


@pytest.mark.parametrize("damage", ["delete", "flip"])
def test_a_drive_without_a_valid_device_json_is_refused_until_format(tmp_path, damage):
    data = tmp_path / "data"
    d = small_daemon(data_dir=str(data)).start()
    try:
        write_flush(d.socket_path, 0, 4096, 1)
        assert d.stop() == 0
    finally:
        d.cleanup()
    dev_json = data / "device.json"
    if damage == "delete":
        dev_json.unlink()
    else:
        raw = bytearray(dev_json.read_bytes())
        raw[len(raw) // 2] ^= 0x01                  # still JSON, most likely: one digit
        dev_json.write_bytes(bytes(raw))
    size = os.path.getsize(data / "nand.data")
    sock = tmp_path / "s.sock"
    err = refused_start(data, sock, *SMALL_DRIVE)
    assert "device.json" in err and "--format" in err
    assert not os.path.exists(sock)
    assert os.path.getsize(data / "nand.data") == size
    d = small_daemon(data_dir=str(data), extra=["--format"]).start()
    try:
        assert not np.frombuffer(read_all(d.socket_path, 0, 256), np.uint8).any()
        write_flush(d.socket_path, 0, 64, 2)
        assert d.stop() == 0
    finally:
        d.cleanup()
    d = small_daemon(data_dir=str(data), profile_args=False).start()    # a drive again
    try:
        assert read_all(d.socket_path, 0, 64) == patterns(0, 64, 2).tobytes()
    finally:
        d.cleanup()


def test_every_file_in_the_data_dir_is_private(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "lifetime.json").write_text('{"power_cycles": 1, "unsafe_shutdowns": 0, "power_on_s": 1.0}')
    os.chmod(data / "lifetime.json", 0o644)         # as an older csdemu left it
    sock = str(tmp_path / "s.sock")
    old = os.umask(0o022)
    try:
        r = csdemu_cli("start", "--data-dir", data, "--socket", sock, *SMALL_DRIVE)
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    try:
        write_flush(sock, 0, 64, 1)
        with csdemu.connect(sock) as dev:
            dev.trim(0, 8)
            dev.flush()
    finally:
        assert csdemu_cli("stop", "--socket", sock).returncode == 0
    names = sorted(os.listdir(data))
    for name in ("nand.data", "nand.oob", "nand.blocks", "checkpoint.bin", "trim.journal",
                 "device.json", "lifetime.json", "daemon.log", "daemon.lock"):
        assert name in names
    modes = {n: stat.S_IMODE(os.stat(data / n).st_mode) for n in names}
    assert modes == dict.fromkeys(names, 0o600)


@pytest.mark.parametrize("damage", ["delete", "truncate", "flip"])
def test_trimmed_lbas_stay_trimmed_when_the_checkpoint_is_lost(tmp_path, damage):
    data = tmp_path / "data"
    d = small_daemon(data_dir=str(data)).start()
    try:
        write_flush(d.socket_path, 0, 2048, 1)
        with csdemu.connect(d.socket_path) as dev:
            dev.trim(500, 1000)
            dev.flush()
        assert d.stop() == 0
    finally:
        d.cleanup()
    ck = data / "checkpoint.bin"
    if damage == "delete":
        ck.unlink()
    elif damage == "truncate":
        os.truncate(ck, ck.stat().st_size // 2)
    else:
        with open(ck, "r+b") as f:
            f.seek(4096)
            b = f.read(1)
            f.seek(4096)
            f.write(bytes([b[0] ^ 0xFF]))
    d = small_daemon(data_dir=str(data), profile_args=False).start()
    try:
        got = np.frombuffer(read_all(d.socket_path, 0, 2048), np.uint8).reshape(2048, -1)
        want = patterns(0, 2048, 1).reshape(2048, -1).copy()
        want[500:1500] = 0
        bad = np.flatnonzero((got != want).any(axis=1))
        assert bad.size == 0, f"{bad.size} LBAs wrong, first {bad[:5].tolist()}"
        assert "checkpoint.bin" in d.log_text()
    finally:
        d.cleanup()
