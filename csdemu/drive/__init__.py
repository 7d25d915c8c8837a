"""Everything the daemon runs: the drive.

    daemon.py      control socket, attach, the poll loop
    session.py     one attached client: its queues, arena and IOMMU grants
    controller.py  fetch, decode and dispatch commands, move their data
    completions.py when completions are posted and commands arrive, in modeled time
    admin.py       admin commands (identify, logs, features, queues)
    dma.py         PRP transfers into client memory (process_vm_readv/writev)
    namespace.py   the protocol a namespace serves: process_io(req) -> Result
    assembly.py    build a controller and its namespaces from a profile
    profile.py     named TOML profiles -> frozen dataclasses (profile_rules.py checks them)
    lifetime.py    power cycles and hours across restarts
    cpus.py        Linux cpulists and pinning
    jit_watch.py   reports a Numba compile inside a command
    trace.py       `--trace`: drains the timing model's trace ring into a Perfetto/Chrome JSON file
    trace_summary.py  reads such a file: utilisation per resource, critical path of a command
    flash/         NAND array, timing model, FTL, the NVM (block) namespace
    kv/            the KV namespace: layout on flash, store, attention engine

A new vendor command: its wire layout in nvme_cmds/, its handler in the
namespace that serves it (kv/kv_namespace.py) or in admin.py. A new timing
rule: flash/timing.py (NAND, channels, PCIe) or kv/attend_timing.py (engine).

Imports csdemu.transport, nvme_cmds and kernels; never csdemu.host, the CLI,
benchmarks or any other consumer (import-linter).
"""
