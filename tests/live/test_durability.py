"""kill -9 of a real daemon: every flushed block survives, nothing is torn."""
import os
import signal

import numpy as np

import csdemu
from csdemu.host.spawn import DaemonProcess

SMALL = ["--set", "geometry.blocks_per_plane=16", "--set", "geometry.ways=2", "--set", "device.kv_pct=0"]


def pattern(lba: int, version: int, bs: int) -> np.ndarray:
    rng = np.random.default_rng(lba * 1000 + version)
    return rng.integers(0, 256, bs, dtype=np.uint8)


def test_flushed_writes_survive_kill_9_and_restart(tmp_path):
    data_dir = str(tmp_path / "data")
    d = DaemonProcess(data_dir=data_dir, extra_args=SMALL).start()
    rng = np.random.default_rng(3)
    flushed: dict[int, int] = {}         # lba -> version known durable
    pending: dict[int, set] = {}         # lba -> versions written since (may or may not survive)
    try:
        with csdemu.connect(d.socket_path) as dev:
            bs = dev.lba_size()
            nlbas = dev.identify_ns(1)["nsze"]
            lbas = rng.choice(nlbas, 600, replace=False)
            version = 0
            for step in range(12):
                for lba in rng.choice(lbas, 120).tolist():
                    version += 1
                    dev.write(lba, pattern(lba, version, bs))
                    pending.setdefault(lba, set()).add(version)
                if step % 3 == 2:
                    dev.flush()
                    for lba, vs in pending.items():
                        flushed[lba] = max(vs)
                    pending.clear()
            # More writes, no flush, then the daemon dies mid-stream.
            for lba in rng.choice(lbas, 60).tolist():
                version += 1
                dev.write(lba, pattern(lba, version, bs))
                pending.setdefault(lba, set()).add(version)
            os.kill(d.proc.pid, signal.SIGKILL)
            d.proc.wait()
    finally:
        d.cleanup()
    d2 = DaemonProcess(data_dir=data_dir).start()          # the stored profile is used
    try:
        with csdemu.connect(d2.socket_path) as dev:
            for lba in lbas.tolist():
                got = dev.read(lba, 1)
                allowed = {v for v in pending.get(lba, ())}
                if lba in flushed:
                    allowed.add(flushed[lba])
                    ok = any(np.array_equal(got, pattern(lba, v, bs)) for v in allowed)
                else:
                    ok = not got.any() or any(np.array_equal(got, pattern(lba, v, bs)) for v in allowed)
                assert ok, f"LBA {lba}: neither its flushed nor a later version"
            smart = dev.smart()
            assert smart["unsafe_shutdowns"] == 1 and smart["power_cycles"] == 2
        d2.stop()                      # a clean shutdown this time
    finally:
        d2.cleanup()
    d3 = DaemonProcess(data_dir=data_dir).start()
    try:
        with csdemu.connect(d3.socket_path) as dev:
            smart = dev.smart()
            assert smart["unsafe_shutdowns"] == 1 and smart["power_cycles"] == 3
    finally:
        d3.cleanup()
