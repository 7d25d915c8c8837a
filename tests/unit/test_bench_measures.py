"""The measuring helpers the benchmarks report with: the page-order read rate
(csdemu/bench/kernels.py), the attention bench's kernel section at a tiny size, and
the fio bench's CPU-per-I/O arithmetic. Pure code, no daemon."""
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


def test_page_order_rate_reads_fp16_pools():
    rng = np.random.default_rng(4)
    pool = rng.integers(0x3000, 0x4000, (32, 16, 128), dtype=np.uint16)  # normal fp16 bits
    rate = kb.measure_page_order_gbps(pool, np.arange(31, -1, -1), repeat=1)
    assert np.isfinite(rate) and rate > 0


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


def test_overlap_rate_with_the_kernels_arithmetic():
    rng = np.random.default_rng(7)
    pool = rng.integers(0x3000, 0x4000, (32, 16, 128), dtype=np.uint16)
    read, nbytes = kb.overlap_reader(pool, np.arange(31, -1, -1), 2.0)
    assert nbytes == pool.nbytes
    assert np.isfinite(read())


def test_attention_kernel_section_small():
    from csdemu.bench.attention import kernel_section
    res = kernel_section(contexts=(64,), repeat=1)
    row = res["contexts"][0]
    assert row["max_abs_err_vs_numpy"] < 1e-2
    for key in ("kernel_vs_stream", "page_order_vs_stream", "kernel_vs_page_order",
                "kernel_vs_numpy", "ideal_overlap_vs_stream", "kernel_vs_ideal_overlap"):
        assert res[key] > 0, key
    assert res["page_order_bytes_per_s"] == row["page_order_bytes_per_s"]


def test_fio_cpu_per_io():
    from csdemu.bench.fio.bench import cpu_per_io
    got = cpu_per_io({"fio": 1.0, "nbdkit": 2.0}, {"fio": 1.5, "nbdkit": 3.0}, 10_000, 1.5)
    assert got == {"fio_us_per_io": 50.0, "nbdkit_us_per_io": 100.0, "cores_busy": 1.0}
    assert cpu_per_io({"fio": 0.0}, {"fio": 0.0}, 0, 0) == {"cores_busy": None}
