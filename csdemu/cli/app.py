"""The `csdemu` command group. Every verb is registered here, by name, from
the module that defines it; the verb modules import only csdemu.cli.options,
never this module."""
from __future__ import annotations

import sys

import click

from csdemu.cli import (admin, array, bench, daemon, demo, features, generate, nbd, reproduce,
                        stress, trace, warmup)
from csdemu.cli.output import with_output_format
from csdemu.drive.profile_rules import ProfileError
from csdemu.transport.errors import DaemonError, NVMeError


class OneLineErrors(click.Group):
    """Every bad argument or failure ends in one line on stderr: `csdemu: error: ...`."""

    def main(self, args=None, prog_name=None, **kw):
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **kw)
        except click.exceptions.Abort:
            click.echo("csdemu: aborted", err=True)
            sys.exit(1)
        except (ProfileError, DaemonError, NVMeError, TimeoutError) as exc:
            # wherever a profile, a daemon or a command that may fail is needed:
            # a failed command is exit status 1, a bad profile a usage error (2)
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


for command in (daemon.start, daemon.stop, with_output_format(daemon.status), daemon.profiles,
                admin.identify, admin.smart, admin.log, admin.passthru, features.get_feature,
                array.array, bench.bench, generate.generate, generate.eval_sparse, nbd.nbd,
                reproduce.reproduce, stress.stress, trace.trace, demo.demo, warmup.warmup,
                *admin.NVME_CLI_ALIASES):
    main.add_command(command)
