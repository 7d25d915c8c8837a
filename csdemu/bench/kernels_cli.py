"""Benchmark the attention kernels against this machine's roofline.

    .venv/bin/python -m csdemu.bench.kernels_cli --json        # one JSON object
    .venv/bin/python -m csdemu.bench.kernels_cli               # readable table
    .venv/bin/python -m csdemu.bench.kernels_cli --threads 1   # as the daemon runs them

Measures streaming read bandwidth, random-4KiB-page read bandwidth and peak
fp32 FMA throughput in the same run, then the dense kernel (effective K+V
bandwidth vs min(stream, peak / FLOP-per-byte)) and SparF 1/8 vs dense on the
SmolLM2-135M, OPT-13B and a g=4 GQA decode shape.  The work lives in
``csdemu.bench.kernels.run_kernel_bench`` (importable).
"""

import argparse
import json
import sys

from csdemu.bench.kernels import SHAPES, run_kernel_bench


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--repeat", type=int, default=5, help="timed calls per case (best is kept)")
    ap.add_argument("--no-sparf", action="store_true", help="skip the SparF runs")
    ap.add_argument("--shape", action="append", choices=[s[0] for s in SHAPES],
                    help="only these shapes (repeatable)")
    ap.add_argument("--threads", type=int, default=None,
                    help="Numba threads for the kernels (default: all; the daemon uses 1)")
    args = ap.parse_args(argv)
    import numba
    if args.repeat < 1:
        ap.error(f"argument --repeat: must be at least 1, got {args.repeat}")
    if args.threads is not None:
        if not 1 <= args.threads <= numba.config.NUMBA_NUM_THREADS:
            ap.error(f"argument --threads: must be 1..{numba.config.NUMBA_NUM_THREADS}, "
                     f"got {args.threads}")
        numba.set_num_threads(args.threads)
    shapes = [s for s in SHAPES if not args.shape or s[0] in args.shape]
    res = run_kernel_bench(shapes=shapes, repeat=args.repeat, sparf=() if args.no_sparf else (8, 1))
    if args.json:
        print(json.dumps(res))
        return 0
    m = res["machine"]
    print("threads %d  stream %.1f GB/s  random-page %.1f GB/s  peak %.0f GFLOP/s"
          % (m["threads"], m["stream_read_gbps"], m["page_random_read_gbps"],
             m["peak_fma_gflops"]))
    for s in res["shapes"]:
        print("%-14s g=%d  dense %8.2f ms  %6.2f GB/s  roofline %.1f GB/s (%.2f)  "
              "page-stream frac %.2f" % (s["name"], s["g"], s["dense_ms"], s["effective_gbps"],
                                         s["roofline_gbps"], s["frac_of_roofline"],
                                         s["frac_of_page_stream"]))
        for key in [k for k in s if k.startswith("sparf")]:
            sp = s[key]
            print("%14s %s Dp=%d %6.2f ms  x%.2f vs dense  bytes x%.2f  token pages "
                  "skipped %d/%d" % ("", key, sp["Dp"], sp["ms"], sp["speedup_vs_dense"], sp["bytes_vs_dense"],
                                     sp["token_pages_skipped"],
                                     sp["token_pages_skipped"] + sp["token_pages_read"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
