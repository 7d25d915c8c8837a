"""`csdemu bench causal`: what the causal arrival rule changes, in one run.

Each workload is a dependent stream, where the host waits for a completion
before it submits the next command. It runs three ways on fresh daemons of
the same profile: virtual timing with the causal rule (the default), virtual
timing with arrival at the daemon's fetch (`--arrival fetch`: what csdemu
reported before issue 24, and what an emulator without the rule reports),
and realtime timing, where every completion waits for its modeled time and
so no command can arrive early. The modeled figures come from the
completions' device times.

- QD1 4 KiB reads, one after another, on each shipped block profile: of 48
  LBAs spread across channels and dies, and of one LBA 48 times, so that
  each read needs the die the one before it used.
- Back-to-back attends of 4 sequences x 2,048 tokens, 32 q heads over 8 kv
  heads x 128, fp16, as a decode loop issues them (instinfer).
- Decode steps of SmolLM2-135M's attention shape (30 layers, 9 q heads over
  3 kv heads x 64, fp16, batch 8, 2,048 tokens of context): each layer's
  attend carries the step's new token (append fused), nothing between the
  layers, so the emulator runs as far ahead of its drive as it can.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

PROFILES = ("instinfer", "femu-bbssd", "nvmevirt-970pro")
RULES = (("causal", "virtual", "causal"), ("fetch", "virtual", "fetch"),
         ("realtime", "realtime", "causal"))
LBAS = [i * 37 for i in range(48)]
ATTEND = dict(batch=4, context=2048, q_heads=32, kv_heads=8, head_dim=128, calls=12)
DECODE = dict(batch=8, context=2048, layers=30, q_heads=9, kv_heads=3, head_dim=64, steps=4)


def _daemon(profile, timing, arrival):
    from csdemu.host.spawn import DaemonProcess
    return DaemonProcess(profile=profile, extra_args=["--timing", timing, "--arrival", arrival,
                                                      "--engine-threads", "2"])


def _qd1_reads(dev, lbas) -> list[int]:
    from nvme_cmds.nvm import lba_cdws
    from nvme_cmds.opcodes import NvmOpcode
    bs = dev.lba_size()
    for lba in sorted(set(lbas)):
        dev.write(lba, np.full(bs, lba % 251, np.uint8))
    dev.flush()
    time.sleep(0.3)                   # the modeled programs are long over
    out = []
    for lba in lbas:
        c = dev.passthru(NvmOpcode.READ, 1, read_len=bs, **lba_cdws(lba, 1))
        if not c.ok:
            raise RuntimeError(f"read of LBA {lba} failed: {c}")
        out.append(c.device_ns)
    return out


def _attends(dev) -> list[int]:
    a = ATTEND
    rng = np.random.default_rng(0)
    kv = dev.create_kv_namespace(layers=1, q_heads=a["q_heads"], kv_heads=a["kv_heads"],
                                 head_dim=a["head_dim"])
    seqs = list(range(a["batch"]))
    k = rng.standard_normal((a["batch"], a["context"], a["kv_heads"], a["head_dim"]),
                            dtype=np.float32)
    kv.append(0, seqs, k, k)
    time.sleep(0.5)
    q = rng.standard_normal((a["batch"], a["q_heads"], a["head_dim"]), dtype=np.float32)
    out = []
    for _ in range(a["calls"]):
        kv.attend(0, seqs, q)
        out.append(kv.last.device_ns)
    return out


def _decode_steps(dev) -> list[int]:
    d = DECODE
    rng = np.random.default_rng(1)
    b, hkv, hd = d["batch"], d["kv_heads"], d["head_dim"]
    kv = dev.create_kv_namespace(layers=d["layers"], q_heads=d["q_heads"], kv_heads=hkv,
                                 head_dim=hd)
    seqs = list(range(b))
    k = rng.standard_normal((b, d["context"], hkv, hd), dtype=np.float32)
    for layer in range(d["layers"]):
        kv.append(layer, seqs, k, k)
    time.sleep(0.5)
    q = rng.standard_normal((b, d["q_heads"], hd), dtype=np.float32)
    new = rng.standard_normal((b, 1, hkv, hd), dtype=np.float32)
    steps = []
    for _ in range(d["steps"]):
        total = 0
        for layer in range(d["layers"]):
            kv.attend(layer, seqs, q, append=(new, new))
            total += kv.last.device_ns
        steps.append(total)
    return steps


def _under_each_rule(profile, work) -> dict[str, list[int]]:
    import csdemu
    out = {}
    for name, timing, arrival in RULES:
        with _daemon(profile, timing, arrival) as d, csdemu.connect(d.socket_path) as dev:
            out[name] = work(dev)
    return out


def _us(ns) -> float:
    return round(ns / 1e3, 2)


def _ms(ns) -> float:
    return round(ns / 1e6, 3)


def run_causal_bench() -> dict:
    reads = []
    for (profile, spread) in [(p, s) for p in PROFILES for s in (True, False)]:
        lbas = LBAS if spread else [LBAS[0]] * len(LBAS)
        by = _under_each_rule(profile, lambda dev: _qd1_reads(dev, lbas))
        row = {"profile": profile, "lbas": "48 spread" if spread else "1, 48 times"}
        for name, _, _ in RULES:
            row[f"{name}_median_us"] = _us(statistics.median(by[name]))
            row[f"{name}_max_us"] = _us(max(by[name]))
        row["fetch_vs_realtime"] = round(statistics.median(by["fetch"])
                                         / statistics.median(by["realtime"]), 3)
        row["causal_vs_realtime"] = round(statistics.median(by["causal"])
                                          / statistics.median(by["realtime"]), 3)
        reads.append(row)
    att = _under_each_rule("instinfer", _attends)
    dec = _under_each_rule("instinfer", _decode_steps)
    result = {"qd1_reads": reads}
    for name, _, _ in RULES:
        result[f"attend_{name}_first_ms"] = _ms(att[name][0])
        result[f"attend_{name}_last_ms"] = _ms(att[name][-1])
    for name, _, _ in RULES:
        result[f"decode_step_{name}_ms"] = _ms(statistics.median(dec[name]))
    result["decode_step_fetch_vs_realtime"] = round(
        statistics.median(dec["fetch"]) / statistics.median(dec["realtime"]), 3)
    result["decode_step_causal_vs_realtime"] = round(
        statistics.median(dec["causal"]) / statistics.median(dec["realtime"]), 3)
    rules = ("causal = virtual timing with the causal arrival rule (the default); fetch = "
             "virtual timing, arrival at the daemon's fetch (`start --arrival fetch`, csdemu "
             "before issue 24); realtime = every completion held to its modeled time")
    result["how"] = {
        "qd1_reads": (f"QD1 4 KiB reads, one after another, of 48 LBAs spread over the dies (or of one "
                      f"LBA 48 times), written and flushed first; "
                      f"a fresh daemon per rule and profile; device time of each completion. {rules}"),
        "attend_*": (f"{ATTEND['calls']} back-to-back dense attends, {ATTEND['batch']} sequences x "
                     f"{ATTEND['context']} tokens, {ATTEND['q_heads']} q / {ATTEND['kv_heads']} kv "
                     f"heads x {ATTEND['head_dim']}, fp16, instinfer, first and last call's device "
                     f"time. {rules}"),
        "decode_step_*": (f"median over {DECODE['steps']} steps of the summed device time of "
                          f"{DECODE['layers']} layer attends with the new token appended in the "
                          f"same command (SmolLM2-135M's attention shape: {DECODE['q_heads']} q / "
                          f"{DECODE['kv_heads']} kv heads x {DECODE['head_dim']}, batch "
                          f"{DECODE['batch']}, {DECODE['context']} tokens), no host work between "
                          f"layers, instinfer. {rules}"),
    }
    return result
