"""`csdemu array start|status|stop|member`: N drives, one daemon each.

An array lives in one directory: member i's data dir (and its socket, and
its log) is DIR/drive<i>, and DIR/array.json lists the members, their
profiles and the host topology (csdemu.host.array reads it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

import click

from csdemu.cli.options import cpus_option, fail, timeout_option, wait_exited

DIR_OPT = click.option("--dir", "array_dir", default=None, metavar="DIR",
                       help="the array's directory [default: $CSDEMU_ARRAY_DIR or "
                            "~/.local/share/csdemu-array]")
CONFIG_KEYS = {"drives", "profile", "set", "topology", "drive"}
DRIVE_KEYS = {"profile", "set"}


def _sets(where: str, value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        fail(f"{where}: set must be a list of \"SECTION.KEY=VALUE\" strings")
    return list(value)


def read_config(path: str) -> dict:
    """An array TOML: top-level drives, profile, set, topology, and one
    [[drive]] table (profile, set) per member that differs."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        fail(f"--config {path}: {exc.strerror or exc}")
    except tomllib.TOMLDecodeError as exc:
        fail(f"--config {path}: {' '.join(str(exc).split())}")
    where = f"array config {os.path.basename(path)}"
    for k in raw:
        if k not in CONFIG_KEYS:
            fail(f"{where}: unknown key {k!r} (known: {', '.join(sorted(CONFIG_KEYS))})")
    drives = raw.get("drive", [])
    if not isinstance(drives, list):
        fail(f"{where}: drive must be an array of tables ([[drive]])")
    for i, d in enumerate(drives):
        for k in d:
            if k not in DRIVE_KEYS:
                fail(f"{where}: [[drive]] {i}: unknown key {k!r} (known: profile, set)")
    n = raw.get("drives", len(drives) or None)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        fail(f"{where}: drives must be a positive integer, got {n!r}")
    if drives and n != len(drives):
        fail(f"{where}: drives = {n} but {len(drives)} [[drive]] tables")
    base_sets = _sets(where, raw.get("set", []))
    members = [(d.get("profile", raw.get("profile")),
                base_sets + _sets(f"{where}: [[drive]] {i}", d.get("set", [])))
               for i, d in enumerate(drives)] or None
    return {"drives": n, "profile": raw.get("profile"), "set": base_sets,
            "topology": raw.get("topology"), "members": members}


def plan_members(drives, profiles, config_file, overrides) -> list[tuple[str | None, list[str]]]:
    """[(profile, --set items)] per member, from the flags and the array TOML."""
    cfg = read_config(config_file) if config_file else {"drives": None, "members": None,
                                                          "profile": None, "set": []}
    n = drives or cfg["drives"] or (len(profiles) if len(profiles) > 1 else None)
    if n is None:
        fail("--drives: how many drives? (or give one --profile per drive, or --config)")
    if cfg["drives"] and cfg["drives"] != n:
        fail(f"--drives {n}: the array config describes {cfg['drives']} drives")
    members = cfg["members"] or [(cfg["profile"], list(cfg["set"]))] * n
    if profiles:
        if len(profiles) not in (1, n):
            fail(f"--profile: give one for all {n} drives or one per drive, got {len(profiles)}")
        names = list(profiles) * n if len(profiles) == 1 else list(profiles)
        members = [(names[i], sets) for i, (_, sets) in enumerate(members)]
    members = [(p, [*sets, *overrides]) for p, sets in members]
    from csdemu.drive.assembly import DEFAULT_PROFILE, parse_overrides
    from csdemu.drive.profile import load_profile
    for p, sets in members:          # a bad name or --set fails here, in one line, before any fork
        load_profile(p or DEFAULT_PROFILE, parse_overrides(sets))
    return members


def _topology(name, drives):
    from csdemu.topology import TopologyError, load_topology
    try:
        topo = load_topology(name)
        topo.behind_switch(drives)
    except TopologyError as exc:
        fail(f"--topology: {exc}")
    return topo


def _reachable_members(man) -> list[int]:
    from csdemu.transport.control import reachable
    return [d["index"] for d in man["drives"] if reachable(d["socket"])]


@click.group()
def array():
    """Arrays of drives: N daemons, a model's kv heads split across them."""


@array.command()
@DIR_OPT
@click.option("--drives", type=click.IntRange(1, 64), default=None, help="how many drives")
@click.option("--profile", "profiles", multiple=True, metavar="NAME",
              help="drive profile: once for all drives, or once per drive in order")
@click.option("--config", "config_file", default=None, metavar="ARRAY.toml",
              help="array file: drives, profile, set, topology, [[drive]] tables")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="override one profile parameter on every drive (repeatable)")
@click.option("--topology", default=None, metavar="NAME|FILE.toml",
              help="host PCIe topology the array's time is charged on [default: instinfer-host]")
@click.option("--timing", type=click.Choice(["virtual", "realtime"]), default=None)
@click.option("--engine-threads", default=1, show_default=True, type=click.IntRange(1, 256))
@cpus_option("the drives, one CPU of the list each, round robin")
@click.option("--format", "fmt", is_flag=True, help="erase every member's drive and format a new one")
def start(array_dir, drives, profiles, config_file, overrides, topology, timing, engine_threads,
          cpus, fmt):
    """Start an array of drives (one daemon each)."""
    from csdemu.host.array import default_array_dir, member_paths, read_manifest, write_manifest
    from csdemu.host.array import SUN_PATH_MAX
    from csdemu.transport.control import request
    from csdemu.transport.errors import DaemonError
    array_dir = os.path.abspath(array_dir or default_array_dir())
    members = plan_members(drives, profiles, config_file, overrides)
    n = len(members)
    topo_name = topology or (read_config(config_file)["topology"] if config_file else None)
    topo = _topology(topo_name, n)
    try:
        running = _reachable_members(read_manifest(array_dir))
    except DaemonError:
        running = []
    if running:
        fail(f"--dir: an array already runs in {array_dir} (members {running}); "
             "stop it with `csdemu array stop`")
    sock = member_paths(array_dir, n - 1)[1]
    if len(sock.encode()) > SUN_PATH_MAX:
        fail(f"--dir: {array_dir} is too long: a member's socket path would pass "
             f"{SUN_PATH_MAX} bytes")
    os.makedirs(array_dir, mode=0o700, exist_ok=True)
    cpu_list = sorted(cpus) if cpus else None
    procs = []
    for i, (prof, sets) in enumerate(members):
        data, sock = member_paths(array_dir, i)
        args = [sys.executable, "-m", "csdemu", "start", "--data-dir", data, "--socket", sock,
                "--engine-threads", str(engine_threads)]
        args += ["--profile", prof] if prof else []
        args += [x for s in sets for x in ("--set", s)]
        args += ["--timing", timing] if timing else []
        args += ["--format"] if fmt else []
        args += ["--cpus", str(cpu_list[i % len(cpu_list)])] if cpu_list else []
        procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = [p.communicate() + (p.returncode,) for p in procs]   # each returns once listening
    bad = [i for i, (_, _, rc) in enumerate(results) if rc]
    drives_out = []
    for i, (prof, sets) in enumerate(members):
        data, sock = member_paths(array_dir, i)
        pid = None
        if i not in bad:
            try:
                pid = request(sock, "status").get("pid")
            except DaemonError:
                pass
        drives_out.append({"index": i, "socket": sock, "data_dir": data, "profile": prof,
                           "set": sets, "pid": pid})
    if bad:
        for d in drives_out:
            if d["index"] not in bad:
                try:
                    request(d["socket"], "stop")
                except DaemonError:
                    pass
        err = (results[bad[0]][1].strip().splitlines() or ["see its daemon.log"])[-1]
        fail(f"array member {bad[0]} did not start: {err}")
    write_manifest(array_dir, {"topology": topo.name if topo_name is None else topo_name,
                               "drives": drives_out})
    click.echo(f"csdemu array in {array_dir}: {n} drives, topology {topo.name}")
    for d in drives_out:
        click.echo(f"  drive {d['index']}: pid {d['pid']}, {d['profile'] or 'stored/default profile'}, "
                   f"socket {d['socket']}")


@array.command()
@DIR_OPT
@click.option("--json", "as_json", is_flag=True)
@timeout_option("a member that does not answer")
def status(array_dir, as_json, timeout):
    """Each member: running or not, pid, uptime, profile, clients."""
    from csdemu.host.array import default_array_dir, read_manifest
    from csdemu.transport.control import request
    from csdemu.transport.errors import DaemonError
    array_dir = os.path.abspath(array_dir or default_array_dir())
    man = read_manifest(array_dir)
    rows = []
    for d in man["drives"]:
        row = {"index": d["index"], "socket": d["socket"], "data_dir": d["data_dir"]}
        try:
            st = request(d["socket"], "status", timeout=timeout or 10.0)
            row.update(running=True, pid=st.get("pid"), uptime_s=st.get("uptime_s"),
                       profile=st.get("profile"), clients=len(st.get("clients", [])),
                       commands=st.get("commands"))
        except DaemonError as exc:
            row.update(running=False, error=str(exc))
        rows.append(row)
    out = {"dir": array_dir, "topology": man.get("topology"), "drives": rows}
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        up = sum(r["running"] for r in rows)
        click.echo(f"array {array_dir}: {up} of {len(rows)} drives running, "
                   f"topology {man.get('topology') or 'instinfer-host'}")
        for r in rows:
            if r["running"]:
                click.echo(f"  drive {r['index']}: pid {r['pid']}  uptime {r['uptime_s']:.1f}s  "
                           f"profile {r['profile']}  clients {r['clients']}  commands {r['commands']}")
            else:
                click.echo(f"  drive {r['index']}: down ({r['error']})")
    if not all(r["running"] for r in rows):
        sys.exit(1)


@array.command()
@DIR_OPT
def stop(array_dir):
    """Stop every member (in-flight commands are drained first)."""
    from csdemu.host.array import default_array_dir, read_manifest
    from csdemu.transport.control import request
    from csdemu.transport.errors import DaemonError
    array_dir = os.path.abspath(array_dir or default_array_dir())
    man = read_manifest(array_dir)
    pids = []
    for d in man["drives"]:
        try:
            pids.append(request(d["socket"], "status").get("pid"))
            request(d["socket"], "stop")
        except DaemonError:
            continue                          # not running: nothing to stop
    wait_exited(pids)
    click.echo(f"csdemu array in {array_dir}: stopped {len(pids)} of {len(man['drives'])} drives")


@array.command(context_settings={"ignore_unknown_options": True,
                                 "allow_interspersed_args": False})
@DIR_OPT
@click.argument("index", type=int)
@click.argument("args", nargs=-1, type=click.UNPROCESSED, required=True)
@click.pass_context
def member(ctx, array_dir, index, args):
    """Run a single-drive command on member INDEX, e.g. `csdemu array member 1 status`."""
    from csdemu.host.array import default_array_dir, read_manifest
    man = read_manifest(os.path.abspath(array_dir or default_array_dir()))
    if not 0 <= index < len(man["drives"]):
        raise click.BadParameter(f"the array has drives 0..{len(man['drives']) - 1}, not {index}",
                                 param_hint="INDEX")
    d = man["drives"][index]
    # The single-drive commands default to these (csdemu.transport.paths).
    os.environ["CSDEMU_SOCKET"], os.environ["CSDEMU_DATA_DIR"] = d["socket"], d["data_dir"]
    root = ctx.find_root()
    name, cmd, rest = root.command.resolve_command(root, list(args))
    if cmd is ctx.parent.command:
        fail("member: runs single-drive commands, not `array`")
    with cmd.make_context(name, rest, parent=root) as sub:
        return cmd.invoke(sub)
