"""nbdkit serving a csdemu namespace: the command line that starts it, and
`NbdServer`, the same as a context manager for tools, benchmarks and tests.

    with NbdServer(daemon_socket) as srv:
        run fio against srv.uri
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
import tempfile
import time

from csdemu.drive.cpus import pin_to
from csdemu.host.spawn import read_log, terminate

PLUGIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugin.py")
# what the plugin puts on sys.path inside nbdkit: the directory holding csdemu/
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def nbd_uri(nbd_socket: str) -> str:
    return f"nbd+unix:///?socket={nbd_socket}"


def nbdkit_argv(daemon_socket: str, nbd_socket: str, nsid: int = 1, threads: int = 16,
                readonly: bool = False, verbose: bool = False, run: str | None = None,
                plugin: str = PLUGIN, extra=()) -> list[str]:
    """The nbdkit command line that serves `nsid` of the daemon at `daemon_socket`."""
    exe = shutil.which("nbdkit")
    if exe is None:
        raise RuntimeError("nbdkit is not installed (Debian: apt-get install nbdkit "
                                   "nbdkit-plugin-python; `make apt` does it)")
    site = [p for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}]
    argv = [exe, "--foreground", "--exit-with-parent", "--unix", nbd_socket,
            "--threads", str(threads)]
    if readonly:
        argv.append("--readonly")
    if verbose:
        argv.append("--verbose")
    if run:
        argv += ["--run", run]
    # a .py file runs under nbdkit's python plugin; a bare name is one of
    # nbdkit's own (C) plugins, such as "memory"
    argv += ["python", plugin] if plugin.endswith(".py") else [plugin]
    if plugin == PLUGIN:
        argv += [f"socket={daemon_socket}", f"nsid={nsid}", f"root={ROOT}", f"site={site[0]}"]
    argv += list(extra)
    return argv


def wait_socket(path: str, proc: subprocess.Popen, timeout: float, log_path: str | None):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            tail = ""
            if log_path:
                lines = read_log(log_path).strip().splitlines()
                tail = ": " + (lines[-1] if lines else "")
            raise RuntimeError(f"nbdkit exited with status {proc.returncode}{tail}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"nbdkit did not create {path} within {timeout}s")
        time.sleep(0.02)


class NbdServer:
    """nbdkit serving a csdemu namespace (or, with plugin=..., any Python plugin)
    on a Unix socket in a temporary directory; `uri` is what fio and nbdsh take."""

    def __init__(self, daemon_socket: str | None, nsid: int = 1, threads: int = 16,
                 plugin: str = PLUGIN, extra=(), nbd_socket: str | None = None,
                 cpus=None):
        self.tmp = tempfile.mkdtemp(prefix="csdemu-nbd-")
        self.nbd_socket = nbd_socket or os.path.join(self.tmp, "nbd.sock")
        self.log_path = os.path.join(self.tmp, "nbdkit.log")
        self.argv = nbdkit_argv(daemon_socket or "", self.nbd_socket, nsid, threads,
                                plugin=plugin, extra=extra)
        self.cpus = cpus
        self.proc = None

    @property
    def uri(self) -> str:
        return nbd_uri(self.nbd_socket)

    def start(self, timeout: float = 30.0) -> "NbdServer":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=self.log, preexec_fn=pin_to(self.cpus))
        wait_socket(self.nbd_socket, self.proc, timeout, self.log_path)
        return self

    def log_text(self) -> str:
        return read_log(self.log_path)

    def stop(self) -> None:
        terminate(self.proc, 20)
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
