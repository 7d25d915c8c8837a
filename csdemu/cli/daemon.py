"""`csdemu start|stop|status|profiles`: the daemon's life."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import click

from csdemu.cli.options import (SOCKET_OPT, control, cpus_option, fail, timeout_option,
                                trace_file_problem, wait_exited)
from csdemu.transport.control import reachable, socket_unusable
from csdemu.transport.paths import default_data_dir, default_socket, socket_dir_problem


@click.command()
@click.option("--data-dir", default=None, metavar="DIR", help="where flash backing files live")
@SOCKET_OPT
@click.option("--profile", default=None, metavar="NAME", help="drive profile (see `csdemu profiles`)")
@click.option("--config", "config_file", default=None, metavar="FILE.toml", help="profile file")
@click.option("--timing", type=click.Choice(["virtual", "realtime"]), default=None,
              help="override the profile's timing mode")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="override one profile parameter (repeatable)")
@click.option("--arrival", type=click.Choice(["causal", "fetch"]), default="causal", show_default=True,
              help="when a command arrives in modeled time: causal (docs/architecture.md, "
                   "Timing modes), or fetch, the daemon's fetch time alone, to measure what "
                   "an emulator without the causal rule reports")
@click.option("--poll-idle-us", default=2000, show_default=True, type=click.IntRange(0, 10_000_000),
              help="spin this long without work before sleeping")
@click.option("--engine-threads", default=1, show_default=True, type=click.IntRange(1, 256),
              help="threads for the attention kernels (more only pays on an otherwise idle machine)")
@cpus_option("the poller and the engine threads")
@click.option("--format", "fmt", is_flag=True,
              help="erase the drive in --data-dir, if any, and format a new one")
@click.option("--preallocate", is_flag=True,
              help="reserve all backing space now (a full disk is found at start, not mid-run)")
@click.option("--trace", "trace", default=None, metavar="FILE",
              help="record every command's modeled intervals into FILE (Chrome/Perfetto JSON, "
                   "written at stop; see `csdemu trace summary`)")
@click.option("--trace-limit", default=None, type=click.IntRange(1, 100_000_000), metavar="N",
              help="stop recording after N intervals, ~110 bytes of file each "
                   "[default: csdemu.drive.trace.DEFAULT_LIMIT, docs/trace.md]")
@click.option("--foreground", is_flag=True, help="do not daemonize")
def start(data_dir, socket_path, profile, config_file, overrides, timing, arrival, poll_idle_us,
          engine_threads, cpus, fmt, preallocate, trace, trace_limit, foreground):
    """Start the drive daemon."""
    socket_path = socket_path or default_socket()
    data_dir = data_dir or default_data_dir()
    if trace:
        trace = os.path.abspath(trace)
        problem = trace_file_problem(trace)
        if problem:
            fail(f"--trace: {problem}")
    if profile and config_file:
        fail("give --profile or --config, not both")
    unusable = socket_dir_problem(socket_path) or socket_unusable(socket_path)
    if unusable:                                 # before anything is forked or formatted
        fail(f"--socket: {unusable}")
    if foreground:
        if cpus is not None:
            from csdemu.drive.cpus import pin_process
            pin_process(cpus)
        from csdemu.drive.daemon import Daemon
        from csdemu.drive.assembly import build_controller
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        try:
            ctrl, info = build_controller(data_dir, profile, config_file, timing, overrides,
                                          engine_threads, fmt=fmt, preallocate=preallocate,
                                          causal_arrival=arrival == "causal",
                                          trace=trace, trace_limit=trace_limit)
        except (ValueError, OSError) as exc:
            fail(str(exc))
        Daemon(socket_path, ctrl, poll_idle_us, info).serve()
        return
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    args = [sys.executable, "-m", "csdemu", "start", "--foreground",
            "--data-dir", data_dir, "--socket", socket_path, "--poll-idle-us", str(poll_idle_us),
            "--engine-threads", str(engine_threads), "--arrival", arrival]
    if trace:
        args += ["--trace", trace]
    if trace_limit:
        args += ["--trace-limit", str(trace_limit)]
    for flag, value in (("--profile", profile), ("--config", config_file), ("--timing", timing)):
        if value:
            args += [flag, value]
    for item in overrides:
        args += ["--set", item]
    args += [flag for flag, on in (("--format", fmt), ("--preallocate", preallocate)) if on]
    if cpus is not None:
        from csdemu.drive.cpus import format_cpu_list
        args += ["--cpus", format_cpu_list(cpus)]
    log_path = os.path.join(data_dir, "daemon.log")
    with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
        try:
            os.fchmod(log.fileno(), 0o600)      # the data dir's files are the user's alone
        except OSError:
            pass
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            from csdemu.host.spawn import read_log     # the parent only: the daemon never loads it
            tail = read_log(log_path).strip().splitlines()[-1:]
            fail(f"daemon exited with status {proc.returncode}: {tail[0] if tail else 'see ' + log_path}")
        if reachable(socket_path):
            click.echo(f"csdemu daemon {proc.pid} listening on {socket_path} (log: {log_path})")
            return
        time.sleep(0.05)
    proc.kill()
    fail(f"daemon did not start listening on {socket_path} within 60 s (log: {log_path})")


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def profiles(ctx, as_json):
    """List the shipped drive profiles (`profiles show NAME` resolves one)."""
    if ctx.invoked_subcommand is not None:
        return
    from csdemu.drive.profile import list_profiles
    rows = list_profiles()
    if as_json:
        click.echo(json.dumps(dict(rows), indent=2))
        return
    width = max(len(n) for n, _ in rows)
    for name, desc in rows:
        click.echo(f"{name:<{width}}  {desc}")


@profiles.command("show")
@click.argument("name")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="override one parameter (repeatable), as `csdemu start --set`")
@click.option("--json", "as_json", is_flag=True)
def profiles_show(name, overrides, as_json):
    """The resolved profile NAME (a shipped name or a TOML file; `extends`
    and `device.capacity` applied), with the capacity it gives."""
    from csdemu.drive.assembly import parse_overrides
    from csdemu.drive.profile import ProfileError, load_profile
    try:
        prof = load_profile(name, parse_overrides(overrides))
    except ProfileError as exc:
        fail(str(exc))
    d = prof.derive()
    derived = {"raw_bytes": d.raw_bytes, "user_bytes": d.nlbas * prof.device.lba_size,
               "nlbas": d.nlbas, "lines": d.lines, "kv_lines": d.kv_lines,
               "pages": d.total_pages}
    if as_json:
        click.echo(json.dumps({"name": prof.name, **prof.to_dict(), "derived": derived}, indent=2))
        return
    click.echo(f"profile {prof.name}: {d.raw_bytes / 2**30:,.2f} GiB raw, "
               f"{derived['user_bytes'] / 2**30:,.2f} GiB of LBAs ({d.nlbas:,} x "
               f"{prof.device.lba_size} B), {d.lines} lines ({d.kv_lines} for KV)")
    for sec, body in prof.to_dict().items():
        click.echo(f"[{sec}]")
        for k, v in body.items():
            click.echo(f"  {k:<26} {v}")


@click.command()
@SOCKET_OPT
def stop(socket_path):
    """Stop the daemon (in-flight commands are drained first)."""
    st = control(socket_path, "status")
    control(socket_path, "stop")
    pid = st.get("pid")
    wait_exited([pid])
    click.echo(f"csdemu daemon {pid} stopped")


@click.command()
@SOCKET_OPT
@click.option("--json", "as_json", is_flag=True)
@timeout_option("a daemon that does not answer")
def status(socket_path, as_json, timeout):
    """Daemon pid, uptime, clients, queues, namespaces."""
    st = control(socket_path, "status", timeout)
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(f"pid {st['pid']}  uptime {st['uptime_s']:.1f}s  socket {st['socket']}  "
               f"profile {st.get('profile', '')}  timing {'realtime' if st['timing_mode'] else 'virtual'}  "
               f"cpus {st.get('cpus', '?')}")
    g = st.get("geometry")
    if g:
        click.echo(f"drive: {st['raw_bytes'] / 2**30:,.2f} GiB raw, {st['user_bytes'] / 2**30:,.2f} GiB "
                   f"of LBAs; {g['channels']} ch x {g['ways']} ways x {g['planes']} planes, "
                   f"{g['lines']} lines ({g['kv_lines']} for KV)"
                   + (f"; --set {' '.join(st['overrides'])}" if st.get("overrides") else ""))
    if st.get("trace"):
        click.echo(f"tracing into {st['trace']} (written at stop; docs/trace.md)")
    click.echo(f"clients: {len(st['clients'])}  commands: {st['commands']}")
    for c in st["clients"]:
        qs = ", ".join(f"q{q['sqid']}x{q['depth']}" for q in c["queues"])
        click.echo(f"  client {c['id']} pid {c['pid']}: {qs}; {c['iommu_regions']} DMA regions")
    for ns in st["namespaces"]:
        owner = f" owner client {ns['owner']}" if ns["owner"] else ""
        click.echo(f"  nsid {ns['nsid']}: {ns['kind']}, {ns['nlbas']} x {ns['lba_size']} B{owner}")
