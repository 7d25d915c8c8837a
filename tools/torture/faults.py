"""Media faults under load: never wrong data.

A drive formatted with factory bad blocks and erase failures
(`--set faults.bad_block_ppm=...`, `faults.erase_fail_ppm=...`) gets its
first LBAs filled with per-block unique patterns; then run-time fault
injection (Set Features FID C1h: read and program failure rates and a seed)
is switched on and a client runs mixed reads, overwrites and KV appends and
reads (enough traffic for GC). Every read must return either Unrecovered
Read Error or exactly the last data written there; every write must succeed
(failed programs are remapped to other blocks). Finally fault injection is
switched off and everything is read back: it must all be exact.
"""
from __future__ import annotations

import random
import time

import numpy as np

from tools.torture.common import BS, patterns, small_daemon, part_main

import csdemu
from csdemu.transport.errors import NVMeError
from nvme_cmds.status import Status, status_name

FID_FAULTS = 0xC1


def run_faults(ops: int, seed: int, lbas: int = 16384, read_ppm: int = 20000,
               program_ppm: int = 200, bad_block_ppm: int = 20000, erase_ppm: int = 2000,
               log=print) -> dict:
    r = random.Random(seed)
    d = small_daemon(["--set", f"faults.bad_block_ppm={bad_block_ppm}",
                      "--set", f"faults.erase_fail_ppm={erase_ppm}",
                      "--set", f"faults.seed={seed & 0xFFFF}"]).start()
    res = {"ops": 0, "reads": 0, "reads_ok": 0, "reads_unrecovered": 0, "reads_other_status": 0,
           "wrong_data": 0, "writes": 0, "write_errors": 0, "kv_reads": 0, "kv_reads_ok": 0,
           "kv_reads_unrecovered": 0, "kv_wrong_data": 0, "kv_appends": 0, "kv_append_errors": 0,
           "final_blocks_checked": 0, "final_mismatches": 0, "final_read_errors": 0,
           "read_fail_ppm": read_ppm, "program_fail_ppm": program_ppm,
           "bad_block_ppm": bad_block_ppm, "erase_fail_ppm": erase_ppm, "seed": seed}
    statuses: dict[str, int] = {}
    t0 = time.monotonic()
    try:
        with csdemu.connect(d.socket_path) as dev:
            factory_bad = dev.flash_log()["bad_blocks"]
            latest = np.ones(lbas, np.int64)
            for lba in range(0, lbas, 1024):
                dev.write(lba, patterns(lba, min(1024, lbas - lba), 1))
            dev.flush()
            kv = dev.create_kv_namespace(layers=1, q_heads=2, kv_heads=2, head_dim=64)
            kvdata: dict[int, np.ndarray] = {}
            dev.set_feature(FID_FAULTS, read_ppm, cdw12=program_ppm, cdw13=seed & 0xFFFFFFFF)
            version = 2
            for i in range(ops):
                k = r.random()
                res["ops"] += 1
                if k < 0.45:
                    n = r.randint(1, 8)
                    lba = r.randrange(lbas - n + 1)
                    res["reads"] += 1
                    c = dev.passthru(0x02, 1, cdw10=lba, cdw12=n - 1, read_len=n * BS)
                    statuses[c.status_name] = statuses.get(c.status_name, 0) + 1
                    if c.ok:
                        res["reads_ok"] += 1
                        got = np.frombuffer(c.data, np.uint8).reshape(n, BS)
                        for j in range(n):
                            if not np.array_equal(got[j], patterns(lba + j, 1, int(latest[lba + j]))):
                                res["wrong_data"] += 1
                    elif c.status == Status.UNRECOVERED_READ_ERROR:
                        res["reads_unrecovered"] += 1
                    else:
                        res["reads_other_status"] += 1
                elif k < 0.85:
                    n = r.randint(1, 8)
                    lba = r.randrange(lbas - n + 1)
                    try:
                        dev.write(lba, patterns(lba, n, version), fua=r.random() < 0.1)
                        latest[lba:lba + n] = version
                        res["writes"] += 1
                    except NVMeError as exc:
                        res["write_errors"] += 1
                        statuses["write:" + status_name(exc.status)] = statuses.get("write:" + status_name(exc.status), 0) + 1
                        # the blocks may now hold either version: re-write them fault-free later
                        latest[lba:lba + n] = -1
                    version += 1
                    if r.random() < 0.05:
                        dev.flush()
                elif k < 0.93:
                    sid = r.randrange(3)
                    kk = np.random.default_rng(version).standard_normal((1, 16, 2, 64)).astype(np.float16)
                    version += 1
                    try:
                        kv.append(0, [sid], kk, kk)
                        res["kv_appends"] += 1
                        kvdata[sid] = kk[0] if sid not in kvdata else np.concatenate([kvdata[sid], kk[0]])
                        if len(kvdata[sid]) > 512:
                            kv.reclaim([sid])
                            del kvdata[sid]
                    except NVMeError:
                        res["kv_append_errors"] += 1
                elif kvdata:
                    sid = r.choice(list(kvdata))
                    n = len(kvdata[sid])
                    start = r.randrange(n)
                    cnt = r.randint(1, n - start)
                    res["kv_reads"] += 1
                    try:
                        kr, vr = kv.read(0, sid, start, cnt)
                        res["kv_reads_ok"] += 1
                        want = kvdata[sid][start:start + cnt].view(np.uint16)
                        if not (np.array_equal(kr.view(np.uint16), want)
                                and np.array_equal(vr.view(np.uint16), want)):
                            res["kv_wrong_data"] += 1
                    except NVMeError as exc:
                        if exc.status == Status.UNRECOVERED_READ_ERROR:
                            res["kv_reads_unrecovered"] += 1
                        else:
                            statuses["kv read:" + status_name(exc.status)] = 1 + statuses.get("kv read:" + status_name(exc.status), 0)
                if (i + 1) % 20000 == 0:
                    log(f"faults: {i + 1} ops, {res['reads_unrecovered']} URE, "
                        f"{res['wrong_data']} wrong")
            fl = dev.flash_log()
            res.update(read_failures=int(fl["read_failures"]), program_failures=int(fl["program_failures"]),
                       bad_blocks=int(fl["bad_blocks"]), factory_bad_blocks=int(factory_bad),
                       gc_runs=int(fl["gc_runs"]), erases=int(fl["erases"]))
            dev.set_feature(FID_FAULTS, 0, cdw12=0, cdw13=0)
            # Blocks whose write failed: write them once more without faults.
            for lba in np.flatnonzero(latest < 0).tolist():
                dev.write(lba, patterns(lba, 1, version))
                latest[lba] = version
            dev.flush()
            for lba in range(0, lbas, 1024):
                n = min(1024, lbas - lba)
                try:
                    got = dev.read(lba, n).reshape(n, BS)
                except NVMeError:
                    res["final_read_errors"] += 1
                    continue
                for j in range(n):
                    res["final_blocks_checked"] += 1
                    if not np.array_equal(got[j], patterns(lba + j, 1, int(latest[lba + j]))):
                        res["final_mismatches"] += 1
            res["smart_media_errors"] = dev.smart()["media_errors"]
        res["daemon_alive"] = d.proc.poll() is None
    finally:
        d.cleanup()
    res["statuses"] = statuses
    res["seconds"] = round(time.monotonic() - t0, 1)
    return res


def main(argv=None):
    part_main(__doc__, run_faults, ("--ops", int, 60000), seeded=True, argv=argv, name="faults")


if __name__ == "__main__":
    main()
