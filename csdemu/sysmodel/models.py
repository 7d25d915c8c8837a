"""Model shapes: the built-in ones and a reader for any transformers config.json.

Only what the system model needs: layer count, widths, heads, FFN width,
vocabulary, dtype, and whether the FFN is gated (Llama: three matrices).
Parameter counts are computed from the shape (weights only; biases and norms
are < 0.1 % and ignored), never typed in.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "fp16": 2, "bf16": 2, "fp32": 4,
                "half": 2, "float": 4}


class ModelError(ValueError):
    """A model name or config.json could not be used; one line naming the key."""


@dataclass(frozen=True)
class ModelShape:
    name: str
    layers: int
    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    dtype_bytes: int = 2
    gated_ffn: bool = False          # Llama/Mistral/Qwen SwiGLU: gate, up, down
    tied_embeddings: bool = True     # OPT ties lm_head to the token embedding
    positions: int = 0               # learned position table rows (OPT: 2050)

    # ------------------------------------------------------------ derived sizes
    @property
    def layer_params(self) -> int:
        d = self.head_dim
        attn = self.hidden * d * (2 * self.q_heads + 2 * self.kv_heads)   # q, o + k, v
        ffn = (3 if self.gated_ffn else 2) * self.hidden * self.ffn
        return attn + ffn

    @property
    def embed_params(self) -> int:
        emb = self.vocab * self.hidden + self.positions * self.hidden
        return emb if self.tied_embeddings else emb + self.vocab * self.hidden

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.embed_params

    @property
    def weight_bytes(self) -> int:
        return self.params * self.dtype_bytes

    @property
    def layer_weight_bytes(self) -> int:
        return self.layer_params * self.dtype_bytes

    @property
    def lm_head_bytes(self) -> int:
        return self.vocab * self.hidden * self.dtype_bytes

    @property
    def kv_bytes_per_token_layer(self) -> int:
        """K and V of one token in one layer (all kv heads)."""
        return 2 * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        return self.layers * self.kv_bytes_per_token_layer

    def scaled(self, **kw) -> "ModelShape":
        return replace(self, **kw)


BUILTIN: dict[str, ModelShape] = {
    # facebook/opt-13b config.json: 40 layers, hidden 5120, 40 heads, ffn_dim 20480,
    # vocab 50272, max_position_embeddings 2048 (+2 offset rows), fp16, tied lm_head.
    "opt-13b": ModelShape("opt-13b", 40, 5120, 40, 40, 128, 20480, 50272, 2, False, True, 2050),
    # facebook/opt-30b config.json: 48 layers, hidden 7168, 56 heads, ffn_dim 28672.
    "opt-30b": ModelShape("opt-30b", 48, 7168, 56, 56, 128, 28672, 50272, 2, False, True, 2050),
    # meta-llama/Llama-2-13b-hf config.json: 40 layers, hidden 5120, 40 heads (no GQA),
    # intermediate_size 13824 (SwiGLU), vocab 32000, untied lm_head, RoPE (no table).
    "llama-2-13b": ModelShape("llama-2-13b", 40, 5120, 40, 40, 128, 13824, 32000, 2, True, False, 0),
    # HuggingFaceTB/SmolLM2-135M config.json: 30 layers, hidden 576, 9 heads, 3 kv heads
    # (head dim 64), intermediate_size 1536 (SwiGLU), vocab 49152, tied embeddings; the
    # model csdemu runs live (csdemu generate, eval-sparse).
    "smollm2-135m": ModelShape("smollm2-135m", 30, 576, 9, 3, 64, 1536, 49152, 2, True, True, 0),
}
_ALIASES = {"facebook/opt-13b": "opt-13b", "facebook/opt-30b": "opt-30b",
            "meta-llama/llama-2-13b-hf": "llama-2-13b", "llama2-13b": "llama-2-13b",
            "opt13b": "opt-13b", "opt30b": "opt-30b", "smollm2": "smollm2-135m",
            "huggingfacetb/smollm2-135m": "smollm2-135m",
            "huggingfacetb/smollm2-135m-instruct": "smollm2-135m"}

_GATED_TYPES = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3",
                "olmo", "olmo2", "cohere", "internlm2", "deepseek", "yi", "granite"}


def _need_int(where: str, cfg: dict, *keys, default=None) -> int:
    for k in keys:
        if k in cfg and cfg[k] is not None:
            v = cfg[k]
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ModelError(f"{where}: {k} must be a positive integer, got {v!r}")
            return v
    if default is not None:
        return default
    raise ModelError(f"{where}: missing {' or '.join(keys)}")


def shape_from_config(cfg: dict, name: str = "config.json", where: str | None = None) -> ModelShape:
    """Build a ModelShape from a parsed transformers config.json."""
    where = where or name
    if not isinstance(cfg, dict):
        raise ModelError(f"{where}: top level must be a JSON object")
    if "text_config" in cfg and "num_hidden_layers" not in cfg:
        cfg = cfg["text_config"]
    layers = _need_int(where, cfg, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _need_int(where, cfg, "hidden_size", "n_embd", "d_model")
    q_heads = _need_int(where, cfg, "num_attention_heads", "n_head")
    kv_heads = _need_int(where, cfg, "num_key_value_heads", "num_kv_heads", default=q_heads)
    if q_heads % kv_heads:
        raise ModelError(f"{where}: num_attention_heads ({q_heads}) must be a multiple of "
                         f"num_key_value_heads ({kv_heads})")
    head_dim = _need_int(where, cfg, "head_dim", default=max(1, hidden // q_heads))
    mtype = str(cfg.get("model_type", "")).lower()
    ffn = _need_int(where, cfg, "ffn_dim", "intermediate_size", "n_inner", default=4 * hidden)
    vocab = _need_int(where, cfg, "vocab_size")
    dt = str(cfg.get("torch_dtype") or cfg.get("dtype") or "float16").replace("torch.", "").lower()
    if dt not in _DTYPE_BYTES:
        raise ModelError(f"{where}: torch_dtype must be float16, bfloat16 or float32, got {dt!r}")
    gated = mtype in _GATED_TYPES or cfg.get("hidden_act") in ("silu", "swiglu") and mtype != "opt"
    tied = bool(cfg.get("tie_word_embeddings", mtype == "opt" or not gated))
    positions = (int(cfg.get("max_position_embeddings", 0)) + 2) if mtype == "opt" else 0
    return ModelShape(name, layers, hidden, q_heads, kv_heads, head_dim, ffn, vocab,
                      _DTYPE_BYTES[dt], bool(gated), tied, positions)


def load_model(name_or_path) -> ModelShape:
    """A built-in name (opt-13b, opt-30b, llama-2-13b) or a path to config.json."""
    if isinstance(name_or_path, ModelShape):
        return name_or_path
    key = str(name_or_path).strip()
    low = _ALIASES.get(key.lower(), key.lower())
    if low in BUILTIN:
        return BUILTIN[low]
    p = Path(key)
    if p.is_dir():
        p = p / "config.json"
    if p.suffix == ".json" or p.exists():
        try:
            cfg = json.loads(p.read_text())
        except OSError as e:
            raise ModelError(f"model {key}: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise ModelError(f"model {p.name}: not valid JSON ({e.msg} at line {e.lineno})") from None
        return shape_from_config(cfg, name=cfg.get("_name_or_path") or p.parent.name or p.stem,
                                 where=f"model {p.name}")
    raise ModelError(f"unknown model {key!r} (built in: {', '.join(BUILTIN)}; or a config.json path)")

