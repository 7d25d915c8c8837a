"""SmolLM2-135M (real weights) decoding with attention on the drive equals
the same model with transformers' own sdpa attention."""
import numpy as np
import pytest
import torch

import csdemu
from csdemu.hf import CSDCache, load_smollm2, use_drive_attention
from csdemu.hf.generate import build_inputs

PROMPTS = ["What is the capital of France?",
           "Write one sentence about flash memory channels and why they matter for bandwidth.",
           "1, 2, 3,"]
NEW_TOKENS = 32
# Logits of every generated step, drive vs sdpa (max abs difference; logits are
# O(10)): about twice the largest measured. fp32 KV differs only by fp32
# summation order; fp16 KV rounds K and V to fp16. Measured over these PROMPTS
# and NEW_TOKENS, 3 runs each on a 2-core x86 (identical every run): fp16 max
# 0.0291 (last step 0.0131), fp32 max 5.15e-5 (last step 2.96e-5).
LOGIT_TOL = {"float32": 1e-4, "float16": 0.06}


@pytest.fixture(scope="module")
def model_tok():
    return load_smollm2()


@pytest.fixture(scope="module")
def reference(model_tok):
    model, tok = model_tok
    model.set_attn_implementation("sdpa")
    inputs = build_inputs(tok, PROMPTS, chat=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False,
                             output_logits=True, return_dict_in_generate=True,
                             pad_token_id=tok.pad_token_id)
    return inputs, out


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_drive_decoding_is_token_identical(daemon, model_tok, reference, dtype):
    model, tok = model_tok
    inputs, ref = reference
    use_drive_attention(model)
    try:
        with csdemu.connect(daemon.socket_path) as dev:
            before = dev.engine_log()
            with CSDCache(dev, model.config, batch_size=len(PROMPTS), dtype=dtype) as cache, \
                    torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False,
                                     output_logits=True, return_dict_in_generate=True,
                                     cache=cache, pad_token_id=tok.pad_token_id)
                attends = cache.state.attends
            after = dev.engine_log()
    finally:
        model.set_attn_implementation("sdpa")
    assert torch.equal(out.sequences, ref.sequences), tok.batch_decode(out.sequences)
    diff = max((a - b).abs().max().item() for a, b in zip(out.logits, ref.logits))
    assert diff < LOGIT_TOL[dtype], diff
    steps = out.sequences.shape[1] - inputs.input_ids.shape[1] - 1
    layers = model.config.num_hidden_layers
    # Every decode step ran each layer's attention on the drive, reading KV there.
    assert attends == steps * layers
    assert after["attends"] - before["attends"] == steps * layers
    assert after["pages_read_flash"] > before["pages_read_flash"]
    assert after["pages_read_dram"] > before["pages_read_dram"]


def test_eval_sparse_rows_report_pages_sensed(daemon, model_tok):
    from csdemu.hf.eval_sparse import evaluate
    model, tok = model_tok
    try:
        with csdemu.connect(daemon.socket_path) as dev:
            res = evaluate(dev, model, tok, contexts=(512,), ratios=(1 / 8,), n_eval=4, batch=1)
    finally:
        model.set_attn_implementation("sdpa")
    dense, sparf = res["rows"]
    assert (dense["mode"], sparf["mode"]) == ("dense", "sparf-1/8")
    assert dense["top1_agreement"] == 1.0 and 0 <= sparf["top1_agreement"] <= 1
    # SmolLM2-135M: 30 layers, 3 kv heads, head dim 64, fp16 -> 32 tokens per
    # 4 KiB page. The 4 decode steps attend over 513..516 tokens: 16 full groups
    # on flash (tokens 0..511) and the tail in device DRAM, so dense senses
    # 30 * 3 * (K, V) * 16 = 2880 pages per step, exactly.
    assert (model.config.num_hidden_layers, model.config.num_key_value_heads,
            model.config.head_dim) == (30, 3, 64)
    assert dense["flash_pages_per_step"] == 2880
    assert dense["flash_pages_vs_dense"] == 1.0
    # SparF 1/8 (r = 8 dims, k = ceil(L/8) = 65, window 16): the channel-indexed
    # K copy holds 2048 tokens per page, so at 516 tokens it is all DRAM tail;
    # flash pages are the K and V of the token groups the selection touches.
    # Fewest: the window's group 15 plus ceil((65 - 20) / 32) = 2 more for the
    # top-k (group 15 holds 20 non-window tokens) -> 3 groups, 6 pages of a
    # (layer, head)'s 32: 90 * 6 = 540. Most: all 16 groups, as dense. Uniform
    # top-k would touch 1 - (7/8)^32 = 99 % of the groups; the real selection
    # clusters (measured 2248 pages, 0.781 of dense, every run alike).
    assert 540 <= sparf["flash_pages_per_step"] < 2880
    assert sparf["flash_pages_vs_dense"] == pytest.approx(sparf["flash_pages_per_step"] / 2880,
                                                          abs=1e-4)


def test_decode_steps_cost_the_same_in_virtual_and_realtime(model_tok):
    """Causal virtual time: the modeled attention time of SmolLM2's decode
    steps is what a realtime drive reports, not inflated by phantom queueing
    (tests/live/test_causal_time.py has the rule's other paths)."""
    from csdemu.host.spawn import DaemonProcess
    model, tok = model_tok
    inputs = build_inputs(tok, PROMPTS[:2], chat=True)

    def decode_ns(dev):
        with CSDCache(dev, model.config, batch_size=2) as cache, torch.no_grad():
            model.generate(**inputs, max_new_tokens=4, do_sample=False, cache=cache,
                           pad_token_id=tok.pad_token_id)
            return cache.state.device_ns, cache.state.attends

    use_drive_attention(model)
    try:
        with DaemonProcess(profile="instinfer", extra_args=["--timing", "virtual"]) as d, \
                csdemu.connect(d.socket_path) as dev:
            decode_ns(dev)                                   # first-use set-up off the record
            virtual, n = decode_ns(dev)
            dev.set_timing_mode(True)
            realtime, m = decode_ns(dev)
    finally:
        model.set_attn_implementation("sdpa")
    assert n == m == 3 * model.config.num_hidden_layers
    assert abs(virtual - realtime) <= 0.01 * realtime, (virtual / n, realtime / m)
