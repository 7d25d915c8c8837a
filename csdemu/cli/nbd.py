"""`csdemu nbd`: serve namespace 1 over NBD with nbdkit and the csdemu plugin.

    csdemu nbd [--socket S] [--nbd-socket P]     # prints nbd+unix:///?socket=P
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import click

from csdemu.cli.options import SOCKET_OPT, cpus_option
from csdemu.drive.cpus import pin_to


@click.command()
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
    from csdemu.nbd.server import nbd_uri, nbdkit_argv, wait_socket
    from csdemu.transport.paths import default_socket
    from csdemu.transport.control import reachable
    from csdemu.host.counters import counter_deltas, device_counters, format_deltas
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
    try:
        argv = nbdkit_argv(socket_path, nbd_socket, nsid, threads, readonly, verbose, run_cmd)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=pin_to(cpus))
    try:
        try:
            if run_cmd is None:
                wait_socket(nbd_socket, proc, 30.0, None)
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
