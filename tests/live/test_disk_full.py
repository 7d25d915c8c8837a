"""A data dir on a small, really full file system (a 64 MiB tmpfs, mounted
here as root; skipped where mounting is not allowed): writes are stored or
refused with Capacity Exceeded, every acknowledged one reads back, nothing
dies of SIGBUS, and --preallocate finds a disk too small at start."""
import os
import subprocess
import sys

import numpy as np
import pytest

import csdemu
from nvme_cmds.status import Status
from tools.torture.common import SMALL_DRIVE, patterns, small_daemon

TMPFS_MB = 64           # the reproduction: SMALL (256 MiB raw) on a 64 MiB tmpfs
CHUNK = 256             # blocks per write: 1 MiB, the 256-page write


@pytest.fixture
def full_fs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m,mode=0700", "tmpfs",
                        str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(sock) -> tuple[int, int]:
    """Write CHUNK-block patterns from LBA 0 until one is refused ->
    (acknowledged blocks, the refusal's status)."""
    with csdemu.connect(sock) as dev:
        lba = 0
        while True:
            try:
                dev.write(lba, patterns(lba, CHUNK, 1))
            except csdemu.NVMeError as e:
                return lba, e.status
            lba += CHUNK


def check_back(sock, acked: int) -> None:
    with csdemu.connect(sock) as dev:
        for lba in range(0, acked, CHUNK):
            got = dev.read(lba, CHUNK)
            assert np.array_equal(got, patterns(lba, CHUNK, 1)), f"LBAs {lba}..{lba + CHUNK - 1}"
        after = dev.read(acked, CHUNK)                  # the refused write: none of it, or old
        assert not after.any()


def test_a_full_disk_refuses_writes_and_loses_no_acknowledged_one(full_fs):
    data = full_fs / "data"
    d = small_daemon(data_dir=str(data)).start()
    try:
        acked, status = fill(d.socket_path)
        assert status == Status.CAPACITY_EXCEEDED
        assert acked >= 8 * CHUNK                       # a few lines did fit
        check_back(d.socket_path, acked)
        with csdemu.connect(d.socket_path) as dev:      # still serving, still refusing
            with pytest.raises(csdemu.NVMeError) as e:
                dev.write(acked, patterns(acked, CHUNK, 1))
            assert e.value.status == Status.CAPACITY_EXCEEDED
            dev.flush()
            assert dev.smart()["media_errors"] == 0
        d.stop()
        assert d.proc.returncode in (0, 1), d.log_text()    # 1: no room for the clean checkpoint
        assert "Traceback" not in d.log_text()
        assert not [n for n in os.listdir(data) if n.endswith(".tmp")]
        assert not os.path.exists(d.socket_path)
    finally:
        d.cleanup()
    d = small_daemon(data_dir=str(data), profile_args=False).start()   # on the full disk
    try:
        check_back(d.socket_path, acked)
        assert "Traceback" not in d.log_text()
    finally:
        d.cleanup()


def test_preallocate_finds_a_disk_too_small_at_start(full_fs, tmp_path):
    sock = str(tmp_path / "s.sock")
    r = subprocess.run([sys.executable, "-m", "csdemu", "start", "--foreground", "--preallocate",
                        "--data-dir", str(full_fs / "data"), "--socket", sock, *SMALL_DRIVE],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0], r.stderr
    assert not os.path.exists(sock)


def test_a_preallocated_drive_keeps_its_capacity_when_the_disk_fills(full_fs):
    fits = ["--set", "geometry.ways=2", "--set", "geometry.blocks_per_plane=8"]   # 32 MiB raw
    d = small_daemon(extra=fits + ["--preallocate"], data_dir=str(full_fs / "data")).start()
    try:
        with open(full_fs / "filler", "wb") as f:       # someone else takes the rest
            try:
                while True:
                    f.write(b"\xAA" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        with csdemu.connect(d.socket_path) as dev:
            nlbas = dev.identify_ns(1)["nsze"]
            for rnd in (1, 2):                          # twice: GC runs on reserved space
                for lba in range(0, nlbas - CHUNK + 1, CHUNK):
                    dev.write(lba, patterns(lba, CHUNK, rnd))
            for lba in range(0, nlbas - CHUNK + 1, CHUNK):
                assert np.array_equal(dev.read(lba, CHUNK), patterns(lba, CHUNK, 2)), lba
    finally:
        d.cleanup()


def test_trims_make_room_again_on_a_full_disk(full_fs):
    """Erased lines keep their backing space: once trims empty some, writes
    go there, though the file system is still full."""
    d = small_daemon(data_dir=str(full_fs / "data")).start()
    try:
        acked, status = fill(d.socket_path)
        assert status == Status.CAPACITY_EXCEEDED
        half = acked // 2 // CHUNK * CHUNK
        with csdemu.connect(d.socket_path) as dev:
            dev.trim(0, half)
            dev.flush()
            written = 0
            try:
                for lba in range(0, half, CHUNK):
                    dev.write(lba, patterns(lba, CHUNK, 2))
                    written += CHUNK
            except csdemu.NVMeError as e:
                assert e.status == Status.CAPACITY_EXCEEDED
            assert written >= half // 2, (written, half)
            for lba in range(0, written, CHUNK):
                assert np.array_equal(dev.read(lba, CHUNK), patterns(lba, CHUNK, 2)), lba
            for lba in range(half, acked, CHUNK):
                assert np.array_equal(dev.read(lba, CHUNK), patterns(lba, CHUNK, 1)), lba
    finally:
        d.cleanup()
