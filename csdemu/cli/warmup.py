"""Fill Numba's on-disk cache with everything a daemon compiles, so no daemon
pays a JIT compile inside a command (run by `make install`):

    csdemu warmup

Numba compiles one specialization per argument *type* (dtype, layout,
read-only flag, None or array), so calling the kernels directly with
test-made arrays misses the variants the daemon passes; a fresh clone's
daemon then spent 25 s compiling SparF inside one Attend. So the warm-up
drives real daemons through every command path instead: block I/O and GC,
and for each KV dtype dense, SparF, fused-append attends, reads and reclaims,
once with the default single engine thread and once parallel.
"""
from __future__ import annotations

import time

import click
import numpy as np

# femu-bbssd geometry cut to 16 blocks of 64 pages per plane: 208 MiB of LBAs,
# small enough to fill past its GC threshold in a few seconds.
SMALL_DRIVE = ["--profile", "femu-bbssd", "--set", "geometry.blocks_per_plane=16",
               "--set", "geometry.pages_per_block=64"]
SEQS, TOKENS = 2, 2048      # 2 x 2 kv heads x 128 groups: above the engine's parallel threshold


def _kv_paths(dev, csdemu) -> None:
    rng = np.random.default_rng(0)
    for dtype, sparse_layout in (("float16", True), ("bfloat16", True), ("float32", True),
                                 ("float16", False)):
        kv = dev.create_kv_namespace(layers=1, q_heads=4, kv_heads=2, head_dim=64, dtype=dtype,
                                     sparse_layout=sparse_layout)
        ids = list(range(SEQS))
        k = rng.standard_normal((SEQS, TOKENS, 2, 64)).astype(np.float32)
        kv.append(0, ids, k, k)
        kv.append(0, ids, k[:, :3], k[:, :3])           # a partly filled group in device DRAM
        q = rng.standard_normal((SEQS, 4, 64)).astype(np.float32)
        modes = [None] + ([csdemu.SparF(r=8, k=32, window=4)] if sparse_layout else [])
        for sparse in modes:
            kv.attend(0, ids, q, sparse=sparse)
            kv.attend(0, ids, q, sparse=sparse, append=(k[:, :1], k[:, :1]))
            kv.attend(0, ids[:1], q[:1], sparse=sparse)              # a batch of one
        kv.read(0, 0, 0, 20)
        kv.reclaim(ids)
        kv.delete()


def _block_paths(dev) -> None:
    nlbas = dev.identify_ns(1)["nsze"]
    chunk = np.full(256 * 4096, 0xA5, np.uint8)
    for i in range(0, int(nlbas * 1.5) // 256):             # past the GC threshold
        dev.write((i * 256) % (nlbas - 256), chunk, fua=(i % 50 == 0))
    dev.read(0, 300)
    dev.write_zeroes(0, 512)
    dev.trim(1024, 512)
    dev.read(1000, 600)              # partly trimmed: the general read path, not read_into
    dev.flush()


def warm_daemons(log=print) -> None:
    import numba

    import csdemu
    from csdemu.host.spawn import DaemonProcess
    threads = max(2, numba.config.NUMBA_NUM_THREADS)
    for n in (1, threads):
        with DaemonProcess(extra_args=SMALL_DRIVE + ["--engine-threads", str(n)]) as d, \
                csdemu.connect(d.socket_path) as dev:
            _kv_paths(dev, csdemu)
            if n == 1:
                _block_paths(dev)
            log_text = d.log_text()
        if "Traceback" in log_text:
            raise RuntimeError(f"warm-up daemon failed:\n{log_text[-3000:]}")


def warm(log=print) -> None:
    t0 = time.perf_counter()
    warm_daemons(log)
    log(f"daemon paths compiled and cached in {time.perf_counter() - t0:.1f} s")


@click.command()
def warmup():
    """Compile every daemon path into Numba's on-disk cache (make install runs it)."""
    warm(click.echo)
