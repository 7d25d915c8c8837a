"""Several drives as one: an array of daemons, kv heads split across them.

    with csdemu.connect_array() as arr:              # the array `csdemu array start` made
        kv = arr.create_kv_namespace(layers=30, q_heads=9, kv_heads=3, head_dim=64)
        kv.append(layer, seq_ids, k, v)
        out = kv.attend(layer, seq_ids, q)
        kv.last.device_ns, [m.device_ns for m in kv.last.members]

Each member is a daemon of its own (its own data dir, socket, profile) with
a Device of its own. A call is handed to every member's own thread before
the caller waits for any of them, so every member's command is issued while
the others run; a member waiting for its completion sleeps in poll() without
the GIL. The split rule and the step's modeled time are csdemu.topology's,
shared with the system model; the KV side is csdemu.host.array_kv.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from csdemu.host.device import Device
from csdemu.host.queue import ADMIN_TIMEOUT_S
from csdemu.topology import load_topology
from csdemu.transport.errors import DaemonError, DeviceGone, NVMeError

MANIFEST = "array.json"
SUN_PATH_MAX = 107          # sockaddr_un.sun_path holds 108 bytes with the NUL


def default_array_dir() -> str:
    """$CSDEMU_ARRAY_DIR, else ~/.local/share/csdemu-array."""
    return os.environ.get("CSDEMU_ARRAY_DIR") or str(Path.home() / ".local" / "share" / "csdemu-array")


def member_paths(array_dir: str, index: int) -> tuple[str, str]:
    """(data dir, socket) of member `index`: the socket sits in the member's
    own 0700 data dir, so no other user can stand in for it."""
    data = os.path.join(os.path.abspath(array_dir), f"drive{index}")
    return data, os.path.join(data, "csdemu.sock")


def read_manifest(array_dir: str | None = None) -> dict:
    """The array's description (written by `csdemu array start`)."""
    path = os.path.join(array_dir or default_array_dir(), MANIFEST)
    try:
        with open(path) as f:
            man = json.load(f)
    except FileNotFoundError:
        raise DaemonError(f"no csdemu array in {os.path.dirname(path)}; "
                          "start one with `csdemu array start`") from None
    except (OSError, ValueError) as exc:
        raise DaemonError(f"unreadable array manifest {path}: {exc}") from None
    if not isinstance(man, dict) or not isinstance(man.get("drives"), list) or not man["drives"]:
        raise DaemonError(f"array manifest {path} lists no drives")
    return man


def write_manifest(array_dir: str, manifest: dict) -> None:
    path = os.path.join(array_dir, MANIFEST)
    tmp = path + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(tmp, path)


class MemberFailed(NVMeError):
    """A command failed on one member of an array: `member` and
    `socket_path` say which, `cause` is that member's own error."""

    def __init__(self, member: int, socket_path: str, cause: NVMeError, others=()):
        self.member, self.socket_path, self.cause, self.others = member, socket_path, cause, list(others)
        also = f" (members {', '.join(map(str, self.others))} failed too)" if self.others else ""
        NVMeError.__init__(self, cause.status,
                           f"array member {member} ({socket_path}){also}: {cause.command}",
                           cause.field)


class MemberGone(MemberFailed, DeviceGone):
    """The daemon of one array member went away."""


def member_error(member: int, socket_path: str, exc: BaseException, others=()) -> BaseException:
    """`exc` of member `member`, re-raised so it names the member."""
    if isinstance(exc, DeviceGone):
        return MemberGone(member, socket_path, exc, others)
    if isinstance(exc, NVMeError):
        return MemberFailed(member, socket_path, exc, others)
    msg = f"array member {member} ({socket_path}): {exc}"
    try:
        return type(exc)(msg)
    except Exception:
        return RuntimeError(msg)


class Member:
    """One drive of the array: its Device and the thread that drives it."""

    def __init__(self, index: int, socket_path: str, dev: Device):
        self.index, self.socket_path, self.dev = index, socket_path, dev
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"csdemu-array-{index}")

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.dev.close()


class ArrayDevice:
    """N drives addressed as one (see the module docstring). Like a Device,
    not for use by several threads at once."""

    def __init__(self, sockets, topology=None, timeout: float | None = ADMIN_TIMEOUT_S, **kw):
        sockets = [str(s) for s in sockets]
        if not sockets:
            raise ValueError("an array needs at least one drive")
        self.topology = load_topology(topology)
        self.topology.behind_switch(len(sockets))      # TopologyError if it cannot hold them
        self.members: list[Member] = []
        try:
            for i, path in enumerate(sockets):
                try:
                    dev = Device(path, timeout=timeout, **kw)
                except DaemonError as exc:
                    raise DaemonError(f"array member {i} ({path}): {exc}") from None
                self.members.append(Member(i, path, dev))
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self.members)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        for m in self.members:
            m.close()
        self.members = []

    def member(self, index: int) -> Device:
        """Member `index`'s own Device, for single-drive commands."""
        return self.members[index].dev

    def run(self, calls: dict) -> dict:
        """{member: fn} -> {member: (fn(), issued_ns, done_ns)}: every fn is
        handed to its member's thread before any is waited for; a failure
        is raised once all have finished, naming the (first) member."""
        def stamp(fn):
            def timed():
                t0 = time.monotonic_ns()
                return t0, fn(), time.monotonic_ns()
            return timed
        if len(calls) == 1:                 # nothing to overlap with: no thread hop
            (i, fn), = calls.items()
            try:
                t0, res, t1 = stamp(fn)()
            except Exception as exc:
                raise member_error(i, self.members[i].socket_path, exc) from exc
            return {i: (res, t0, t1)}
        futures = {i: self.members[i].pool.submit(stamp(fn)) for i, fn in calls.items()}
        out, failed = {}, {}
        for i, fut in futures.items():
            try:
                t0, res, t1 = fut.result()
                out[i] = (res, t0, t1)
            except Exception as exc:
                failed[i] = exc
        if failed:
            first = min(failed)
            exc = failed[first]
            raise member_error(first, self.members[first].socket_path, exc,
                               sorted(set(failed) - {first})) from exc
        return out

    def create_kv_namespace(self, layers: int, q_heads: int, kv_heads: int, head_dim: int,
                            dtype: str = "float16", sparse_layout: bool = False, **kw):
        """A KV namespace over every member, kv heads split by
        csdemu.topology.plan (see csdemu.host.array_kv)."""
        from csdemu.host.array_kv import create_array_kv
        return create_array_kv(self, layers, q_heads, kv_heads, head_dim, dtype, sparse_layout, **kw)

    def engine_log(self) -> dict:
        """The members' engine logs summed (per-channel lists concatenated,
        member by member); each member's own under "members"."""
        logs = [r[0] for r in self.run({m.index: m.dev.engine_log for m in self.members}).values()]
        out = {}
        for key, first in logs[0].items():
            if key == "version":
                out[key] = first
            elif isinstance(first, list):
                out[key] = [x for log in logs for x in log[key]]
            else:
                out[key] = sum(log[key] for log in logs)
        out["members"] = logs
        return out


def connect_array(array_dir: str | None = None, sockets=None, topology=None,
                  timeout: float | None = ADMIN_TIMEOUT_S, **kw) -> ArrayDevice:
    """Attach to every drive of an array: the one `csdemu array start` made
    in `array_dir` (default: $CSDEMU_ARRAY_DIR or ~/.local/share/csdemu-array),
    or the daemons at `sockets`. `topology` (a csdemu.topology name or
    .toml) overrides the array's; other arguments go to each connect()."""
    if sockets is None:
        man = read_manifest(array_dir)
        sockets = [d["socket"] for d in man["drives"]]
        topology = topology or man.get("topology")
    return ArrayDevice(sockets, topology, timeout=timeout, **kw)
