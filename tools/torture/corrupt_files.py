"""Torture part "corrupt_files": every file of a data dir, damaged before a restart.

Two data dirs of the small drive are built and kept as bases: "clean"
(patterns over `corrupt_lbas` LBAs, overwrites, a trimmed range, Flush,
SIGTERM) and "crashed" (the clean one, started again: more overwrites and a
trim, Flush, then kill -9, so the journal holds a trim the checkpoint lacks).
Every file each base holds is then damaged on a copy -- deleted, truncated
to half, or one byte flipped (in nand.data and nand.oob, a byte of a
programmed page or record) -- and a daemon is started on the copy.

Each start is judged: *refused* (it exits non-zero with a one-line error
and no traceback), or *served*: every written LBA then reads exactly its
data or fails with Unrecovered Read Error, the drive takes a new write, and
SIGTERM stops it. Anything else fails the part: data that is neither (a
silent wrong answer), a traceback, a start that hangs, a daemon that dies.

`corrupt_flips` flips per file and base (default 2); `corrupt_cases_per_file`
(default 1, the CI size) picks that many of a file's cases at random
(seeded); 0 runs them all (the command line below does).

    python -m tools.torture.corrupt_files --flips 4 --seed 7
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile

import numpy as np

import csdemu
from csdemu.drive.flash.oob import OOB_DTYPE, OOB_PRESENT
from nvme_cmds.status import Status
from tools.torture.common import SMALL_DRIVE, part_main, patterns, small_daemon

START_TIMEOUT_S = 60        # a start that takes longer hangs (a clean one takes ~2 s)
READ_CHUNK = 256            # blocks per read while judging


def _copy(src: str, dst: str) -> None:
    """A copy of a data dir that stays sparse (the drive is 256 MiB of holes)."""
    subprocess.run(["cp", "-a", "--sparse=always", src, dst], check=True)


def _build(root: str, nlbas: int, rng: random.Random) -> dict:
    """-> {base name: (data dir, expected version per LBA, 0 = zeros)}."""
    expect = np.ones(nlbas, np.int64)
    clean = os.path.join(root, "clean")
    sock = os.path.join(root, "base.sock")
    # `csdemu start` (not --foreground), so daemon.log is in the data dir as a user's is
    cli = [sys.executable, "-m", "csdemu"]
    subprocess.run(cli + ["start", "--data-dir", clean, "--socket", sock, *SMALL_DRIVE],
                   check=True, capture_output=True, timeout=START_TIMEOUT_S)
    try:
        with csdemu.connect(sock) as dev:
            dev.write(0, patterns(0, nlbas, 1))
            for _ in range(16):
                lba = rng.randrange(0, nlbas - 64)
                dev.write(lba, patterns(lba, 64, 2))
                expect[lba:lba + 64] = 2
            lo = rng.randrange(0, nlbas // 2)
            dev.trim(lo, nlbas // 8)
            expect[lo:lo + nlbas // 8] = 0
            dev.flush()
    finally:
        subprocess.run(cli + ["stop", "--socket", sock], check=True, capture_output=True,
                       timeout=START_TIMEOUT_S)
    crashed = os.path.join(root, "crashed")
    _copy(clean, crashed)
    exp2 = expect.copy()
    d = small_daemon(data_dir=crashed, profile_args=False).start()
    try:
        with csdemu.connect(d.socket_path) as dev:
            for _ in range(8):
                lba = rng.randrange(0, nlbas - 64)
                dev.write(lba, patterns(lba, 64, 3))
                exp2[lba:lba + 64] = 3
            lo = rng.randrange(nlbas // 2, nlbas - nlbas // 16)
            dev.trim(lo, nlbas // 16)
            exp2[lo:lo + nlbas // 16] = 0
            dev.flush()                          # all of it durable, none of it checkpointed
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
    finally:
        d.cleanup()
    return {"clean": (clean, expect), "crashed": (crashed, exp2)}


def _flip_offset(path: str, rng: random.Random) -> int:
    """A byte that matters: in a programmed page or record of the NAND files."""
    name = os.path.basename(path)
    if name in ("nand.data", "nand.oob"):
        oob = np.fromfile(os.path.join(os.path.dirname(path), "nand.oob"), OOB_DTYPE)
        ppn = int(rng.choice(np.flatnonzero(oob["flags"] & OOB_PRESENT).tolist()))
        if name == "nand.oob":
            return ppn * OOB_DTYPE.itemsize + rng.randrange(OOB_DTYPE.itemsize)
        pb = os.path.getsize(path) // oob.size
        return ppn * pb + rng.randrange(pb)
    return rng.randrange(max(1, os.path.getsize(path)))


def _damage(path: str, how: str, rng: random.Random) -> str:
    if how == "delete":
        os.unlink(path)
        return how
    if how == "truncate":
        os.truncate(path, os.path.getsize(path) // 2)
        return how
    if os.path.getsize(path) == 0:
        return "flip (empty file)"
    off = _flip_offset(path, rng)
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0xFF]))
    return f"flip byte {off}"


def _judge(data: str, expect: np.ndarray) -> tuple[str, str, int]:
    """Start a daemon on `data` -> (outcome, detail, LBAs that failed to read)."""
    d = small_daemon(data_dir=data, profile_args=False)
    try:
        try:
            d.start(timeout=START_TIMEOUT_S)
        except RuntimeError:
            log = d.log_text()
            if d.proc.poll() is None:
                return "hang", log[-300:], 0
            lines = log.strip().splitlines()
            if "Traceback" in log or not lines or "error" not in lines[-1]:
                return "traceback", log[-600:], 0
            return "refused", lines[-1], 0
        ure, wrong = 0, []
        with csdemu.connect(d.socket_path) as dev:
            for lo in range(0, expect.size, READ_CHUNK):
                n = min(READ_CHUNK, expect.size - lo)
                try:
                    got = dev.read(lo, n).reshape(n, -1)
                    rows = [(lo + i, got[i]) for i in range(n)]
                except csdemu.NVMeError:
                    rows = []
                    for x in range(lo, lo + n):
                        try:
                            rows.append((x, dev.read(x, 1)))
                        except csdemu.NVMeError as e:
                            if e.status != Status.UNRECOVERED_READ_ERROR:
                                wrong.append((x, f"status {e.status:#x}"))
                            ure += 1
                for x, blk in rows:
                    v = int(expect[x])
                    if not (np.array_equal(blk, patterns(x, 1, v)) if v else not blk.any()):
                        wrong.append((x, "data"))
            probe = expect.size + 1
            dev.write(probe, patterns(probe, 1, 9))
            if not np.array_equal(dev.read(probe, 1), patterns(probe, 1, 9)):
                wrong.append((probe, "a new write"))
        code = d.stop()
        log = d.log_text()
        if wrong:
            return "wrong_data", f"{len(wrong)} LBAs, e.g. {wrong[:4]}", ure
        if "Traceback" in log or code not in (0, 1):
            return "traceback", f"exit {code}: {log[-600:]}", ure
        return ("served_ure" if ure else "served_intact"), "", ure
    except Exception as exc:                     # noqa: BLE001 - the daemon died under us
        return "died", f"{exc!r}: {d.log_text()[-300:]}", 0
    finally:
        d.cleanup()


def run_corrupt_files(size: dict, seed: int, log=print) -> dict:
    nlbas = size.get("corrupt_lbas", 4096)
    flips = size.get("corrupt_flips", 2)
    per_file = size.get("corrupt_cases_per_file", 1)
    rng = random.Random(seed)
    root = tempfile.mkdtemp(prefix="csdemu-corrupt-")
    failures, cases = [], []
    counts: dict[str, int] = {}
    try:
        bases = _build(root, nlbas, rng)
        for base, (src, expect) in bases.items():
            names = sorted(n for n in os.listdir(src) if os.path.isfile(os.path.join(src, n)))
            for name in names:
                kinds = ["delete", "truncate"] + ["flip"] * flips
                if per_file:
                    kinds = rng.sample(kinds, min(per_file, len(kinds)))
                for how in kinds:
                    work = os.path.join(root, "work")
                    shutil.rmtree(work, ignore_errors=True)
                    _copy(src, work)
                    what = _damage(os.path.join(work, name), how, rng)
                    outcome, detail, ure = _judge(work, expect)
                    counts[outcome] = counts.get(outcome, 0) + 1
                    cases.append({"base": base, "file": name, "damage": what,
                                  "outcome": outcome, "ure_lbas": ure, "detail": detail[:300]})
                    log(f"corrupt_files: {base} {name} {what}: {outcome} {detail[:120]}")
                    if outcome not in ("refused", "served_intact", "served_ure"):
                        failures.append(f"{base} {name} {what}: {outcome}: {detail[:200]}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    files = sorted({c["file"] for c in cases})
    summary = {"cases": len(cases), "files": len(files),
               **{k: counts.get(k, 0) for k in ("refused", "served_intact", "served_ure",
                                                "wrong_data", "traceback", "hang", "died")}}
    return {"failures": failures, "summary": summary, "seed": seed, "files_covered": files,
            "cases": cases}


def main(argv=None):
    part_main(__doc__, lambda flips, seed, log=print: run_corrupt_files(
        {"corrupt_flips": flips, "corrupt_cases_per_file": 0}, seed, log), ("--flips", int, 2),
        argv=argv,
        name="corrupt_files", takes_log=True)


if __name__ == "__main__":
    main()
