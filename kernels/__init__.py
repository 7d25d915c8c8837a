"""csdemu attention kernels (numpy/numba only; never imports csdemu)."""
from .jitcache import use_source_keyed_cache

# before any submodule decorates a cached function
use_source_keyed_cache()
