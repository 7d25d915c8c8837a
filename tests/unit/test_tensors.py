"""The host library's array arguments (csdemu/host/tensors.py): numpy, torch
and plain buffers in any float dtype and layout, at most one copy, outputs in
the caller's kind (issue 22, item 1). Pure code, no daemon."""
import numpy as np
import pytest
import torch

from csdemu.host import tensors as T

H, D = 4, 8


@pytest.mark.parametrize("d", ["float16", np.float16, np.dtype("float16"), torch.float16])
def test_dtype_names_from_any_spelling(d):
    assert T.dtype_name(d) == "float16"


def test_dtype_bf16_and_bad_names():
    assert T.dtype_name(torch.bfloat16) == "bfloat16" and T.dtype_name("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="dtype 'int8'"):
        T.dtype_name("int8")
    with pytest.raises(ValueError, match="kv dtype"):
        T.dtype_name(torch.int32, "kv dtype")


def test_a_contiguous_float32_q_is_not_copied():
    q = np.ones((2, H, D), np.float32)
    got, _ = T.query(q, "q", H, D)
    assert got is q or np.shares_memory(got, q)
    t = torch.ones(2, H, D)
    got, _ = T.query(t, "q", H, D)
    assert np.shares_memory(got, t.numpy())               # PRP DMA straight from the tensor


@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_q_in_any_torch_dtype_and_the_output_follows_it(dt):
    t = torch.randn(3, H, D).to(dt)
    q, like = T.query(t, "q", H, D)
    assert q.dtype == np.float32 and q.flags.c_contiguous
    assert np.allclose(q, t.float().numpy())
    out = T.output_like(q * 2, like)
    assert isinstance(out, torch.Tensor) and out.dtype == dt and out.shape == t.shape
    assert T.output_like(q, like, out_dtype="float32").dtype == torch.float32


def test_transformers_layout_and_strides():
    base = torch.randn(2, 1, H, D)
    t = base.transpose(1, 2)                                # [b, h, 1, d], not contiguous
    q, like = T.query(t, "q", H, D)
    assert q.shape == (2, H, D) and np.allclose(q, base[:, 0].numpy())
    assert T.output_like(q, like).shape == (2, H, 1, D)
    n = np.asfortranarray(np.random.rand(2, H, D))          # numpy float64, Fortran order
    q, like = T.query(n, "q", H, D)
    out = T.output_like(q, like)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and np.allclose(out, n)
    assert T.output_like(q, like, out_dtype=np.float16).dtype == np.float16


def test_lists_and_buffers_are_arrays():
    q, like = T.query([[[1.0] * D] * H], "q", H, D)
    assert q.shape == (1, H, D)
    assert T.as_bytes(b"\x01\x02", "data").tolist() == [1, 2]
    assert T.as_bytes(torch.arange(4, dtype=torch.int16), "data").size == 8
    assert T.as_bytes(bytearray(3), "data").size == 3


@pytest.mark.parametrize("x, err, msg", [
    (np.ones((2, H + 1, D), np.float32), ValueError, r"q: shape \[2, 5, 8\]; expected \[batch, 4, 8\]"),
    (np.ones((2, H, D), np.int32), TypeError, "q: dtype int32; expected a floating-point"),
    (torch.ones(2, H, D, dtype=torch.int64), TypeError, "q: a int64 tensor"),
    (["a", 1], TypeError, "q:"),
])
def test_bad_arguments_name_the_argument_and_what_was_given(x, err, msg):
    with pytest.raises(err, match=msg):
        T.query(x, "q", H, D)


def test_bf16_kv_keeps_its_bits_for_a_bf16_namespace():
    t = torch.randn(2, 3).to(torch.bfloat16)
    bits = T.as_numpy(t, "k", bf16_bits=True)
    assert bits.dtype == np.uint16 and np.shares_memory(bits, t.view(torch.int16).numpy())
    wide = T.as_numpy(t, "k")
    assert wide.dtype == np.float32 and np.array_equal(wide, t.float().numpy())
