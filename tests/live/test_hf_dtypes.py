"""CSDCache with bf16 and fp16 models (issue 22, item 1): the model's own
tensors go to the drive as they are (a bf16 model's K and V into a bf16
namespace bit for bit), and greedy decoding gives the tokens transformers'
sdpa gives in the same dtype."""
import pytest
import torch

import csdemu
from csdemu.hf import CSDCache, load_smollm2, use_drive_attention
from csdemu.hf.generate import build_inputs

PROMPTS = ["What is the capital of France?", "1, 2, 3,"]
NEW_TOKENS = 12


@pytest.mark.parametrize("dtype, storage", [(torch.bfloat16, "bfloat16"), (torch.float16, "float16")])
def test_a_half_precision_model_decodes_as_sdpa_does(daemon, dtype, storage):
    model, tok = load_smollm2(dtype=dtype)
    inputs = build_inputs(tok, PROMPTS, chat=True)
    kw = dict(max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True,
              return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        ref = model.generate(**inputs, **kw)
    use_drive_attention(model)
    with csdemu.connect(daemon.socket_path) as dev, \
            CSDCache(dev, model.config, batch_size=len(PROMPTS), dtype=storage) as cache, \
            torch.no_grad():
        out = model.generate(**inputs, cache=cache, **kw)
        attends = cache.state.attends
    assert attends > 0
    assert next(model.parameters()).dtype == dtype
    assert torch.equal(out.sequences, ref.sequences), tok.batch_decode(out.sequences)
    # The drive computes in fp32 over KV in the model's dtype; sdpa computes
    # in the model's dtype itself.
    diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(out.logits, ref.logits))
    assert diff < LOGIT_TOL[storage], diff


# Logits of every step, drive vs sdpa (max abs difference; logits are O(10),
# where bf16 resolves 0.0625): about twice the largest measured. Measured
# with these PROMPTS and NEW_TOKENS on a 2-core x86: bf16 max 1.154 (first
# decode step 0.5), fp16 max 0.16 (first 0.047); all 12 tokens identical.
LOGIT_TOL = {"bfloat16": 2.4, "float16": 0.32}
