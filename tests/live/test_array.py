"""Arrays of real daemons: kv heads split across drives, results equal to
one drive's and to a float64 reference, the array's modeled time equal to
the system model's, a member killed mid-step, and `csdemu array`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import csdemu
from csdemu.drive.profile import load_profile
from csdemu.host.array import MemberGone
from csdemu.host.array_spawn import ArrayProcesses
from csdemu.sysmodel import array_attend_ns
from tests import naive
from tests.live.test_kv import TOL, stored

# The instinfer drive (its channels, ways and timing: what the system model
# is checked on) with 32 lines of 16 MiB instead of 256: 512 MiB raw.
SMALL_INSTINFER = ["--set", "geometry.blocks_per_plane=32", "--poll-idle-us", "2000"]
FP32_ROUNDING = 1e-6       # array vs one drive: the same fp32 work, merged in another order


@pytest.fixture(scope="module")
def drives4():
    """Four small instinfer daemons; tests take the first N as an array."""
    with ArrayProcesses(4, profile="instinfer", extra_args=SMALL_INSTINFER) as procs:
        yield procs


def fill(kv, rng, lens, ids, layer=0):
    """Random K/V per sequence (a prefill, then decode-sized appends) ->
    the stored values as float64 [B, H, Smax, D] for the reference."""
    H, D = kv.kv_heads, kv.head_dim
    Kd = np.zeros((len(lens), H, max(lens), D))
    Vd = np.zeros_like(Kd)
    for b, (L, sid) in enumerate(zip(lens, ids)):
        K = rng.standard_normal((1, L, H, D)).astype(np.float32)
        V = rng.standard_normal((1, L, H, D)).astype(np.float32)
        pre = L // 2
        kv.append(layer, [sid], K[:, :pre], V[:, :pre])
        for t in range(pre, L, 5):
            kv.append(layer, [sid], K[:, t:t + 5], V[:, t:t + 5])
        Kd[b, :, :L] = stored(K[0], "float16").transpose(1, 0, 2)
        Vd[b, :, :L] = stored(V[0], "float16").transpose(1, 0, 2)
    return Kd, Vd


@pytest.mark.parametrize("q_heads,kv_heads,drives", [(8, 4, 3), (6, 2, 3), (4, 1, 2)])
def test_array_attend_equals_one_drive_and_the_reference(daemon, drives4, q_heads, kv_heads,
                                                         drives):
    """GQA over 3 drives (kv heads 2/1/1), more drives than kv heads (the
    batch split by sequence id), against float64 and against one drive."""
    lens, ids = [1, 31, 48, 100, 17], [5, 6, 7, 8, 12]
    with csdemu.connect_array(sockets=drives4.sockets[:drives]) as arr, \
            csdemu.connect(daemon.socket_path) as dev:
        akv = arr.create_kv_namespace(layers=2, q_heads=q_heads, kv_heads=kv_heads, head_dim=64)
        one = dev.create_kv_namespace(layers=2, q_heads=q_heads, kv_heads=kv_heads, head_dim=64)
        try:
            Kd, Vd = fill(akv, np.random.default_rng(q_heads), lens, ids, layer=1)
            fill(one, np.random.default_rng(q_heads), lens, ids, layer=1)
            q = np.random.default_rng(1).standard_normal((5, q_heads, 64)).astype(np.float32)
            out = akv.attend(1, ids, q)
            assert np.abs(out - naive.dense(q, Kd, Vd, lens)).max() < TOL["float16"]
            assert np.abs(out - one.attend(1, ids, q)).max() < FP32_ROUNDING
            # every member that holds a sequence of the batch attended
            assert sorted(m.member for m in akv.last.members) == list(range(drives))
            assert akv.last.device_ns == akv.last.slowest_ns + akv.last.host_ns
            assert akv.last.slowest_ns == max(m.device_ns for m in akv.last.members)
            # a batch in another order, and a fused decode-step append
            perm = [3, 0, 4]
            k1 = np.random.default_rng(2).standard_normal((3, 1, kv_heads, 64)).astype(np.float32)
            sub = [ids[i] for i in perm]
            a = akv.attend(1, sub, np.ascontiguousarray(q[perm]), append=(k1, k1))
            b = one.attend(1, sub, np.ascontiguousarray(q[perm]), append=(k1, k1))
            assert np.abs(a - b).max() < FP32_ROUNDING
            k, v = akv.read(1, ids[3], 10, 60)
            assert np.array_equal(k.astype(np.float64), Kd[3, :, 10:70].transpose(1, 0, 2))
            assert np.array_equal(v.astype(np.float64), Vd[3, :, 10:70].transpose(1, 0, 2))
            assert akv.reclaim(ids) == len(ids)
            assert akv.reclaim(ids) == 0
        finally:
            akv.delete()
            one.delete()


@pytest.mark.parametrize("drives", [1, 2, 4])
def test_array_time_equals_the_system_model(drives4, drives):
    """One timing code: a live array's modeled attend time is the system
    model's N-CSD attend time, exactly (a scaled-down OPT-13B-like layer)."""
    lens = [64, 128, 32, 96]            # whole page groups: every group is on flash
    with csdemu.connect_array(sockets=drives4.sockets[:drives]) as arr:
        kv = arr.create_kv_namespace(layers=1, q_heads=8, kv_heads=4, head_dim=128)
        try:
            rng = np.random.default_rng(0)
            for i, L in enumerate(lens):
                k = rng.standard_normal((1, L, 4, 128))
                kv.append(0, [i], k, k)
            time.sleep(0.2)             # let the programs finish: every drive is idle again
            kv.attend(0, list(range(len(lens))), np.ones((len(lens), 8, 128), np.float32))
            live = kv.last.device_ns
        finally:
            kv.delete()
    assert live == array_attend_ns(load_profile("instinfer"), None, 8, 4, 128, lens, 2, 16, drives)


def test_a_model_generates_the_same_tokens_on_one_and_three_drives(daemon, drives4):
    """SmolLM2-135M (3 kv heads): one per drive on 3 drives, through CSDCache."""
    import torch

    from csdemu.hf import CSDCache, load_smollm2, use_drive_attention
    from csdemu.hf.generate import build_inputs
    model, tok = load_smollm2()
    inputs = build_inputs(tok, ["What is the capital of France?", "1, 2, 3,",
                                "Why do flash drives have channels?"], chat=True)

    def generate(dev):
        with CSDCache(dev, model.config, batch_size=3) as cache, torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=16, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True, cache=cache,
                                 pad_token_id=tok.pad_token_id)
            return out, cache.state.device_ns
    use_drive_attention(model)
    threads = torch.get_num_threads()
    # One torch thread: on 2 shared cores, torch's OpenMP workers spinning
    # against the daemons made this test take 30-60 s instead of 3-4 s.
    torch.set_num_threads(1)
    try:
        with csdemu.connect(daemon.socket_path) as dev:
            one, one_ns = generate(dev)
        with csdemu.connect_array(sockets=drives4.sockets[:3]) as arr:
            three, three_ns = generate(arr)
    finally:
        model.set_attn_implementation("sdpa")
        torch.set_num_threads(threads)
    assert torch.equal(one.sequences, three.sequences), tok.batch_decode(three.sequences)
    # the same fp16 KV, attention summed in another order: logits agree to fp32 rounding
    assert (one.logits[-1] - three.logits[-1]).abs().max().item() < 2e-3
    assert three_ns < one_ns             # a third of the heads per drive: faster, modeled


def test_generate_cli_on_two_drives_gives_one_drives_tokens(daemon):
    import torch

    from csdemu.hf import load_smollm2
    from csdemu.hf.generate import generate
    prompt = "Name a planet."
    env = {**os.environ, "OMP_NUM_THREADS": "1"}           # see the test above
    r = subprocess.run([sys.executable, "-m", "csdemu", "generate", "--drives", "2", "--prompt",
                        prompt, "--max-new-tokens", "8", "--json", "--profile", "instinfer"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["drives"] == 2
    model, tok = load_smollm2()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with csdemu.connect(daemon.socket_path) as dev:
            one = generate(dev, model, tok, [prompt], 8)
    finally:
        model.set_attn_implementation("sdpa")
        torch.set_num_threads(threads)
    assert res["texts"] == one["texts"]
    assert res["device_ns_per_step"] < one["device_ns_per_step"]
    bad = subprocess.run([sys.executable, "-m", "csdemu", "generate", "--drives", "2",
                          "--socket", "/nonexistent"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "--socket" in bad.stderr


def test_member_killed_mid_step_names_it_and_the_others_keep_their_data():
    with ArrayProcesses(3, profile="instinfer", extra_args=SMALL_INSTINFER) as procs, \
            csdemu.connect_array(procs.dir) as arr:
        kv = arr.create_kv_namespace(layers=1, q_heads=6, kv_heads=3, head_dim=64)
        rng = np.random.default_rng(3)
        K = rng.standard_normal((2, 40, 3, 64)).astype(np.float32)
        kv.append(0, [1, 2], K, K)
        q = rng.standard_normal((2, 6, 64)).astype(np.float32)
        before = kv.attend(0, [1, 2], q).copy()
        victim = procs.procs[1].proc
        victim.send_signal(signal.SIGSTOP)            # member 1 takes the command, never answers
        result = {}

        def step():
            try:
                kv.attend(0, [1, 2], q)
            except Exception as exc:
                result["exc"] = exc
        t = threading.Thread(target=step)
        t.start()
        # Every member's command was issued before the array waited for any:
        # members 0 and 2 finish theirs while member 1 is stopped.
        deadline = time.monotonic() + 10
        done = {}
        while time.monotonic() < deadline and len(done) < 2:
            for i in (0, 2):
                with csdemu.connect(procs.sockets[i]) as probe:
                    if probe.engine_log()["attends"] >= 2:
                        done[i] = True
            time.sleep(0.05)
        assert sorted(done) == [0, 2]
        victim.kill()
        victim.wait()
        t.join(10)
        assert not t.is_alive()
        exc = result.get("exc")
        assert isinstance(exc, MemberGone) and isinstance(exc, csdemu.DeviceGone)
        assert exc.member == 1 and "array member 1" in str(exc)
        assert procs.sockets[1] in str(exc)
        # the survivors keep their data and still answer
        for p in kv.parts:
            if p.member == 1:
                continue
            hs = p.share.kv_heads()
            k, _ = p.ns.read(0, 2, 0, 40)
            assert np.array_equal(k, K[1][:, hs].astype(np.float16))
            alone = p.ns.attend(0, [1, 2], np.ascontiguousarray(q[:, p.share.q_heads(2)]))
            assert np.abs(alone - before[:, p.share.q_heads(2)]).max() < FP32_ROUNDING
        with pytest.raises(MemberGone, match="array member 1"):
            kv.attend(0, [1, 2], q)


def test_array_cli_start_status_member_stop(tmp_path):
    """Per-member profiles from an array TOML; a single-drive command on one member."""
    cfg = tmp_path / "array.toml"
    cfg.write_text('topology = "instinfer-host"\n'
                   '[[drive]]\nprofile = "instinfer"\nset = ["geometry.blocks_per_plane=32"]\n'
                   '[[drive]]\nprofile = "femu-bbssd"\n'
                   'set = ["geometry.blocks_per_plane=16", "geometry.pages_per_block=64"]\n')
    d = str(tmp_path / "arr")
    cli = [sys.executable, "-m", "csdemu", "array"]

    def run(*args):
        return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=120)
    r = run("start", "--dir", d, "--config", str(cfg))
    try:
        assert r.returncode == 0, r.stderr
        st = json.loads(run("status", "--dir", d, "--json").stdout)
        assert [x["running"] for x in st["drives"]] == [True, True]
        assert [x["profile"] for x in st["drives"]] == ["instinfer", "femu-bbssd"]
        one = run("member", "--dir", d, "1", "status", "--json")
        assert one.returncode == 0, one.stderr
        assert json.loads(one.stdout)["socket"] == st["drives"][1]["socket"]
        again = run("start", "--dir", d, "--drives", "2")
        assert again.returncode != 0 and "already runs" in again.stderr
        with csdemu.connect_array(d) as arr:         # what the manifest describes
            assert len(arr) == 2 and arr.topology.name == "instinfer-host"
    finally:
        stop = run("stop", "--dir", d)
    assert stop.returncode == 0 and "stopped 2 of 2" in stop.stdout
    assert run("status", "--dir", d).returncode == 1
    assert not os.path.exists(st["drives"][0]["socket"])
