"""csdemu's flash backend: NAND array, timing model, FTL and the block namespace.

    ../profile.py          named TOML presets -> frozen dataclasses
    geometry.py            PPA bit fields, dense PPNs, block ids
    timing.py              pure resource model: LUN / channel / PCIe clocks
    trace_ring.py          where the timing kernels record each interval they charge
    nand.py                backing files, whole-page program/read, erase, OOB
    oob.py                 the OOB record; reading records in bounded chunks
    residency.py           budget of OOB pages kept mapped in
    lines.py               lines (superblocks), streams, the page allocator
    gc.py                  victim selection (greedy, cost-benefit), collection
    faults.py              reproducible fault injection
    datapath.py            compiled per-command page work
    ftl.py                 the block FTL (L2P, write/read/deallocate/flush)
    streams.py             user (KV) streams on the same flash; their line budget
    checkpoint.py          L2P checkpoints and the deallocation journal
    recovery.py            rebuild after a restart (checkpoint + OOB scan)
    nvm_namespace.py       FlashNamespace: NVMe NVM commands -> FTL

Imports kernels (the JIT cache), csdemu.drive.profile and nvme_cmds; never
the KV side, the controller or anything outside the drive (import-linter).
"""
from kernels.jitcache import use_source_keyed_cache

use_source_keyed_cache()     # before timing.py, bus.py, datapath.py decorate cached functions

from csdemu.drive.flash.nvm_namespace import FlashNamespace  # noqa: E402

__all__ = ["FlashNamespace"]
