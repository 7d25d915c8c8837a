"""`csdemu stress JOBFILE`: load the KV vendor commands from an INI job file."""
from __future__ import annotations

import json
import os

import click

from csdemu.cli.options import SOCKET_OPT, daemon_for, trace_option


class _Bar:
    """A progress bar per job (tqdm, on stderr): commands when the job has
    `steps`, seconds of `runtime` otherwise."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar, self.job = enabled, None, None

    def __call__(self, job, new, done, total, elapsed):
        if not self.enabled:
            return
        from tqdm import tqdm
        if self.job is not job:
            self.close()
            self.job = job
            if total:
                self.bar = tqdm(total=total, desc=job["name"], unit="cmd", leave=True,
                                dynamic_ncols=True)
            else:
                self.bar = tqdm(total=round(job["runtime"], 1), desc=job["name"], unit="s",
                                leave=True, dynamic_ncols=True,
                                bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f}s {postfix}")
        if total:
            self.bar.update(new)
        else:
            self.bar.n = round(min(elapsed, job["runtime"]), 1)
            self.bar.set_postfix_str(f"{done} cmds, {done / max(elapsed, 1e-9):.0f} cmd/s",
                                     refresh=False)
            self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@click.command()
@SOCKET_OPT
@click.argument("jobfile", required=False, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print the fio-shaped JSON instead of text")
@click.option("--output", "-o", default=None, metavar="FILE", help="also write the JSON here")
@click.option("--profile", default=None, metavar="NAME",
              help="profile of the temporary drive started when no daemon is running")
@click.option("--progress/--no-progress", default=None,
              help="progress bar on stderr [default: when stderr is a terminal]")
@click.option("--keys", "list_keys", is_flag=True, help="list the job-file keys and exit")
@trace_option("the drive started for this run")
def stress(socket_path, jobfile, as_json, output, profile, progress, list_keys, trace):
    """Stress the KV vendor commands (append, attend, reclaim) from an INI job file.

    Sections are jobs (a [global] section gives defaults), as in fio; see
    tools/stress/*.ini and `--keys`. Prints IOPS, bandwidth and latency
    percentiles per command kind (host-observed and modeled device time),
    flash bytes read per channel, and the drive's SMART / flash-log deltas."""
    import sys
    from csdemu.stress.run import format_result, run_stress
    from csdemu.stress.jobs import KEYS, JobFileError, parse_job_file
    if list_keys:
        for k, (conv, default, help_) in KEYS.items():
            click.echo(f"{k:<14} {help_} [{conv.what}; default {default!r}]")
        return
    if not jobfile:
        raise click.UsageError("missing argument JOBFILE")
    try:
        jobs = parse_job_file(jobfile)
    except JobFileError as exc:
        raise click.ClickException(str(exc)) from None
    show = sys.stderr.isatty() if progress is None else progress
    bar = _Bar(show)
    try:
        with daemon_for(socket_path, profile, trace=trace) as path:
            res = run_stress(path, jobs, progress=bar, jobfile=os.path.abspath(jobfile))
    except RuntimeError as exc:
        raise click.ClickException(" ".join(str(exc).split())) from None
    finally:
        bar.close()
    text = json.dumps(res, indent=2)
    if output:
        os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
        with open(output, "w") as f:
            f.write(text + "\n")
    click.echo(text if as_json else format_result(res))
    errs = [j["error_msg"] for j in res["jobs"] if j["error"]]
    if errs:
        raise click.ClickException(errs[0])
