"""One place for every knob the kernels read (STUMPY's ``config.py`` pattern).

Every ``@njit`` in ``kernels/`` takes ``fastmath=config.FASTMATH`` and
``cache=config.CACHE``; ``parallel=config.PARALLEL`` on the prange drivers.
Nothing in ``kernels/`` hardcodes these flags (``tests/unit/test_kernel_blocks.py``
checks that by grepping the sources).

Flags are read when a module is imported (Numba bakes them into the compiled
code), so change them before importing ``kernels.*``, e.g. through the
environment variables below, or call :func:`_reset` and re-import.
"""

import os

# --- compilation flags -------------------------------------------------------

#: LLVM fast-math flags.  We want reassociation (so dot products and sums over
#: head_dim vectorize) and FMA contraction, but NOT ``nnan``/``ninf``: the
#: kernels keep -inf as the running max of an empty partial and fp16 pages may
#: hold inf/nan, and LLVM would be free to miscompile those under ``fast``.
_FASTMATH_SAFE = frozenset({"reassoc", "contract", "nsz", "arcp"})

#: parallel=True on the prange drivers; off gives a serial build (debugging).
_STUMPY_LIKE_DEFAULTS = {
    "FASTMATH": _FASTMATH_SAFE,
    "CACHE": True,
    "PARALLEL": True,
    # None = Numba's default (NUMBA_NUM_THREADS, i.e. the core count).
    "NUM_THREADS": None,
}


def _env_bool(name, default):
    v = os.environ.get(name)
    if v is None:
        return default
    return v.strip().lower() not in ("0", "false", "no", "off", "")


#: Flags of ``simd.exp_nonpos``: contraction only, so LLVM keeps the two-part
#: ``n * ln2`` range reduction (``reassoc`` may merge it into one product).
FASTMATH_EXP = {"contract"}

FASTMATH = set(_STUMPY_LIKE_DEFAULTS["FASTMATH"]) if _env_bool(
    "CSDEMU_KERNELS_FASTMATH", True) else False
CACHE = _env_bool("CSDEMU_KERNELS_CACHE", _STUMPY_LIKE_DEFAULTS["CACHE"])
PARALLEL = _env_bool("CSDEMU_KERNELS_PARALLEL",
                     _STUMPY_LIKE_DEFAULTS["PARALLEL"])
NUM_THREADS = (int(os.environ["CSDEMU_KERNELS_THREADS"])
               if os.environ.get("CSDEMU_KERNELS_THREADS") else
               _STUMPY_LIKE_DEFAULTS["NUM_THREADS"])

#: Software-prefetch the page this many pages ahead of the one being worked
#: on (kernels/ir/prefetch.py).  0 = off; 1 = next page.  Passed to the dense
#: kernels at call time (may be changed after import); SparF reads it at
#: compile time (on/off).
PREFETCH = int(os.environ.get("CSDEMU_KERNELS_PREFETCH", "2"))

#: ``llvm.prefetch`` locality of those prefetches: 2 = ``prefetcht1``, into
#: L2.  3 (``prefetcht0``, into L1) queues on L1's few miss buffers and did
#: not beat no prefetch at all over a shuffled pool on the bench machine.
PREFETCH_LOCALITY = int(os.environ.get("CSDEMU_KERNELS_PREFETCH_LOCALITY", "2"))

def _host_has_f16c():
    try:
        import llvmlite.binding as llb
        return bool(llb.get_host_cpu_features().get("f16c", False))
    except Exception:  # pragma: no cover - exotic llvmlite builds
        return False


#: Widen fp16 with the CPU's conversion instruction (``fpext half`` ->
#: ``vcvtph2ps``, F16C; about 3x faster than the bit operations).  Without
#: F16C LLVM would lower ``fpext half`` to a libcall Numba cannot link, so the
#: default follows the host; ``CSDEMU_KERNELS_F16C=0`` forces the bit path.
F16C = _env_bool("CSDEMU_KERNELS_F16C", _host_has_f16c())

# --- storage dtype codes -----------------------------------------------------
# A page pool is a uint16 array (fp16 or bf16 bits) or a float32 array
# (uint32 bit patterns are viewed as float32 by the wrapper, zero copy).
DTYPE_F32 = 0
DTYPE_F16 = 1
DTYPE_BF16 = 2
DTYPE_NAMES = {DTYPE_F32: "fp32", DTYPE_F16: "fp16", DTYPE_BF16: "bf16"}
DTYPE_ITEMSIZE = {DTYPE_F32: 4, DTYPE_F16: 2, DTYPE_BF16: 2}

def _reset():
    """Restore the defaults above (in this module only; re-import kernels)."""
    global FASTMATH, CACHE, PARALLEL, NUM_THREADS
    FASTMATH = set(_STUMPY_LIKE_DEFAULTS["FASTMATH"])
    CACHE = _STUMPY_LIKE_DEFAULTS["CACHE"]
    PARALLEL = _STUMPY_LIKE_DEFAULTS["PARALLEL"]
    NUM_THREADS = _STUMPY_LIKE_DEFAULTS["NUM_THREADS"]
