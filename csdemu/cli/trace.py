"""`csdemu trace summary FILE`: read a trace written by `--trace`."""
from __future__ import annotations

import json

import click


@click.group()
def trace():
    """Read a drive's modeled timeline written with `--trace FILE`."""


@trace.command("summary")
@click.argument("path", metavar="FILE", type=click.Path(exists=True, dir_okay=False))
@click.option("--top", default=8, show_default=True, type=click.IntRange(1, 10_000),
              help="tracks listed per group, segments shown at each end of the path")
@click.option("--cmd", "tag", default=None, type=int, metavar="TAG",
              help="the critical path of this command (args.cmd) instead of the longest")
@click.option("--json", "as_json", is_flag=True)
def summary(path, top, tag, as_json):
    """Each resource's utilisation, and the critical path of the longest command."""
    from csdemu.drive import trace_summary as ts
    try:
        tr = ts.load(path)
    except (ValueError, KeyError, TypeError) as exc:
        raise click.ClickException(f"{path}: not a csdemu trace ({exc})") from None
    if tag is not None and tag not in tr.commands:
        raise click.BadParameter(f"no command {tag} in {path}", param_hint="--cmd")
    if as_json:
        t = tag if tag is not None else ts.longest_command(tr)
        lo, hi = ts.span(tr)
        click.echo(json.dumps({"span_ns": hi - lo, "commands": len(tr.commands),
                               "intervals": int(len(tr.iv)), "meta": tr.meta,
                               "utilisation": ts.utilisation(tr), "cmd": t,
                               "command": tr.commands.get(t),
                               "critical_path": ts.critical_path(tr, t) if t is not None else []},
                              indent=2))
        return
    click.echo(ts.format_summary(tr, top, tag))
