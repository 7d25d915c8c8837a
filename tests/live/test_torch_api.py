"""The host library takes torch tensors, numpy arrays and buffers in any
float dtype and layout, and answers in the caller's kind (issue 22, item 1),
against a real daemon."""
import numpy as np
import pytest
import torch


B, HQ, HKV, D, CTX = 2, 4, 2, 64, 40


@pytest.fixture(scope="module")
def dev(small_dev):
    return small_dev


@pytest.fixture(scope="module")
def kv(dev):
    ns = dev.create_kv_namespace(layers=1, q_heads=HQ, kv_heads=HKV, head_dim=D,
                                 dtype=torch.float16)           # a torch dtype names it
    k = torch.randn(B, CTX, HKV, D)                             # fp32 tensor into fp16
    ns.append(0, range(B), k, k.flip(1))
    yield ns
    ns.delete()


@pytest.fixture(scope="module")
def ref(kv):
    q = np.random.default_rng(0).standard_normal((B, HQ, D)).astype(np.float32)
    return q, kv.attend(0, range(B), q)


@pytest.mark.parametrize("dt, tol", [(torch.float32, 0), (torch.float64, 1e-6),
                                     (torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_torch_q_any_dtype_gives_torch_out_in_that_dtype(kv, ref, dt, tol):
    q, want = ref
    out = kv.attend(0, range(B), torch.from_numpy(q).to(dt))
    assert isinstance(out, torch.Tensor) and out.dtype == dt and tuple(out.shape) == q.shape
    assert np.abs(out.float().numpy() - want).max() <= tol
    out32 = kv.attend(0, range(B), torch.from_numpy(q).to(dt), out_dtype="float32")
    assert out32.dtype == torch.float32


def test_transformers_layout_strided_and_plain_inputs(kv, ref):
    q, want = ref
    hf = torch.from_numpy(q).unsqueeze(2)                        # [b, h, 1, d]
    out = kv.attend(0, range(B), hf)
    assert tuple(out.shape) == (B, HQ, 1, D) and np.allclose(out[:, :, 0].numpy(), want)
    strided = np.asfortranarray(q.astype(np.float64))
    assert np.allclose(kv.attend(0, range(B), strided), want, atol=1e-6)
    assert np.allclose(kv.attend(0, range(B), q.tolist()), want)
    assert np.allclose(kv.attend(0, range(B), q.astype(np.float16)), want, atol=2e-3)


def test_bf16_kv_is_stored_as_given(dev):
    ns = dev.create_kv_namespace(layers=1, q_heads=HQ, kv_heads=HKV, head_dim=D, dtype="bfloat16")
    try:
        k = torch.randn(1, 16, HKV, D).to(torch.bfloat16)
        ns.append(0, [5], k, k)
        got_k, _ = ns.read(0, 5, 0, 16)
        assert np.array_equal(got_k, k[0].float().numpy())       # bit for bit
    finally:
        ns.delete()


def test_block_writes_take_tensors_and_buffers(dev):
    bs = dev.lba_size()
    t = torch.arange(bs // 4, dtype=torch.int32)
    dev.write(0, t)
    assert np.array_equal(dev.read(0, 1).view(np.int32), t.numpy())
    dev.write(1, bytes(range(256)) * (bs // 256))
    assert dev.read(1, 1)[:4].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("q, err, msg", [
    (torch.ones(B, HQ + 1, D), ValueError, r"attend q: shape \[2, 5, 64\]"),
    (torch.ones(B, HQ, D, dtype=torch.int64), TypeError, "attend q: a int64 tensor"),
    (np.ones((B, HQ, D), np.int8), TypeError, "attend q: dtype int8"),
])
def test_bad_q_names_the_argument_and_what_was_given(kv, q, err, msg):
    with pytest.raises(err, match=msg):
        kv.attend(0, range(B), q)


def test_bad_out_and_kv_shapes_say_what_was_given(kv, dev):
    q = np.zeros((B, HQ, D), np.float32)
    with pytest.raises(ValueError, match=r"attend out: float64 \[2, 4, 64\]"):
        kv.attend(0, range(B), q, out=np.zeros((B, HQ, D)))
    with pytest.raises(ValueError, match=r"kv append: k \[2, 3, 2, 8\]"):
        kv.append(0, range(B), torch.zeros(B, 3, HKV, 8), torch.zeros(B, 3, HKV, 8))
    with pytest.raises(ValueError, match="create kv namespace dtype 'int8'"):
        dev.create_kv_namespace(layers=1, q_heads=HQ, kv_heads=HKV, head_dim=D, dtype="int8")
