"""The `csdemu` command line, in nvme-cli's spirit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import click

from csdemu.control import reachable
from csdemu.errors import DaemonError
from csdemu.profile_rules import ProfileError
from csdemu.paths import default_data_dir, default_socket

SOCKET_OPT = click.option("--socket", "socket_path", default=None, metavar="PATH",
                          help="daemon socket [default: $CSDEMU_SOCKET or per-user runtime dir]")


def _fail(msg: str):
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
    from csdemu.cpus import parse_cpu_list
    try:
        return parse_cpu_list(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def cpus_option(what: str):
    """`--cpus LIST`: pin `what` to those CPUs (parsed by cpu_list)."""
    return click.option("--cpus", default=None, metavar="LIST", callback=cpu_list,
                        help=f"pin {what} to these CPUs (Linux cpulist, e.g. 1 or 0-3,6) "
                             "[default: any]")


def _connect(socket_path):
    from csdemu import connect
    try:
        return connect(socket_path)
    except DaemonError as exc:
        _fail(str(exc))


def _control(socket_path, op: str) -> dict:
    from csdemu.control import request
    path = socket_path or default_socket()
    try:
        return request(path, op, timeout=None)
    except OSError as exc:
        _fail(f"cannot reach the csdemu daemon at {path}: {exc.strerror or exc}")


class OneLineErrors(click.Group):
    """Every bad argument or failure ends in one line on stderr: `csdemu: error: ...`."""

    def main(self, args=None, prog_name=None, **kw):
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **kw)
        except click.exceptions.Abort:
            click.echo("csdemu: aborted", err=True)
            sys.exit(1)
        except (ProfileError, DaemonError) as exc:   # wherever a profile or a daemon is needed
            click.echo(f"csdemu: error: {exc}", err=True)
            sys.exit(2 if isinstance(exc, ProfileError) else 1)
        except click.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            where = f" {ctx.command_path.split(' ', 1)[1]}" if ctx and " " in ctx.command_path else ""
            click.echo(f"csdemu{where}: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        if isinstance(rv, int) and rv:
            sys.exit(rv)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="csdemu")
def main():
    """csdemu: an emulated NVMe computational storage drive for in-storage LLM attention."""


# ---------------------------------------------------------------- daemon
@main.command()
@click.option("--data-dir", default=None, metavar="DIR", help="where flash backing files live")
@SOCKET_OPT
@click.option("--profile", default=None, metavar="NAME", help="drive profile (see `csdemu profiles`)")
@click.option("--config", "config_file", default=None, metavar="FILE.toml", help="profile file")
@click.option("--timing", type=click.Choice(["virtual", "realtime"]), default=None,
              help="override the profile's timing mode")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="override one profile parameter (repeatable)")
@click.option("--poll-idle-us", default=2000, show_default=True, type=click.IntRange(0, 10_000_000),
              help="spin this long without work before sleeping")
@click.option("--engine-threads", default=1, show_default=True, type=click.IntRange(1, 256),
              help="threads for the attention kernels (more only pays on an otherwise idle machine)")
@cpus_option("the poller and the engine threads")
@click.option("--foreground", is_flag=True, help="do not daemonize")
def start(data_dir, socket_path, profile, config_file, overrides, timing, poll_idle_us,
          engine_threads, cpus, foreground):
    """Start the drive daemon."""
    socket_path = socket_path or default_socket()
    data_dir = data_dir or default_data_dir()
    if profile and config_file:
        _fail("give --profile or --config, not both")
    if foreground:
        if cpus is not None:
            from csdemu.cpus import pin_process
            pin_process(cpus)
        from csdemu.daemon import Daemon
        from csdemu.device import build_controller
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        try:
            ctrl, info = build_controller(data_dir, profile, config_file, timing, overrides,
                                          engine_threads)
        except (ValueError, OSError) as exc:
            _fail(str(exc))
        Daemon(socket_path, ctrl, poll_idle_us, info).serve()
        return
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    args = [sys.executable, "-m", "csdemu", "start", "--foreground",
            "--data-dir", data_dir, "--socket", socket_path, "--poll-idle-us", str(poll_idle_us),
            "--engine-threads", str(engine_threads)]
    for flag, value in (("--profile", profile), ("--config", config_file), ("--timing", timing)):
        if value:
            args += [flag, value]
    for item in overrides:
        args += ["--set", item]
    if cpus is not None:
        from csdemu.cpus import format_cpu_list
        args += ["--cpus", format_cpu_list(cpus)]
    log_path = os.path.join(data_dir, "daemon.log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = open(log_path, errors="replace").read().strip().splitlines()[-1:]
            _fail(f"daemon exited with status {proc.returncode}: {tail[0] if tail else 'see ' + log_path}")
        if reachable(socket_path):
            click.echo(f"csdemu daemon {proc.pid} listening on {socket_path} (log: {log_path})")
            return
        time.sleep(0.05)
    proc.kill()
    _fail(f"daemon did not start listening on {socket_path} within 60 s (log: {log_path})")


@main.command()
@click.option("--json", "as_json", is_flag=True)
def profiles(as_json):
    """List the shipped drive profiles."""
    from csdemu.profile import list_profiles
    rows = list_profiles()
    if as_json:
        click.echo(json.dumps(dict(rows), indent=2))
        return
    width = max(len(n) for n, _ in rows)
    for name, desc in rows:
        click.echo(f"{name:<{width}}  {desc}")


@main.command()
@SOCKET_OPT
def stop(socket_path):
    """Stop the daemon (in-flight commands are drained first)."""
    st = _control(socket_path, "status")
    _control(socket_path, "stop")
    pid = st.get("pid")
    deadline = time.monotonic() + 30
    while pid and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    click.echo(f"csdemu daemon {pid} stopped")


@main.command()
@SOCKET_OPT
@click.option("--json", "as_json", is_flag=True)
def status(socket_path, as_json):
    """Daemon pid, uptime, clients, queues, namespaces."""
    st = _control(socket_path, "status")
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(f"pid {st['pid']}  uptime {st['uptime_s']:.1f}s  socket {st['socket']}  "
               f"profile {st.get('profile', '')}  timing {'realtime' if st['timing_mode'] else 'virtual'}  "
               f"cpus {st.get('cpus', '?')}")
    click.echo(f"clients: {len(st['clients'])}  commands: {st['commands']}")
    for c in st["clients"]:
        qs = ", ".join(f"q{q['sqid']}x{q['depth']}" for q in c["queues"])
        click.echo(f"  client {c['id']} pid {c['pid']}: {qs}; {c['iommu_regions']} DMA regions")
    for ns in st["namespaces"]:
        owner = f" owner client {ns['owner']}" if ns["owner"] else ""
        click.echo(f"  nsid {ns['nsid']}: {ns['kind']}, {ns['nlbas']} x {ns['lba_size']} B{owner}")


# ---------------------------------------------------------------- admin verbs
def _print_dict(d: dict, indent=0):
    for k, v in d.items():
        if isinstance(v, dict):
            click.echo(" " * indent + f"{k}:")
            _print_dict(v, indent + 2)
        else:
            click.echo(" " * indent + f"{k:<28} {v}")


@main.command()
@SOCKET_OPT
@click.option("--namespace", "-n", "nsid", type=int, default=None, help="identify this namespace")
@click.option("--json", "as_json", is_flag=True)
def identify(socket_path, nsid, as_json):
    """Identify controller (or namespace with -n)."""
    with _connect(socket_path) as dev:
        d = dev.identify_ns(nsid) if nsid is not None else dev.identify()
    click.echo(json.dumps(d, indent=2)) if as_json else _print_dict(d)


@main.command()
@SOCKET_OPT
@click.option("--json", "as_json", is_flag=True)
def smart(socket_path, as_json):
    """SMART / health log (02h)."""
    with _connect(socket_path) as dev:
        d = dev.smart()
    click.echo(json.dumps(d, indent=2)) if as_json else _print_dict(d)


@main.command()
@SOCKET_OPT
@click.argument("lid", default="flash")
@click.option("--json", "as_json", is_flag=True)
@click.option("--length", default=4096, show_default=True, type=click.IntRange(4, 1 << 20),
              help="bytes to read (whole dwords)")
def log(socket_path, lid, as_json, length):
    """Get Log Page: LID is flash (C0h), engine (C1h), smart (02h) or a number."""
    from csdemu import NVMeError
    names = {"flash": 0xC0, "engine": 0xC1, "smart": 0x02}
    try:
        lid_num = names[lid] if lid in names else int(lid, 0)
    except ValueError:
        _fail(f"LID {lid!r} is not flash, engine, smart or a number")
    with _connect(socket_path) as dev:
        try:
            if lid_num == 0xC0:
                d = dev.flash_log()
            elif lid_num == 0x02:
                d = dev.smart()
            else:
                raw = dev.log_page(lid_num, length)
                d = {"lid": lid_num, "hex": raw.hex()}
        except NVMeError as exc:
            _fail(str(exc))
    click.echo(json.dumps(d, indent=2)) if as_json else _print_dict(d)


class AnyBaseInt(click.ParamType):
    """Integers in decimal, 0x hex, 0o octal or 0b binary, as nvme-cli takes them."""
    name = "integer"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return int(value, 0)
        except ValueError:
            self.fail(f"{value!r} is not an integer", param, ctx)


_int = AnyBaseInt()


@main.command()
@SOCKET_OPT
@click.option("--opcode", "-o", required=True, type=_int)
@click.option("--namespace-id", "-n", "nsid", default=0, type=_int)
@click.option("--cdw10", default=0, type=_int)
@click.option("--cdw11", default=0, type=_int)
@click.option("--cdw12", default=0, type=_int)
@click.option("--cdw13", default=0, type=_int)
@click.option("--cdw14", default=0, type=_int)
@click.option("--cdw15", default=0, type=_int)
@click.option("--data-len", "-l", default=0, type=_int, help="bytes to read back")
@click.option("--input-file", "-i", type=click.File("rb"), default=None, help="data to send")
@click.option("--admin", is_flag=True, help="admin-passthru instead of io-passthru")
@click.option("--json", "as_json", is_flag=True)
def passthru(socket_path, opcode, nsid, cdw10, cdw11, cdw12, cdw13, cdw14, cdw15,
             data_len, input_file, admin, as_json):
    """Send a raw command (nvme io-passthru / admin-passthru)."""
    data = input_file.read() if input_file else None
    with _connect(socket_path) as dev:
        c = dev.passthru(opcode, nsid, cdw10, cdw11, cdw12, cdw13, cdw14, cdw15,
                         data=data, read_len=data_len, admin=admin)
    out = {"status": c.status_name, "sct": c.sct, "sc": c.sc, "result": c.result,
           "device_ns": c.device_ns}
    if data_len:
        out["data"] = c.data.hex()
    if as_json:
        click.echo(json.dumps(out))
    else:
        click.echo(f"{'NVMe status' if not c.ok else 'status'}: {c.status_name} "
                   f"(SCT {c.sct:#x}, SC {c.sc:#04x}) result {c.result:#x} device {c.device_ns} ns")
        if data_len:
            click.echo(out["data"])
    if not c.ok:
        sys.exit(1)


@main.command()
@click.option("--profile", default=None, metavar="NAME")
def demo(profile):
    """Start a temporary drive, write and read blocks, print identify and SMART."""
    from csdemu.demo import run_demo
    run_demo(profile)


from csdemu import cli_bench  # noqa: E402,F401  (registers `csdemu bench ...`)
from csdemu import cli_generate  # noqa: E402,F401
from csdemu import cli_nbd  # noqa: E402,F401  (registers `csdemu nbd`)
from csdemu import cli_reproduce  # noqa: E402,F401  (registers `csdemu reproduce`)
from csdemu import cli_stress  # noqa: E402,F401  (registers `csdemu stress`)
