"""What the host library takes as an array, and what it gives back.

Arguments may be numpy arrays, torch CPU tensors, or anything with the
buffer protocol or `__array__` (lists too), in any float dtype (fp16, bf16,
fp32, fp64) and with any strides. They are converted with at most one copy,
and with none where the dtype and layout already fit, so a contiguous
float32 q still goes to the drive by PRP DMA straight from its own memory.
Outputs follow the input: torch in, torch out; numpy in, numpy out.

torch is never imported here: a tensor is recognised by its type's module,
so the library works, and stays light, without torch installed.
"""
from __future__ import annotations

import numpy as np

#: dtype names the library accepts, whatever spells them
DTYPE_NAMES = ("float16", "bfloat16", "float32")


def is_torch(x) -> bool:
    mod = type(x).__module__
    return (mod == "torch" or mod.startswith("torch.")) and hasattr(x, "dtype") and hasattr(x, "device")


def _torch_dtype_name(dt) -> str:
    return str(dt).rsplit(".", 1)[-1]          # torch.bfloat16 -> "bfloat16"


def dtype_name(d, what: str = "dtype") -> str:
    """"float16", np.float16, np.dtype("float16") or torch.float16 -> "float16"
    (likewise bfloat16 and float32); ValueError naming `what` otherwise."""
    if isinstance(d, str):
        name = d
    elif type(d).__module__ == "torch":
        name = _torch_dtype_name(d)
    else:
        try:
            name = np.dtype(d).name
        except TypeError:
            name = repr(d)
    if name not in DTYPE_NAMES:
        raise ValueError(f"{what} {d!r}: use one of {', '.join(DTYPE_NAMES)} "
                         "(a string, a numpy dtype or a torch dtype)")
    return name


def _torch_numpy(t, what: str, keep_bf16_bits: bool):
    """A CPU tensor -> a numpy view of its memory (a copy only for bf16 widened)."""
    if t.device.type != "cpu":
        raise TypeError(f"{what}: a tensor on {t.device}; csdemu takes CPU tensors")
    t = t.detach()
    name = _torch_dtype_name(t.dtype)
    if name == "bfloat16":
        if keep_bf16_bits:
            import torch
            return t.view(torch.int16).numpy().view(np.uint16)
        return t.float().numpy()                 # the one copy: numpy has no bf16
    if not (t.dtype.is_floating_point or name in ("uint16",)):
        raise TypeError(f"{what}: a {name} tensor; expected a floating-point one")
    return t.numpy()


def as_numpy(x, what: str, bf16_bits: bool = False) -> np.ndarray:
    """Any accepted array -> a numpy array over the same memory where it can
    be. With `bf16_bits`, a bf16 tensor comes back as its uint16 bit
    patterns (the storage of a bf16 namespace), else widened to float32."""
    if isinstance(x, np.ndarray):
        return x
    if is_torch(x):
        return _torch_numpy(x, what, bf16_bits)
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what}: cannot use a {type(x).__name__} as an array ({exc})") from None
    if a.dtype == object:
        raise TypeError(f"{what}: a {type(x).__name__} of mixed or non-numeric items")
    return a


def check_float(a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype.kind != "f" and a.dtype != np.uint16:
        raise TypeError(f"{what}: dtype {a.dtype}; expected a floating-point array "
                        "(fp16, bf16, fp32 or fp64)")
    return a


def query(x, what: str, heads: int, head_dim: int) -> tuple[np.ndarray, object]:
    """q as [batch, heads, head_dim] or transformers' [batch, heads, 1, head_dim],
    any float dtype and strides -> (C-contiguous float32 [batch, heads, head_dim],
    `like`: what output_like() needs to answer in the caller's kind)."""
    a = check_float(as_numpy(x, what), what)
    if a.dtype == np.uint16:
        raise TypeError(f"{what}: uint16 bit patterns are for K/V; give q as floats")
    shape = a.shape
    if a.ndim == 4 and shape[2] == 1:
        a = a[:, :, 0, :]
    if a.ndim != 3 or a.shape[1:] != (heads, head_dim):
        raise ValueError(f"{what}: shape {list(shape)}; expected [batch, {heads}, {head_dim}] "
                         f"or [batch, {heads}, 1, {head_dim}]")
    q = np.ascontiguousarray(a, np.float32)      # no copy when it already fits
    like = (x if is_torch(x) else None, shape)
    return q, like


def output_like(out: np.ndarray, like, out_dtype=None):
    """The drive's float32 output in the caller's kind, layout and dtype:
    numpy for numpy (float32 unless `out_dtype`), torch for torch (q's dtype
    unless `out_dtype`), with transformers' [b, h, 1, d] given back as such."""
    src, shape = like
    res = out.reshape(shape) if len(shape) == 4 else out
    if src is None:
        if out_dtype is None:
            return res
        return res.astype(np.dtype(_np_name(dtype_name(out_dtype, "out_dtype"))), copy=False)
    import torch
    t = torch.from_numpy(res)
    want = src.dtype if out_dtype is None else getattr(torch, dtype_name(out_dtype, "out_dtype"))
    return t if want == torch.float32 else t.to(want)


def _np_name(name: str) -> str:
    if name == "bfloat16":
        raise ValueError("out_dtype bfloat16: numpy has no bfloat16; ask for float16 or float32")
    return name


def as_bytes(x, what: str) -> np.ndarray:
    """Any buffer, numpy array or tensor -> its bytes as a flat uint8 array
    (a view where the memory is contiguous, else one copy)."""
    if is_torch(x):
        import torch
        t = x.detach()
        if t.device.type != "cpu":
            raise TypeError(f"{what}: a tensor on {t.device}; csdemu takes CPU tensors")
        return t.contiguous().view(torch.uint8).reshape(-1).numpy()
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(memoryview(x).cast("B"), np.uint8)
    except TypeError:
        pass
    try:
        return np.ascontiguousarray(np.asarray(x)).reshape(-1).view(np.uint8)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what}: a {type(x).__name__} is not a buffer or an array ({exc})") from None
