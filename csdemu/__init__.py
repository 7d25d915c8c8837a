"""csdemu: an NVMe computational storage drive emulator for in-storage LLM attention.

    import csdemu
    with csdemu.connect() as dev: ...
    with csdemu.connect_array() as arr: ...     # N drives, kv heads split across them

The names below come from the host library (csdemu.host) on first use, so
`import csdemu` stays cheap and the daemon, which imports csdemu.drive only,
never loads the host side.
"""
import importlib

_API = {
    "connect": "csdemu.host.device", "Device": "csdemu.host.device",
    "connect_array": "csdemu.host.array", "ArrayDevice": "csdemu.host.array",
    "Queue": "csdemu.host.queue",
    "KVNamespace": "csdemu.host.kv", "SparF": "csdemu.host.kv",
    "Completion": "csdemu.transport.errors", "NVMeError": "csdemu.transport.errors",
    "DaemonError": "csdemu.transport.errors", "DeviceGone": "csdemu.transport.errors",
}

__all__ = ["connect", "Device", "connect_array", "ArrayDevice", "Queue", "KVNamespace", "SparF",
           "Completion", "NVMeError", "DaemonError", "DeviceGone"]
__version__ = "0.1.0"


def __getattr__(name):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    if name == "hf":                     # `csdemu.hf` without importing it first, as before
        return importlib.import_module("csdemu.hf")
    raise AttributeError(f"module 'csdemu' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API, "hf"])
