"""Shared pieces of the torture suite: small drives, patterns, status checks.

Everything here talks to a real daemon process (csdemu.host.spawn.DaemonProcess)
through real shared memory; nothing is mocked.
"""
from __future__ import annotations

import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from csdemu.host.spawn import DaemonProcess
from nvme_cmds.status import Status, decode_status_field

# A drive small enough to start in half a second, fill and GC within seconds:
# femu-bbssd geometry (8 ch x 8 LUNs, no write buffer) with 16 blocks of 64 pages
# per plane = 256 MiB raw, 208 MiB of LBAs.
SMALL_DRIVE = ["--profile", "femu-bbssd", "--set", "geometry.blocks_per_plane=16",
               "--set", "geometry.pages_per_block=64"]
DEFINED_STATUSES = frozenset(int(s) for s in Status)
BS = 4096


def small_daemon(extra=(), data_dir=None, profile_args=True, poll_idle_us=2000) -> DaemonProcess:
    """A throwaway daemon on the small drive (not started yet)."""
    args = (list(SMALL_DRIVE) if profile_args else []) + ["--poll-idle-us", str(poll_idle_us)]
    return DaemonProcess(data_dir=data_dir, extra_args=args + list(extra))


def rss_kib(pid: int) -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def field_status(field: int) -> int:
    return decode_status_field(field)[0]


# ---------------------------------------------------------------- block patterns
_MUL = np.uint64(0x9E3779B97F4A7C15)
_IDX = np.arange(BS // 8, dtype=np.uint64)


def pattern(lba: int, version: int) -> np.ndarray:
    """4 KiB unique to (lba, version): a header word then a hash stream."""
    seed = np.uint64(((lba & 0xFFFFFFFF) << 32) | (version & 0xFFFFFFFF))
    with np.errstate(over="ignore"):
        w = (_IDX + seed) * _MUL
        w ^= w >> np.uint64(29)
    w[0] = seed
    return w.view(np.uint8)


def patterns(lba: int, n: int, version: int) -> np.ndarray:
    return np.concatenate([pattern(lba + i, version) for i in range(n)])


def identify_block(block: np.ndarray, lba: int) -> int | None:
    """-> the version whose pattern `block` holds for `lba`, 0 for all-zero
    (never written), or None when it matches nothing (corrupt)."""
    w = block.view(np.uint64)
    if not w.any():
        return 0
    seed = int(w[0])
    if seed >> 32 != (lba & 0xFFFFFFFF):
        return None
    version = seed & 0xFFFFFFFF
    if version == 0 or not np.array_equal(block, pattern(lba, version)):
        return None
    return version


def machine() -> dict:
    from csdemu.bench.machine import machine as m
    return m()


def part_main(doc: str, run, count: tuple | None = None, seeded: bool = True, argv=None,
              name: str = "", takes_log: bool = False) -> None:
    """The command line every torture part shares: an optional size flag
    (`count` = (flag, type, default)), --seed, --out; prints the JSON."""
    import argparse
    import json
    import random
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if count:
        ap.add_argument(count[0], type=count[1], default=count[2])
    if seeded:
        ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    args = [getattr(a, count[0].lstrip("-").replace("-", "_"))] if count else []
    if seeded:
        seed = a.seed if a.seed is not None else random.SystemRandom().getrandbits(32)
        print(f"{name}: seed {seed}", flush=True)
        args.append(seed)
    kw = {"log": lambda m: print(m, flush=True)} if takes_log else {}
    res = run(*args, **kw)
    res["machine"] = machine()
    text = json.dumps(res, indent=2)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)
