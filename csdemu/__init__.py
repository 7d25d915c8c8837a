"""csdemu: an NVMe computational storage drive emulator for in-storage LLM attention."""
from csdemu.client import Device, connect
from csdemu.host_queue import Queue
from csdemu.client_kv import KVNamespace, SparF
from csdemu.errors import Completion, DaemonError, NVMeError

__all__ = ["connect", "Device", "Queue", "KVNamespace", "SparF", "Completion", "NVMeError", "DaemonError"]
__version__ = "0.1.0"
