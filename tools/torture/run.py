"""`make torture`: run the torture suite and write its figures.

    python -m tools.torture.run --size full            # >= 1M fuzzed commands, 100 crash trials, ...
    python -m tools.torture.run --size ci              # the subset tests/live/test_torture.py runs
    python -m tools.torture.run --size full --only fuzz,crash --seed 7
    python -m tools.torture.run --size full --soak-seconds 3600   # add the soak (not in CI)

The full size writes bench/results/torture.json (flat figures, rendered into
BENCHMARKS.md by csdemu.bench.run.render()) and the details to
bench/results/torture/full.json; the CI size writes bench/results/torture/ci.json.
Exit status 1 if any criterion fails (crashes, hangs, undefined statuses,
lost or corrupt data, slow reclaim, isolation holes, wrong data under faults).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

from tools.torture.common import ROOT, machine

RESULTS = os.path.join(ROOT, "bench", "results")
PARTS = ("fuzz", "crash", "client_death", "isolation", "faults", "control", "disk_full",
         "corrupt_files", "soak")
#: parts that judge themselves: run_<part>(size, seed, log) -> {"failures": [str],
#: "summary": {name: figure}, ...details}
SELF_JUDGED = {"control": "tools.torture.control", "disk_full": "tools.torture.disk_full",
               "corrupt_files": "tools.torture.corrupt_files"}
SIZES = {
    "ci": {"fuzz_commands": 20_000, "crash_trials": 3, "crash_cold": 4096, "victims": 3,
           "window_s": 1.5, "fault_ops": 3000, "fault_lbas": 4096, "soak_s": 0,
           "control_rounds": 200},
    "full": {"fuzz_commands": 1_000_000, "crash_trials": 100, "crash_cold": 16384, "victims": 20,
             "window_s": 3.0, "fault_ops": 60_000, "fault_lbas": 16384, "soak_s": 0,
             "control_rounds": 5000, "disk_full_rounds": 8, "corrupt_flips": 8,
             "corrupt_cases_per_file": 0, "corrupt_lbas": 16384},
}


HOW = {
    "fuzz_*": "random and structured SQEs through a real daemon's rings (docs/torture.md, part 1)",
    "crash_*": "kill -9 during writes, flushes and KV appends, restart, check (part 2)",
    "client_death_*": "clients killed mid-command while bystanders run (part 3)",
    "isolation_*": "a second client and a second uid trying every way in (part 4)",
    "faults_*": "injected program, erase and read faults under load (part 5)",
    "control_*": "control-socket fuzz (part 6)",
    "disk_full_*": "backing file system filled under load (part 7)",
    "corrupt_files_*": "every data-dir file damaged before a restart (part 8)",
    "soak_*": "fio and stress for --soak-seconds (part 9)",
    "failures": "criteria that failed in the run that wrote these figures",
}


def run_part(name: str, size: dict, seed: int, log=print) -> dict:
    if name == "fuzz":
        from tools.torture.fuzz import run_fuzz
        return run_fuzz(size["fuzz_commands"], seed, log=log)
    if name == "crash":
        from tools.torture.crash import run_crash
        return run_crash(size["crash_trials"], seed, cold=size["crash_cold"], log=log)
    if name == "client_death":
        from tools.torture.client_death import run_client_death
        return run_client_death(size["victims"], seed, window_s=size["window_s"], log=log)
    if name == "isolation":
        from tools.torture.isolation import run_isolation
        return run_isolation(log=log)
    if name == "faults":
        from tools.torture.faults import run_faults
        return run_faults(size["fault_ops"], seed, lbas=size["fault_lbas"], log=log)
    if name in SELF_JUDGED:
        import importlib
        return getattr(importlib.import_module(SELF_JUDGED[name]), f"run_{name}")(size, seed, log=log)
    if name == "soak":
        from tools.torture.soak import run_soak
        return run_soak(size["soak_s"], log=log)
    raise ValueError(name)


def failures(results: dict) -> list[str]:
    """The criteria of the issue, as messages for every one that fails."""
    bad = [f"{p}: raised {tb.strip().splitlines()[-1]}" for p, tb in results.get("errors", {}).items()]

    def need(cond, msg):
        if not cond:
            bad.append(msg)

    f = results.get("fuzz")
    if f:
        for k in ("crashes", "hangs", "undefined_status", "bogus_completions", "isolation_violations",
                  "ring_abuse_failures"):
            need(f[k] == 0, f"fuzz: {k} = {f[k]}")
        need(f["daemon_alive_at_end"] and f["others_kv_data_intact"], "fuzz: daemon died or another client's data changed")
    c = results.get("crash")
    if c:
        for k in ("lost", "corrupt", "cold_bad", "restart_failures", "writer_errors", "kv_errors"):
            need(c[k] == 0, f"crash: {k} = {c[k]}")
    d = results.get("client_death")
    if d:
        need(d["not_reclaimed_1s"] == 0, f"client death: {d['not_reclaimed_1s']} sessions not reclaimed within 1 s")
        for k in ("bystander_errors", "bystander_mismatches", "sessions_left", "kv_namespaces_left"):
            need(d[k] == 0, f"client death: {k} = {d[k]}")
        need(d["daemon_fds_after"] <= d["daemon_fds_before"], "client death: daemon fds leaked")
    i = results.get("isolation")
    if i:
        need(not i["same_user_failures"], f"isolation: {i['same_user_failures']}")
        need(not i["other_user_opened"], f"isolation: another uid opened {i['other_user_opened']}")
        need("error" not in i["other_user"], f"isolation: second-uid probe failed: {i['other_user'].get('error')}")
    m = results.get("faults")
    if m:
        for k in ("wrong_data", "kv_wrong_data", "final_mismatches", "final_read_errors", "write_errors",
                  "reads_other_status"):
            need(m[k] == 0, f"faults: {k} = {m[k]}")
        need(m["daemon_alive"], "faults: daemon died")
    for part in SELF_JUDGED:
        bad += [f"{part}: {msg}" for msg in results.get(part, {}).get("failures", [])]
    s = results.get("soak")
    if s:
        need(s["errors"] == 0, f"soak: {s['errors']} errors: {s.get('error_examples')}")
    return bad


def summary(results: dict) -> dict:
    """Flat figures for bench/results/torture.json and BENCHMARKS.md."""
    out = {}
    f = results.get("fuzz")
    if f:
        out.update(fuzz_seed=f["seed"], fuzz_commands=f["commands"], fuzz_crashes=f["crashes"],
                   fuzz_hangs=f["hangs"], fuzz_undefined_status=f["undefined_status"],
                   fuzz_bogus_completions=f["bogus_completions"], fuzz_internal_errors=f["internal_errors"],
                   fuzz_isolation_violations=f["isolation_violations"],
                   fuzz_ring_abuse_rounds=f["ring_abuse_rounds"], fuzz_ring_abuse_failures=f["ring_abuse_failures"],
                   fuzz_commands_per_s=f["commands_per_s"], fuzz_daemon_rss_kib_start=f["daemon_rss_kib_start"],
                   fuzz_daemon_rss_kib_end=f["daemon_rss_kib_end"])
    c = results.get("crash")
    if c:
        out.update(crash_seed=c["seed"], crash_trials=c["trials"], crash_flushed_writes_checked=c["flushed_writes_checked"],
                   crash_flushed_blocks_checked=c["flushed_checked"], crash_lost=c["lost"], crash_corrupt=c["corrupt"],
                   crash_unflushed_blocks_checked=c["unflushed_checked"], crash_cold_blocks_checked=c["cold_checked"],
                   crash_cold_bad=c["cold_bad"], crash_writes=c["writes"], crash_flushes=c["flushes"],
                   crash_kv_appends=c["kv_appends"], crash_kv_errors=c.get("kv_errors", 0),
                   crash_kv_capacity_exceeded=c.get("kv_capacity_exceeded", 0),
                   crash_restart_s_max=c["restart_s_max"])
    d = results.get("client_death")
    if d:
        out.update(client_death_victims=d["victims"], client_death_reclaim_ms_max=d["reclaim_ms_max"],
                   client_death_reclaim_ms_mean=d["reclaim_ms_mean"],
                   client_death_bystander_errors=d["bystander_errors"] + d["bystander_mismatches"],
                   client_death_bystander_ops_per_s_before=d["bystander_ops_per_s_before"],
                   client_death_bystander_ops_per_s_during=d["bystander_ops_per_s_during"],
                   client_death_bystander_ops_per_s_after=d["bystander_ops_per_s_after"],
                   client_death_daemon_fds_before_after=f"{d['daemon_fds_before']}/{d['daemon_fds_after']}")
    i = results.get("isolation")
    if i:
        out.update(isolation_same_user_attempts=i["same_user_attempts"],
                   isolation_same_user_refused_right=i["same_user_refused_right"],
                   isolation_other_uid_attempts=i["other_user_attempts"],
                   isolation_other_uid_refused=i["other_user_refused"])
    m = results.get("faults")
    if m:
        out.update(faults_reads=m["reads"] + m["kv_reads"],
                   faults_unrecovered_read_errors=m["reads_unrecovered"] + m["kv_reads_unrecovered"],
                   faults_wrong_data=m["wrong_data"] + m["kv_wrong_data"], faults_writes=m["writes"],
                   faults_write_errors=m["write_errors"], faults_program_failures=m["program_failures"],
                   faults_bad_blocks=m["bad_blocks"], faults_final_mismatches=m["final_mismatches"])
    for part in SELF_JUDGED:
        out.update({f"{part}_{k}": v for k, v in results.get(part, {}).get("summary", {}).items()})
    s = results.get("soak")
    if s:
        out.update(soak_seconds=s["seconds"], soak_rss_kib_start=s["rss_kib_start"],
                   soak_rss_kib_end=s["rss_kib_end"], soak_rss_kib_max=s["rss_kib_max"],
                   soak_errors=s["errors"],
                   soak_fio_runs=s["fio_runs"], soak_stress_runs=s["stress_runs"])
    return out


def run_all(size_name: str, only=None, seed: int | None = None, soak_seconds: float = 0,
            log=print) -> dict:
    size = dict(SIZES[size_name])
    size["soak_s"] = soak_seconds
    seed = seed if seed is not None else random.SystemRandom().getrandbits(32)
    parts = [p for p in PARTS if (not only or p in only) and (p != "soak" or soak_seconds > 0)]
    results = {"size": size_name, "seed": seed}
    for p in parts:
        t0 = time.monotonic()
        log(f"torture: {p} (seed {seed}) ...")
        try:
            results[p] = run_part(p, size, seed, log=log)
        except Exception:               # noqa: BLE001 - keep the other parts' figures
            import traceback
            results.setdefault("errors", {})[p] = traceback.format_exc()[-3000:]
            log(f"torture: {p} raised:\n{results['errors'][p]}")
        log(f"torture: {p} done in {time.monotonic() - t0:.1f} s")
    results["failures"] = failures(results)
    results["summary"] = summary(results)
    results["machine"] = machine()
    return results


def write_results(results: dict, size_name: str) -> list[str]:
    paths = []
    os.makedirs(os.path.join(RESULTS, "torture"), exist_ok=True)
    detail = os.path.join(RESULTS, "torture", f"{size_name}.json")
    merged = {}
    if size_name == "full":          # a run of some parts keeps the other parts' details
        try:
            with open(detail) as f:
                merged = {k: v for k, v in json.load(f).items() if k in PARTS}
        except (OSError, ValueError):
            pass
    merged.update(results)
    with open(detail, "w") as f:
        f.write(json.dumps(merged, indent=2, default=str) + "\n")
    paths.append(detail)
    if size_name == "full":
        path = os.path.join(RESULTS, "torture.json")
        flat = {}
        try:                      # a run of some parts keeps the other parts' figures
            with open(path) as f:
                flat = json.load(f)
        except (OSError, ValueError):
            pass
        flat.pop("machine", None)
        flat.update(results["summary"])
        flat["failures"] = len(results["failures"])
        flat["machine"] = results["machine"]
        flat["how"] = HOW
        with open(path, "w") as f:
            f.write(json.dumps(flat, indent=2) + "\n")
        paths.append(path)
        from csdemu.bench.run import render
        with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as f:
            f.write(render())
        paths.append("BENCHMARKS.md")
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--only", default="", help=f"comma-separated parts of {','.join(PARTS)}")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--soak-seconds", type=float, default=0, help="add the soak (e.g. 3600)")
    a = ap.parse_args(argv)
    only = [p for p in a.only.split(",") if p]
    res = run_all(a.size, only, a.seed, a.soak_seconds, log=lambda m: print(m, flush=True))
    paths = write_results(res, a.size)
    print(json.dumps(res["summary"], indent=2))
    print("written:", ", ".join(paths))
    if res["failures"]:
        print("FAILED:\n  " + "\n  ".join(res["failures"]))
        sys.exit(1)
    print("all criteria met")


if __name__ == "__main__":
    main()
