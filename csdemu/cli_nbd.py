"""`csdemu nbd`: serve namespace 1 over NBD with nbdkit and the csdemu plugin.

    csdemu nbd [--socket S] [--nbd-socket P]     # prints nbd+unix:///?socket=P

`NbdServer` is the same thing as a context manager for tools and tests.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time

import click

from csdemu.cli import SOCKET_OPT, cpus_option, main
from csdemu.cpus import pin_to

PLUGIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nbd_plugin.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nbd_uri(nbd_socket: str) -> str:
    return f"nbd+unix:///?socket={nbd_socket}"


def nbdkit_argv(daemon_socket: str, nbd_socket: str, nsid: int = 1, threads: int = 16,
                readonly: bool = False, verbose: bool = False, run: str | None = None,
                plugin: str = PLUGIN, extra=()) -> list[str]:
    """The nbdkit command line that serves `nsid` of the daemon at `daemon_socket`."""
    exe = shutil.which("nbdkit")
    if exe is None:
        raise click.ClickException("nbdkit is not installed (Debian: apt-get install nbdkit "
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
    argv += ["python", plugin]
    if plugin == PLUGIN:
        argv += [f"socket={daemon_socket}", f"nsid={nsid}", f"root={ROOT}", f"site={site[0]}"]
    argv += list(extra)
    return argv


def _wait_socket(path: str, proc: subprocess.Popen, timeout: float, log_path: str | None):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            tail = ""
            if log_path:
                lines = open(log_path, errors="replace").read().strip().splitlines()
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
        _wait_socket(self.nbd_socket, self.proc, timeout, self.log_path)
        return self

    def log_text(self) -> str:
        try:
            return open(self.log_path, errors="replace").read()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@main.command()
@SOCKET_OPT
@click.option("--nbd-socket", default=None, metavar="PATH",
              help="Unix socket to serve NBD on [default: a new temporary path]")
@click.option("--nsid", "-n", default=1, show_default=True, type=click.IntRange(1, 0xFFFFFFFE),
              help="namespace to export")
@click.option("--threads", default=16, show_default=True, type=click.IntRange(1, 64),
              help="nbdkit worker threads per connection")
@click.option("--readonly", is_flag=True, help="export read-only")
@click.option("--run", "run_cmd", default=None, metavar="CMD",
              help="run CMD with $uri set (nbdkit --run), then stop")
@cpus_option("nbdkit and its worker threads")
@click.option("--verbose", is_flag=True, help="nbdkit --verbose")
def nbd(socket_path, nbd_socket, nsid, threads, readonly, run_cmd, cpus, verbose):
    """Serve a namespace over NBD (nbdkit + the csdemu Python plugin).

    Prints the NBD URI, serves until interrupted (or until --run finishes),
    then prints the drive's SMART and flash-log deltas for the session."""
    from csdemu.paths import default_socket
    from csdemu.control import reachable
    from csdemu.device_counters import counter_deltas, device_counters, format_deltas
    socket_path = socket_path or default_socket()
    if not reachable(socket_path):
        raise click.ClickException(f"no csdemu daemon at {socket_path}; start one with "
                                   "`csdemu start`")
    tmp = None
    if nbd_socket is None:
        tmp = tempfile.mkdtemp(prefix="csdemu-nbd-")
        nbd_socket = os.path.join(tmp, "nbd.sock")
    elif os.path.exists(nbd_socket):
        raise click.BadParameter(f"{nbd_socket} already exists", param_hint="--nbd-socket")
    before = device_counters(socket_path)
    argv = nbdkit_argv(socket_path, nbd_socket, nsid, threads, readonly, verbose, run_cmd)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=pin_to(cpus))
    try:
        try:
            if run_cmd is None:
                _wait_socket(nbd_socket, proc, 30.0, None)
                click.echo(nbd_uri(nbd_socket), err=False)
                sys.stdout.flush()
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait()
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    click.echo(format_deltas(counter_deltas(before, device_counters(socket_path))), err=True)
    if rc not in (0, -signal.SIGTERM):
        raise click.ClickException(f"nbdkit exited with status {rc}")
