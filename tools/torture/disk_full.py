"""Torture part "disk_full": the backing file system fills up under load.

The small drive's data dir sits on a tmpfs of `disk_full_mb` (64 MiB: the
issue's reproduction, a quarter of the drive's 256 MiB), part of it taken by
a filler file. Each round, seeded random writes, overwrites, trims and
flushes run until the disk is full and writes are refused; then the round
frees space (deletes the filler, or trims) and writes again. A KV append on
the full disk, SIGTERM at disk full, and a restart on the full disk follow.
Then --preallocate: a disk too small is refused at start, and a
preallocated drive keeps its whole capacity while something else fills the
disk.

Fails if a refusal is not Capacity Exceeded (Write Fault for a Flush), an
acknowledged block reads back wrong, the daemon dies, logs a traceback,
leaves a socket or .tmp file, cannot restart on the full disk, or no write
succeeds once space was freed.

Needs root to mount the tmpfs; elsewhere the part is skipped (summary
``skipped``), unless it runs as root and mounting fails, which fails it.

    python -m tools.torture.disk_full --rounds 3 --seed 7
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile

import numpy as np

import csdemu
from nvme_cmds.status import Status
from tools.torture.common import SMALL_DRIVE, part_main, patterns, small_daemon

CHUNK = 256                 # blocks in the largest write: 1 MiB, the issue's
#: MiB the filler file takes: more than one of the small drive's 16 MiB
#: lines, so deleting it makes room for a line
FILLER_MB = (20, 28)
#: blocks the drive that fits (--preallocate probe) has: 8 ch x 2 LUNs x 8 x 64 pages
FITS = ["--set", "geometry.ways=2", "--set", "geometry.blocks_per_plane=8"]


def _mount(mb: int) -> tuple[str | None, str]:
    d = tempfile.mkdtemp(prefix="csdemu-full-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m,mode=0700", "tmpfs", d],
                       capture_output=True, text=True)
    if r.returncode:
        os.rmdir(d)
        return None, r.stderr.strip() or f"mount exited {r.returncode}"
    return d, ""


def _umount(d: str) -> None:
    subprocess.run(["umount", "-l", d], check=False)
    os.rmdir(d)


class Model:
    """What each LBA must read: its acknowledged version; or either of two
    while a trim of it is not flushed (a restart may bring the data back)."""

    def __init__(self):
        self.ver: dict[int, int] = {}        # lba -> version (0: zeros)
        self.maybe: dict[int, int] = {}      # lba -> version before an unflushed trim

    def allowed(self, lba: int, after_restart: bool) -> set[int]:
        v = {self.ver.get(lba, 0)}
        if after_restart and lba in self.maybe:
            v.add(self.maybe[lba])
        return v


def _fill(dev, rng: random.Random, m: Model, nlbas: int, counts: dict, failures: list,
          version: list) -> None:
    """Random writes (some over earlier ones), trims and flushes until 20
    writes in a row are refused."""
    refused_run = 0
    while refused_run < 20:
        k = rng.random()
        n = rng.randint(1, CHUNK)
        lba = rng.randrange(0, nlbas - n)
        if k < 0.85:
            version[0] += 1
            try:
                dev.write(lba, patterns(lba, n, version[0]))
            except csdemu.NVMeError as e:
                refused_run += 1
                counts["refused"] += 1
                if e.status != Status.CAPACITY_EXCEEDED:
                    failures.append(f"write refused with {e}")
                continue
            refused_run = 0
            counts["writes"] += 1
            counts["blocks_acked"] += n
            for x in range(lba, lba + n):
                m.ver[x] = version[0]
                m.maybe.pop(x, None)
        elif k < 0.93:
            dev.trim(lba, n)
            counts["trims"] += 1
            for x in range(lba, lba + n):
                if m.ver.get(x, 0):
                    m.maybe[x] = m.ver[x]
                m.ver[x] = 0
        else:
            try:
                dev.flush()
                m.maybe.clear()
                counts["flushes"] += 1
            except csdemu.NVMeError as e:
                counts["flush_errors"] += 1
                if e.status != Status.WRITE_FAULT:
                    failures.append(f"flush failed with {e}")


def _verify(dev, m: Model, nlbas: int, after_restart: bool) -> list[int]:
    """-> LBAs that read neither of their allowed versions."""
    bad = []
    for lo in range(0, nlbas, 4096):
        n = min(4096, nlbas - lo)
        got = dev.read(lo, n).reshape(n, -1)
        for i in range(n):
            allowed = m.allowed(lo + i, after_restart)
            if not any(np.array_equal(got[i], patterns(lo + i, 1, v)) if v else not got[i].any()
                       for v in allowed):
                bad.append(lo + i)
    return bad


def _kv_on_full_disk(dev) -> tuple[int, int]:
    """Append to one sequence until refused -> (tokens stored, refusal status)."""
    kv = dev.create_kv_namespace(layers=1, q_heads=2, kv_heads=2, head_dim=64)
    rng = np.random.default_rng(0)
    tokens = 0
    try:
        while tokens < 1 << 22:
            k = rng.standard_normal((1, 1024, 2, 64)).astype(np.float16)
            kv.append(0, [0], k, k)
            tokens += 1024
    except csdemu.NVMeError as e:
        return tokens, e.status
    return tokens, Status.SUCCESS


def _probe_thin(mnt: str, rounds: int, rng: random.Random, failures: list, log) -> dict:
    counts = dict.fromkeys(("writes", "blocks_acked", "refused", "trims", "flushes",
                            "flush_errors", "writes_after_room"), 0)
    data = os.path.join(mnt, "data")
    filler = os.path.join(mnt, "filler")
    m, version = Model(), [0]
    d = small_daemon(data_dir=data).start()
    res = {}
    try:
        with csdemu.connect(d.socket_path) as dev:
            nlbas = dev.identify_ns(1)["nsze"]
            for r in range(rounds):
                try:                                 # someone else takes part of the disk
                    with open(filler, "wb") as f:
                        f.write(b"\x5a" * (rng.randint(*FILLER_MB) << 20))
                except OSError:                      # the drive's lines hold it all
                    os.unlink(filler)
                _fill(dev, rng, m, nlbas, counts, failures, version)
                before = counts["writes"]
                if os.path.exists(filler):           # room again: the filler goes
                    os.unlink(filler)
                else:                                # or the host trims everything
                    dev.trim(0, nlbas)
                    m.ver = dict.fromkeys(range(nlbas), 0)
                    dev.flush()
                    m.maybe.clear()
                for _ in range(8):
                    lba = rng.randrange(0, nlbas - CHUNK)
                    version[0] += 1
                    try:
                        dev.write(lba, patterns(lba, CHUNK, version[0]))
                    except csdemu.NVMeError:
                        continue
                    counts["writes"] += 1
                    for x in range(lba, lba + CHUNK):
                        m.ver[x] = version[0]
                        m.maybe.pop(x, None)
                counts["writes_after_room"] += counts["writes"] - before
                log(f"disk_full: round {r}: {counts}")
            _fill(dev, rng, m, nlbas, counts, failures, version)        # full at the end
            bad = _verify(dev, m, nlbas, False)
            if bad:
                failures.append(f"{len(bad)} acknowledged blocks read wrong, e.g. LBA {bad[:5]}")
            kv_tokens, kv_status = _kv_on_full_disk(dev)
            if kv_status != Status.CAPACITY_EXCEEDED:
                failures.append(f"KV append on the full disk: status {kv_status:#x}, "
                                f"not Capacity Exceeded")
            res["media_errors"] = dev.smart()["media_errors"]
        code = d.stop()
        log_text = d.log_text()
        res.update(sigterm_exit=code, kv_tokens=kv_tokens)
        if code not in (0, 1) or "Traceback" in log_text:
            failures.append(f"SIGTERM at disk full: exit {code}: {log_text[-300:]!r}")
        left = [n for n in os.listdir(data) if n.endswith(".tmp")] + \
            ([d.socket_path] if os.path.exists(d.socket_path) else [])
        if left:
            failures.append(f"left behind after SIGTERM: {left}")
    finally:
        d.cleanup()
    d = small_daemon(data_dir=data, profile_args=False)
    try:
        d.start()
        with csdemu.connect(d.socket_path) as dev:
            bad = _verify(dev, m, nlbas, True)
        if bad:
            failures.append(f"after a restart on the full disk {len(bad)} blocks read wrong, "
                            f"e.g. LBA {bad[:5]}")
        if "Traceback" in d.log_text():
            failures.append("restart on the full disk logged a traceback")
        res["restart_ok"] = not bad
    except RuntimeError as exc:
        failures.append(f"no restart on the full disk: {str(exc)[-300:]}")
        res["restart_ok"] = False
    finally:
        d.cleanup()
    if counts["writes_after_room"] == 0:
        failures.append("no write succeeded after room was made")
    return {**counts, **res}


def _probe_preallocate(mnt: str, failures: list) -> dict:
    sock = os.path.join(tempfile.mkdtemp(prefix="csdemu-"), "s.sock")
    r = subprocess.run([sys.executable, "-m", "csdemu", "start", "--foreground", "--preallocate",
                        "--data-dir", os.path.join(mnt, "big"), "--socket", sock, *SMALL_DRIVE],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    lines = r.stderr.strip().splitlines()
    refused = r.returncode != 0 and len(lines) == 1 and "No space" in lines[0]
    if not refused:
        failures.append(f"--preallocate on a disk too small: exit {r.returncode}, {r.stderr[-300:]!r}")
    return {"preallocate_refused": refused}


def _probe_preallocated(mnt: str, rng: random.Random, failures: list) -> dict:
    d = small_daemon(extra=FITS + ["--preallocate"], data_dir=os.path.join(mnt, "pre")).start()
    bad, refused = [], 0
    try:
        with open(os.path.join(mnt, "filler2"), "wb") as f:       # the rest of the disk goes
            try:
                while True:
                    f.write(b"\xa5" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        m = Model()
        with csdemu.connect(d.socket_path) as dev:
            nlbas = dev.identify_ns(1)["nsze"]
            for v in range(1, 2 * nlbas // CHUNK):               # twice the capacity: GC runs
                n = rng.randint(1, CHUNK)
                lba = rng.randrange(0, nlbas - n)
                try:
                    dev.write(lba, patterns(lba, n, v))
                except csdemu.NVMeError:
                    refused += 1
                    continue
                for x in range(lba, lba + n):
                    m.ver[x] = v
            bad = _verify(dev, m, nlbas, False)
    finally:
        d.cleanup()
    if refused or bad:
        failures.append(f"preallocated drive on a full disk: {refused} writes refused, "
                        f"{len(bad)} blocks wrong")
    return {"preallocated_refused": refused, "preallocated_wrong_blocks": len(bad)}


def run_disk_full(size: dict, seed: int, log=print) -> dict:
    mb, rounds = size.get("disk_full_mb", 64), size.get("disk_full_rounds", 2)
    rng = random.Random(seed)
    failures: list[str] = []
    mnt, why = _mount(mb)
    if mnt is None:
        if os.geteuid() == 0:
            failures.append(f"cannot mount a {mb} MiB tmpfs: {why}")
        return {"failures": failures, "summary": {"skipped": 1}, "why": why, "seed": seed}
    try:
        res = _probe_thin(mnt, rounds, rng, failures, log)
        res.update(_probe_preallocate(mnt, failures))
    finally:
        _umount(mnt)
    mnt, why = _mount(mb)
    try:
        res.update(_probe_preallocated(mnt, rng, failures))
    finally:
        _umount(mnt)
    summary = {"tmpfs_mb": mb, "rounds": rounds, "writes": res["writes"],
               "blocks_acked": res["blocks_acked"], "writes_refused": res["refused"],
               "writes_after_room": res["writes_after_room"], "flush_errors": res["flush_errors"],
               "kv_tokens_before_full": res.get("kv_tokens", 0),
               "sigterm_exit": res.get("sigterm_exit"), "restart_ok": res.get("restart_ok"),
               "preallocate_refused": res["preallocate_refused"],
               "preallocated_refused": res["preallocated_refused"],
               "preallocated_wrong_blocks": res["preallocated_wrong_blocks"]}
    return {"failures": failures, "summary": summary, "seed": seed, **res}


def main(argv=None):
    part_main(__doc__, lambda rounds, seed, log=print: run_disk_full(
        {"disk_full_rounds": rounds}, seed, log), ("--rounds", int, 3), argv=argv,
        name="disk_full", takes_log=True)


if __name__ == "__main__":
    main()
