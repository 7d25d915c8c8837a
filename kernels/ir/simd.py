"""The hand-vectorized inner loops of decode attention, in one namespace.

LLVM's loop vectorizer does well on plain element loops but not on the score
dot products (every (token, head) would end in a horizontal reduction), so
the two loops of decode attention are written as 16-lane vector IR through
Numba intrinsics:

* ``scores.qk_heads`` -- scores of a page for up to 4 q heads at once;
  ``scores_dims.qk_dims`` -- the same from a dims-major K page;
* ``values.pv_heads`` -- ``o += p . V`` of a page for up to 4 q heads, ``o``
  held in registers across the page; ``values.pv_rows`` -- the same over
  selected rows for one head (SparF);
* ``softmax.exp_nonpos`` / ``softmax.row_max`` -- vectorizable exp and max;
  ``softmax.exp_shifted`` -- the softmax numerators of a row with them.

All read a page as float32 or straight from ``uint16`` fp16 (``vcvtph2ps``
with F16C, ``config.F16C``) or bf16 bits (a shift); ``head_dim`` must be a
multiple of 16 (callers fall back to plain loops otherwise).  Every function
has a plain-Python body used under ``NUMBA_DISABLE_JIT``.
"""

from .scores import QK_TOKENS, qk_heads
from .scores_dims import qk_dims
from .softmax import exp_nonpos, exp_shifted, row_max
from .values import pv_heads, pv_rows
from .vecir import PREFETCH_IN_LOOP, W

__all__ = ["W", "PREFETCH_IN_LOOP", "QK_TOKENS", "qk_heads", "qk_dims", "pv_heads", "pv_rows",
           "exp_nonpos", "exp_shifted", "row_max"]
