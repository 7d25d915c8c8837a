"""Throwaway arrays for tools, benchmarks and tests: N daemon processes
started side by side, described by a manifest so connect_array() finds them.

    with ArrayProcesses(3, profile="instinfer") as arr_procs:
        with connect_array(arr_procs.dir) as arr: ...
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading

from csdemu.host.array import connect_array, write_manifest
from csdemu.host.spawn import DaemonProcess
from csdemu.transport.errors import DaemonError


def per_member(value, drives: int, what: str) -> list:
    """One value for all drives, or one per drive -> a list of `drives`."""
    if value is None or isinstance(value, str):
        return [value] * drives
    value = list(value)
    if len(value) == 1:
        return value * drives
    if len(value) != drives:
        raise ValueError(f"{what}: give one for all {drives} drives or one per drive, "
                         f"got {len(value)}")
    return value


class ArrayProcesses:
    """`drives` `csdemu start --foreground` children; `profile` is one name
    for all or one per drive, `extra_args` go to every daemon and
    `member_args` (one list per drive) to each its own."""

    def __init__(self, drives: int, profile=None, extra_args=(), member_args=None,
                 topology=None, env=None):
        if drives < 1:
            raise ValueError(f"an array needs at least one drive, got {drives}")
        profiles = per_member(profile, drives, "profile")
        member_args = member_args or [[] for _ in range(drives)]
        self.dir = tempfile.mkdtemp(prefix="csdemu-array-")
        self.topology = topology
        self.procs = [DaemonProcess(profile=profiles[i],
                                    extra_args=[*extra_args, *member_args[i]], env=env)
                      for i in range(drives)]

    def start(self, timeout: float = 60.0) -> "ArrayProcesses":
        errors: dict[int, Exception] = {}

        def one(i, p):
            try:
                p.start(timeout)
            except Exception as exc:
                errors[i] = exc
        threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(self.procs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self.cleanup()
            i = min(errors)
            raise RuntimeError(f"array member {i}: {' '.join(str(errors[i]).split())}")
        write_manifest(self.dir, {
            "topology": self.topology,
            "drives": [{"index": i, "socket": p.socket_path, "data_dir": p.data_dir,
                        "profile": p.profile, "pid": p.proc.pid} for i, p in enumerate(self.procs)]})
        return self

    @property
    def sockets(self) -> list[str]:
        return [p.socket_path for p in self.procs]

    def cleanup(self) -> None:
        for p in self.procs:
            if p.proc is not None:
                p.cleanup()
            else:
                shutil.rmtree(p.tmp, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()


@contextlib.contextmanager
def open_array(array_dir: str | None = None, drives: int | None = None, profile=None,
               extra_args=(), topology=None):
    """An ArrayDevice: the running array in `array_dir` (it must have
    `drives` members when that is given too), else a throwaway array of
    `drives` daemons started for the block."""
    if array_dir is not None:
        with connect_array(array_dir, topology=topology) as arr:
            if drives is not None and len(arr) != drives:
                raise DaemonError(f"the array in {array_dir} has {len(arr)} drives, not {drives}")
            yield arr
        return
    procs = ArrayProcesses(drives or 1, profile, extra_args, topology=topology)
    try:
        procs.start()
    except RuntimeError as exc:
        raise DaemonError(str(exc)) from None
    try:
        with connect_array(procs.dir, topology=topology) as arr:
            yield arr
    finally:
        procs.cleanup()

