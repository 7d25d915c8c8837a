"""How a verb prints what the drive returned, as nvme-cli does: `-o/--output-format
normal|json|binary` (with `--json` and `-b/--raw-binary` as its short forms),
the key/value list of the normal format and nvme-cli's hex dump of raw data."""
from __future__ import annotations

import functools
import json
import sys

import click

FORMATS = ("normal", "json", "binary")


class OutputFormat(click.ParamType):
    """normal, json or binary. `raw` says whether the verb has raw bytes to
    print: without them binary is refused while parsing (a usage error, exit 2).
    `opcode_too` also takes an integer: the opcode, spelt as nvme-cli 1.x's
    passthru spelt it (`-o 0x80`), which this option's short name took over."""
    name = "normal|json|binary"

    def __init__(self, raw: bool = True, opcode_too: bool = False):
        self.raw, self.opcode_too = raw, opcode_too
        self.name = "normal|json|binary" if raw else "normal|json"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        if value.lower() in FORMATS:
            if value.lower() == "binary" and not self.raw:
                verb = ctx.info_name if ctx else "this verb"
                self.fail(f"binary: {verb} has no raw data to print; use normal or json",
                          param, ctx)
            return value.lower()
        if self.opcode_too:
            try:
                return int(value, 0)
            except ValueError:
                pass
        either = ", or an opcode (nvme-cli 1.x)" if self.opcode_too else ""
        self.fail(f"{value!r} is not normal, json or binary{either}", param, ctx)


def resolve(output_format, as_json: bool, raw_binary: bool) -> str:
    """The one format asked for by -o, --json and -b, or a usage error naming
    the options that disagree."""
    asked = {}
    if output_format is not None:
        asked["-o/--output-format " + output_format] = output_format
    if as_json:
        asked["--json"] = "json"
    if raw_binary:
        asked["-b/--raw-binary"] = "binary"
    if len(set(asked.values())) > 1:
        raise click.UsageError(f"{' and '.join(asked)} ask for different output formats; give one")
    return next(iter(asked.values()), "normal")


def output_options(raw: bool, opcode_too: bool = False):
    """Decorate a verb with -o/--output-format, --json and (if it has raw bytes)
    -b/--raw-binary; the verb receives the format as `fmt`, and with
    `opcode_too` an opcode given as `-o NUMBER` as `opcode_from_o` (else None)."""
    def decorate(verb):
        @functools.wraps(verb)
        def wrapper(*args, output_format=None, as_json=False, raw_binary=False, **kw):
            if opcode_too:      # -o may be given twice here: once a format, once an opcode
                given = output_format or ()
                opcodes = [v for v in given if isinstance(v, int)]
                formats = [v for v in given if not isinstance(v, int)]
                if len(opcodes) > 1 or len(formats) > 1:
                    raise click.UsageError("-o/--output-format is given more than once")
                kw["opcode_from_o"] = opcodes[0] if opcodes else None
                output_format = formats[0] if formats else None
            return verb(*args, fmt=resolve(output_format, as_json, raw_binary), **kw)
        if raw:
            wrapper = click.option("-b", "--raw-binary", is_flag=True,
                                   help="same as -o binary")(wrapper)
        wrapper = click.option("--json", "as_json", is_flag=True, help="same as -o json")(wrapper)
        return click.option(
            "-o", "--output-format", "output_format", default=None,
            type=OutputFormat(raw, opcode_too), multiple=opcode_too,
            help=("normal (text), json (one document) or binary (the raw bytes)" if raw else
                  "normal (text) or json (one document); no raw data here, so no binary")
                 + " [default: normal]")(wrapper)
    return decorate


def with_output_format(command: click.Command) -> click.Command:
    """`command`, which takes `--json` (as_json), with -o/--output-format
    normal|json too; it has no raw data, so binary is a usage error. A command
    that already has the option is returned as it is."""
    if any(p.name == "output_format" for p in command.params):
        return command
    inner = command.callback

    def callback(output_format=None, as_json=False, **kw):
        return inner(as_json=resolve(output_format, as_json, False) == "json", **kw)

    fmt_opt = click.Option(["-o", "--output-format", "output_format"], default=None,
                           type=OutputFormat(raw=False),
                           help="normal (text) or json (one document) [default: normal]")
    return click.Command(command.name, params=[*command.params, fmt_opt], callback=callback,
                         help=command.help, short_help=command.short_help,
                         context_settings=command.context_settings)


def emit(fmt: str, decoded, raw: bytes | None = None, normal=None) -> None:
    """Print `decoded` as JSON, `raw` as bytes, or (normal) call `normal()`
    or list `decoded` key by key."""
    if fmt == "json":
        click.echo(json.dumps(decoded, indent=2))
    elif fmt == "binary":
        write_binary(raw)
    elif normal is not None:
        normal()
    else:
        print_dict(decoded)


def write_binary(raw: bytes) -> None:
    out = click.get_binary_stream("stdout")
    out.write(bytes(raw))
    out.flush()


def print_dict(d: dict, indent: int = 0) -> None:
    for k, v in d.items():
        if isinstance(v, dict):
            click.echo(" " * indent + f"{k}:")
            print_dict(v, indent + 2)
        else:
            click.echo(" " * indent + f"{k:<28} {v}")


def hexdump(raw: bytes) -> str:
    """Bytes as nvme-cli and `hexdump -C` show them: offset, 16 bytes in hex,
    the printable ones as text; a run of identical lines is one "*"."""
    lines, last, starred = ["       0  1  2  3  4  5  6  7  8  9  a  b  c  d  e  f"], None, False
    for off in range(0, len(raw), 16):
        row = bytes(raw[off:off + 16])
        if row == last and off + 16 < len(raw):
            if not starred:
                lines.append("*")
                starred = True
            continue
        last, starred = row, False
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"{off:04x}: {' '.join(f'{b:02x}' for b in row):<47} \"{text}\"")
    return "\n".join(lines)


def stderr_line(msg: str) -> None:
    """A line for the person at the terminal while stdout carries data."""
    click.echo(msg, err=True)
    sys.stderr.flush()
