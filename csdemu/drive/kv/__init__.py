"""The KV namespace: InstInfer's KV cache on flash and the engine that attends
over it next to the channels.

    kv_namespace.py   the vendor I/O commands (append, attend, read, reclaim) -> store/engine
    manager.py        Create / Delete KV namespace (admin C1h / C4h)
    layout.py         shapes, page groups, the device-DRAM group buffer
    store.py          sequences' pages on the FTL's user streams
    engine.py         runs the kernels per channel and merges the partials
    attend_timing.py  the engine's and the channels' modeled time of an Attend

Imports csdemu.drive.flash below it, kernels and nvme_cmds; never the
controller, the daemon or anything outside the drive (import-linter).
"""
