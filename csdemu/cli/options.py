"""What the verbs share: the socket option, list callbacks, one-line failures,
reaching the daemon, and a daemon for commands that need one."""
from __future__ import annotations

import contextlib
import os
import sys
import time

import click

from csdemu.transport.errors import DaemonError
from csdemu.transport.paths import default_socket

SOCKET_OPT = click.option("--socket", "socket_path", default=None, metavar="PATH",
                          help="daemon socket [default: $CSDEMU_SOCKET or per-user runtime dir]")


def timeout_option(what: str):
    """`--timeout SECONDS` for `what`; None (not given) means the library's
    default: 60 s for admin commands and control requests, 30 s for I/O."""
    return click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
                        metavar="SECONDS",
                        help=f"give up on {what} after this long "
                             "[default: 60 (admin, control) or 30 (I/O), as Linux's NVMe driver]")


def fail(msg: str):
    raise click.ClickException(msg)


def int_list(ctx, param, value):
    """Click callback: "1024,2048" -> [1024, 2048], every item a positive
    integer, or a one-line error naming the option."""
    try:
        out = [int(x) for x in str(value).replace(" ", "").split(",") if x]
    except ValueError:
        out = []
    if not out or any(v <= 0 for v in out):
        raise click.BadParameter(f"must be a comma-separated list of positive integers, got {value!r}")
    return out


def cpu_list(ctx, param, value):
    """Click callback: "0-1,3" -> {0, 1, 3} (CPUs this process may use), None
    when not given, or a one-line error naming the option."""
    if value is None:
        return None
    from csdemu.drive.cpus import parse_cpu_list
    try:
        return parse_cpu_list(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def cpus_option(what: str):
    """`--cpus LIST`: pin `what` to those CPUs (parsed by cpu_list)."""
    return click.option("--cpus", default=None, metavar="LIST", callback=cpu_list,
                        help=f"pin {what} to these CPUs (Linux cpulist, e.g. 1 or 0-3,6) "
                             "[default: any]")


def connect(socket_path, timeout: float | None = None):
    """A Device, or a one-line failure; `timeout` bounds the attach."""
    from csdemu.host.device import connect as open_device
    try:
        return open_device(socket_path, timeout=timeout)
    except DaemonError as exc:
        fail(str(exc))


def control(socket_path, op: str, timeout: float | None = None) -> dict:
    """A control request's reply, or a one-line failure when the daemon
    cannot be reached, is not ours, or stays silent for `timeout` s (None:
    the admin default; a daemon busy with a long command answers late)."""
    from csdemu.host.queue import ADMIN_TIMEOUT_S
    from csdemu.transport.control import request
    path = socket_path or default_socket()
    try:
        return request(path, op, timeout=timeout or ADMIN_TIMEOUT_S)
    except DaemonError as exc:
        fail(str(exc))


@contextlib.contextmanager
def daemon_for(socket_path: str | None, profile: str | None = None, extra_args=(),
               trace: str | None = None):
    """Yield a socket path: the given/default daemon if it answers, else a
    temporary one (recording its timeline into `trace`, if given)."""
    from csdemu.drive.profile import load_profile
    from csdemu.host.spawn import DaemonProcess
    from csdemu.transport.control import reachable
    path = socket_path or default_socket()
    if trace:
        trace = os.path.abspath(trace)
        problem = trace_file_problem(trace)
        if problem:
            raise click.BadParameter(problem, param_hint="--trace")
    if reachable(path):
        if trace:
            raise DaemonError(f"--trace needs a drive started for this run, but a daemon "
                              f"answers at {path}; stop it, or start it with `csdemu start "
                              f"--trace FILE`")
        yield path
        return
    if socket_path:
        raise DaemonError(f"no csdemu daemon at {socket_path}; start one with `csdemu start`")
    if trace:
        extra_args = [*extra_args, "--trace", trace]
    if profile:
        load_profile(profile)        # a bad name fails here, in one line, not in the child
    proc = DaemonProcess(profile=profile, extra_args=extra_args)
    try:
        try:
            proc.start()
        except RuntimeError as exc:
            raise DaemonError(" ".join(str(exc).split())) from None
        yield proc.socket_path
    finally:
        proc.cleanup()


def trace_file_problem(path: str) -> str | None:
    """Why a trace cannot be written at `path`, or None."""
    d = os.path.dirname(path) or "."
    if os.path.isdir(path):
        return f"{path} is a directory"
    if not os.path.isdir(d):
        return f"directory {d} does not exist"
    if not os.access(d, os.W_OK):
        return f"directory {d} is not writable"
    return None


def trace_option(what: str):
    return click.option("--trace", default=None, metavar="FILE",
                        help=f"record the modeled timeline of {what} into FILE "
                             f"(Chrome/Perfetto JSON; see `csdemu trace summary`)")


def say(msg: str) -> None:
    """A progress line on stderr (stdout stays the result, JSON or text)."""
    click.echo(msg, err=True)


class TokenBar:
    """transformers' streamer interface as a tqdm bar of decode steps on
    stderr: generate() calls put() with the prompt, then each new token."""

    def __init__(self, total: int, desc: str = "decode"):
        from tqdm import tqdm
        self.bar = tqdm(total=total, desc=desc, unit="tok", file=sys.stderr, leave=False,
                        disable=not sys.stderr.isatty())
        self.started = False

    def put(self, value) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True

    def end(self) -> None:
        self.bar.close()


def wait_exited(pids, timeout: float = 30.0) -> None:
    """Wait until every process of `pids` has exited (at most `timeout` s)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while pid and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
