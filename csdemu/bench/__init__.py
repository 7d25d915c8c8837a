"""Every benchmark and its helpers; `make bench` (run.py) runs them all and
rewrites BENCHMARKS.md from bench/results/*.json.

    attention.py   kernels vs streaming bandwidth, numpy and torch; Attend end to end
    kernels.py     the kernels against this machine's roofline (kernels_cli.py runs it)
    overlap.py     the read/arithmetic overlap probe kernels.py measures against
    paged_kv.py    paged K/V layouts built from dense arrays (also used by the tests)
    hugepages.py   arrays on transparent huge pages, as the daemon's pool is
    qpair.py       transport: NOPs/s and round trips
    flash.py       flash backend: emulator vs modeled MB/s, WAF
    generate.py    SmolLM2 decode: drive vs in-process sdpa
    fio.py         fio through nbdkit: csdemu vs a bytearray plugin
    machine.py     the machine a result ran on; report.py formats results

Sits on top: may import anything but the CLI; nothing but the CLI imports it.
"""
