"""The measuring helpers the benchmarks report with, on workloads whose bytes,
sums and rates are known by hand: the page-order and overlap readers
(csdemu/bench/kernels.py), a rate from a clock that moves by known steps, the
attention bench's kernel section at a tiny size, and the fio bench's
CPU-per-I/O arithmetic. Pure code, no daemon."""
import os
import sys

import numba
import numpy as np
import pytest

from csdemu.bench import kernels as kb

from tests import ROOT


def test_pages_sum_same_with_and_without_prefetch():
    rng = np.random.default_rng(3)
    pages = rng.random((64, 1024)).astype(np.float32)
    order = rng.permutation(64)[:40]
    want = float(pages[order].astype(np.float64).sum())
    for prefetch in (False, True):
        got = kb._pages_sum(pages, order, 4, prefetch)
        assert got == pytest.approx(want, rel=1e-5)


def _fp16_pool(seed):
    """32 pages of 16 tokens x 128 fp16 (normal fp16 bits): 4 KiB a page."""
    rng = np.random.default_rng(seed)
    return rng.integers(0x3000, 0x4000, (32, 16, 128), dtype=np.uint16)


def _pages_f64_sum(pool, order):
    """The ordered pages read as the walks read them (float32 lanes), summed in float64."""
    return float(pool.reshape(32, -1).view(np.float32)[order].astype(np.float64).sum())


def test_page_order_reader_reads_exactly_the_ordered_pages():
    pool = _fp16_pool(4)
    order = np.arange(31, 11, -1)                  # 20 of the 32 pages, backwards
    read, nbytes = kb.page_order_reader(pool, order)
    assert nbytes == 20 * 4096                     # the pages named, not the pool
    assert read() == pytest.approx(_pages_f64_sum(pool, order), rel=1e-5)


class _FakeClock:
    """time.perf_counter for kb._best: moves only when a timed call says so."""

    def __init__(self):
        self.t = 0.0

    def perf_counter(self):
        return self.t


def test_rate_is_bytes_over_the_best_time(monkeypatch):
    clock = _FakeClock()
    monkeypatch.setattr(kb, "time", clock)
    took = iter([2 ** -9, 2 ** -10, 3 * 2 ** -10])  # seconds, exact in binary

    def read():
        clock.t += next(took)
    # 81 920 B in the best of 3 calls, 2^-10 s: 81 920 * 1024 = 83 886 080 B/s
    assert kb._gbps((read, 20 * 4096), 3) == 0.08388608


def test_overlap_walk_sums_the_pages_whatever_its_arithmetic():
    rng = np.random.default_rng(5)
    pages = rng.random((48, 1024)).astype(np.float32)
    order = rng.permutation(48)[:30]
    want = float(pages[order].astype(np.float64).sum())
    for groups in (0, 1, 3):
        assert kb._overlap_sum(pages, order, 4, groups) == pytest.approx(want, rel=1e-5)


def test_overlap_probe_python_body_matches_the_compiled_one():
    from csdemu.bench.overlap import ACC_LEN, line_sum_fma
    rng = np.random.default_rng(6)
    page = rng.random(1024).astype(np.float32)
    acc_py = rng.random(ACC_LEN).astype(np.float32)
    acc_jit = acc_py.copy()
    line_sum_fma(page, page, 2, acc_py)
    numba.njit(lambda p, g, a: line_sum_fma(p, p, g, a))(page, 2, acc_jit)
    np.testing.assert_allclose(acc_jit, acc_py, rtol=1e-5)


def test_overlap_reader_reads_exactly_the_ordered_pages():
    pool = _fp16_pool(7)
    order = np.array([5, 30, 2, 17, 9, 0, 23, 11])
    read, nbytes = kb.overlap_reader(pool, order, 2.0)
    assert nbytes == 8 * 4096
    assert read() == pytest.approx(_pages_f64_sum(pool, order), rel=1e-5)


def test_attention_kernel_section_small():
    from csdemu.bench.attention import kernel_section
    res = kernel_section(contexts=(64,), repeat=1)
    row = res["contexts"][0]
    # measured 1.9e-6 (fp16 K/V widened to fp32 on both sides; fixed seeds)
    assert row["max_abs_err_vs_numpy"] < 5e-6
    # batch 8 x 8 kv heads x 64 tokens x 128 dims x (K, V) x 2 B
    assert row["kv_bytes"] == 8 * 8 * 64 * 128 * 2 * 2 == 2_097_152
    assert res["kernel_bytes_per_s"] * row["kernel_s"] == pytest.approx(2_097_152, rel=1e-9)
    # each fp16 K element (2 B) feeds one score of each of the g = 32 / 8 = 4 q
    # heads of its kv head, each V element one output of each: 4 MACs / 2 B
    assert res["fma_per_kv_byte"] == 2.0
    assert res["kernel_threads"] == numba.get_num_threads()


def test_fio_cpu_per_io():
    from csdemu.bench.fio.bench import cpu_per_io
    got = cpu_per_io({"fio": 1.0, "nbdkit": 2.0}, {"fio": 1.5, "nbdkit": 3.0}, 10_000, 1.5)
    assert got == {"fio_us_per_io": 50.0, "nbdkit_us_per_io": 100.0, "cores_busy": 1.0}
    assert cpu_per_io({"fio": 0.0}, {"fio": 0.0}, 0, 0) == {"cores_busy": None}
