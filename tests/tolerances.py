"""Tolerances of the kernel tests against tests/naive.py."""

# The kernels accumulate in fp32; the naive reference (tests/naive.py) works in
# float64 on the same widened inputs, so the only differences are fp32
# rounding in dot products, exps and sums.  These are absolute + relative
# tolerances for numpy.testing.assert_allclose on outputs whose magnitude is
# that of V (O(1) in the tests).  Do not loosen them to make a test pass.
ATOL = 2e-5
RTOL = 2e-5
#: SparF: approximate-score ranking is exact in float64 on the naive side; the
#: kernel's fp32 scores can reorder near-ties, so the SparF tests draw data
#: without near-ties at the top-k boundary (see tests) and use the same ATOL.
SPARF_ATOL = 2e-5
SPARF_RTOL = 2e-5
