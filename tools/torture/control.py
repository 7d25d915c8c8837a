"""Torture part "control": fuzz the control socket.

Rounds of random abuse from many connections at once: random bytes, valid
and malformed JSON, deep nesting, lines past the size cap, half messages
left hanging, requests pipelined by clients that never read, attaches
abandoned half-way, and connections opened and dropped by the hundred.
Meanwhile one well-behaved client writes and reads back a block per round.
Fails if the daemon dies, any good client's command fails or reads wrong
data, its RSS or fd count grows past a bound, or SIGTERM does not stop it.

    python -m tools.torture.control --rounds 2000 --seed 7
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import time

import numpy as np

import csdemu
from csdemu.drive.control_conn import MAX_LINE
from tools.torture.common import BS, part_main, rss_kib, small_daemon

#: RSS the daemon may gain over the run: a leak of one buffer per round shows
RSS_GROWTH_KIB = 32 << 10
#: connections one round holds open at most
CROWD = 80


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _connect(path: str) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(path)
        return s
    except (BlockingIOError, ConnectionRefusedError):      # backlog full: a refusal too
        s.close()
        return None


def _payload(rng: random.Random) -> bytes:
    kind = rng.randrange(9)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 4096))
    if kind == 1:
        return b"[" * rng.randrange(1, 50_000) + b"\n"
    if kind == 2:
        return b"x" * (MAX_LINE + rng.randrange(1, 1 << 20))            # past the cap, no newline
    if kind == 3:
        return b'{"op": "sta'                                           # half a message, left hanging
    if kind == 4:
        return b'{"op": "status"}\n' * rng.randrange(1, 3000)          # pipelined, never read
    if kind == 5:
        return json.dumps({"op": "attach", "arena_bytes": rng.choice(
            [0, -1, 1 << 20, 4097, 1 << 40, "x", None, [1]])}).encode() + b"\n"
    if kind == 6:
        return json.dumps({"op": rng.choice(["stop!", "", "attach" * 1000, "status"]),
                           "x": {"y": [1, 2]}}).encode() + b"\n"
    if kind == 7:
        return b'{"op": "status"}\r\n\x00\n\n\n'
    return b'{"op": "attach", "arena_bytes": 1048576}\n'                 # attach, then vanish


def _abuse(path: str, rng: random.Random, counts: dict) -> None:
    conns = []
    for _ in range(rng.randrange(1, CROWD)):
        s = _connect(path)
        if s is None:
            counts["backlog_full"] += 1
            continue
        conns.append(s)
        data = _payload(rng)
        try:
            s.send(data)
        except BlockingIOError:
            counts["send_blocked"] += 1
        except (BrokenPipeError, ConnectionResetError):
            counts["dropped_while_sending"] += 1
        counts["messages"] += 1
    time.sleep(rng.choice([0, 0.001, 0.01]))
    for s in conns:
        if rng.random() < 0.3:
            try:
                counts["refusals"] += b'"ok": false' in s.recv(65536)
            except (BlockingIOError, ConnectionResetError):
                pass
        s.close()


def run_control(size: dict, seed: int, log=print) -> dict:
    rounds = size.get("control_rounds", 200)
    rng = random.Random(seed)
    counts = dict(messages=0, backlog_full=0, send_blocked=0, dropped_while_sending=0, refusals=0)
    failures, good_errors = [], 0
    d = small_daemon().start()
    try:
        pid = d.proc.pid
        dev = csdemu.connect(d.socket_path)
        dev.write(0, np.zeros(BS, np.uint8))     # the I/O path loaded (its JIT code is tens of MB)
        dev.read(0, 1)
        rss0, fds0 = rss_kib(pid), _fds(pid)
        t0 = time.monotonic()
        for r in range(rounds):
            _abuse(d.socket_path, rng, counts)
            block = np.full(BS, r % 251, np.uint8)
            try:
                dev.write(r % 1024, block)
                good_errors += not (dev.read(r % 1024, 1) == block).all()
            except Exception as exc:           # noqa: BLE001 - counted, reported below
                good_errors += 1
                log(f"control: good client failed in round {r}: {exc!r}")
            if d.proc.poll() is not None:
                failures.append(f"daemon died in round {r}: {d.log_text()[-300:]!r}")
                break
        seconds = time.monotonic() - t0
        alive = d.proc.poll() is None
        time.sleep(0.5)                          # abandoned connections are reaped by now
        rss1 = rss_kib(pid) if alive else 0
        fds1 = _fds(pid) if alive else 0
        dev.close()
        if alive:
            d.proc.send_signal(signal.SIGTERM)
            try:
                code = d.proc.wait(15)
            except Exception:                    # noqa: BLE001
                code = None
            if code != 0:
                failures.append(f"SIGTERM after the fuzz: exit {code}")
        if good_errors:
            failures.append(f"{good_errors} good-client commands failed or read wrong data")
        if alive and rss1 - rss0 > RSS_GROWTH_KIB:
            failures.append(f"daemon RSS grew {rss1 - rss0} KiB (bound {RSS_GROWTH_KIB})")
        if alive and fds1 > fds0 + 4:
            failures.append(f"daemon fds {fds0} -> {fds1}: connections leaked")
        summary = {"rounds": rounds, "messages": counts["messages"], "good_errors": good_errors,
                   "daemon_alive": alive, "rss_kib_growth": rss1 - rss0 if alive else None,
                   "fds_before_after": f"{fds0}/{fds1}", "messages_per_s": round(counts["messages"] / seconds)}
        return {"failures": failures, "summary": summary, "seed": seed, **counts}
    finally:
        d.cleanup()


def main(argv=None):
    part_main(__doc__, lambda rounds, seed, log=print: run_control({"control_rounds": rounds}, seed, log),
              ("--rounds", int, 2000), argv=argv, name="control", takes_log=True)


if __name__ == "__main__":
    main()
