"""csdemu attention kernels (numpy/numba only; never imports csdemu)."""
