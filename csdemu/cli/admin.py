"""nvme-cli's verbs: identify, smart, log, passthru."""
from __future__ import annotations

import json
import sys

import click

from csdemu.cli.options import SOCKET_OPT, connect, fail, timeout_option

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


def _print_dict(d: dict, indent=0):
    for k, v in d.items():
        if isinstance(v, dict):
            click.echo(" " * indent + f"{k}:")
            _print_dict(v, indent + 2)
        else:
            click.echo(" " * indent + f"{k:<28} {v}")


@click.command()
@SOCKET_OPT
@click.option("--namespace", "-n", "nsid", type=int, default=None, help="identify this namespace")
@click.option("--json", "as_json", is_flag=True)
def identify(socket_path, nsid, as_json):
    """Identify controller (or namespace with -n)."""
    with connect(socket_path) as dev:
        d = dev.identify_ns(nsid) if nsid is not None else dev.identify()
    click.echo(json.dumps(d, indent=2)) if as_json else _print_dict(d)


@click.command()
@SOCKET_OPT
@click.option("--json", "as_json", is_flag=True)
def smart(socket_path, as_json):
    """SMART / health log (02h)."""
    with connect(socket_path) as dev:
        d = dev.smart()
    click.echo(json.dumps(d, indent=2)) if as_json else _print_dict(d)


@click.command()
@SOCKET_OPT
@click.argument("lid", default="flash")
@click.option("--json", "as_json", is_flag=True)
@click.option("--length", default=4096, show_default=True, type=click.IntRange(4, 1 << 20),
              help="bytes to read (whole dwords)")
def log(socket_path, lid, as_json, length):
    """Get Log Page: LID is flash (C0h), engine (C1h), smart (02h), error (01h)
    or a number (shown as a hex dump)."""
    from csdemu.transport.errors import NVMeError
    names = {"flash": 0xC0, "engine": 0xC1, "smart": 0x02, "error": 0x01}
    try:
        lid_num = names[lid] if lid in names else int(lid, 0)
    except ValueError:
        fail(f"LID {lid!r} is not flash, engine, smart, error or a number")
    raw = None
    with connect(socket_path) as dev:
        try:
            if lid_num == 0xC0:
                d = dev.flash_log()
            elif lid_num == 0xC1:
                d = dev.engine_log()
            elif lid_num == 0x02:
                d = dev.smart()
            elif lid_num == 0x01:
                d = _error_log(dev.log_page(lid_num, length))
            else:
                raw = dev.log_page(lid_num, length)
                d = {"lid": lid_num, "hex": raw.hex()}
        except NVMeError as exc:
            fail(str(exc))
    if as_json:
        click.echo(json.dumps(d, indent=2))
    elif raw is not None:
        click.echo(f"Log page {lid_num:#04x}, {len(raw)} bytes:")
        click.echo(hexdump(raw))
    else:
        _print_dict(d)


def _error_log(raw) -> dict:
    """The Error Information log's entries, newest first, as nvme error-log lists them."""
    from nvme_cmds import errlog
    from nvme_cmds.status import decode_status_field, status_name
    out = {}
    for i, e in enumerate(errlog.entries(raw)):
        loc = int(e["param_loc"])
        where = errlog.split_location(loc)
        out[f"entry {i}"] = {
            "error_count": int(e["error_count"]), "sqid": int(e["sqid"]), "cid": int(e["cid"]),
            "status": status_name(decode_status_field(int(e["status"]))[0]),
            "parm_err_loc": "none" if where is None else f"byte {where[0]} bit {where[1]}",
            "nsid": int(e["nsid"]), "cs": hex(int(e["csi"]))}
    return out or {"entries": 0}


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


@click.command()
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
@timeout_option("the command (it is then aborted)")
def passthru(socket_path, opcode, nsid, cdw10, cdw11, cdw12, cdw13, cdw14, cdw15,
             data_len, input_file, admin, as_json, timeout):
    """Send a raw command (nvme io-passthru / admin-passthru)."""
    from csdemu.transport.errors import NVMeError
    data = input_file.read() if input_file else None
    with connect(socket_path, timeout) as dev:
        try:
            c = dev.passthru(opcode, nsid, cdw10, cdw11, cdw12, cdw13, cdw14, cdw15,
                             data=data, read_len=data_len, admin=admin, timeout=timeout)
        except (TimeoutError, NVMeError) as exc:
            fail(f"{exc}")
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
            click.echo(hexdump(c.data))
    if not c.ok:
        sys.exit(1)


# ------------------------------------------------------------ nvme-cli's names
@click.command("id-ctrl")
@SOCKET_OPT
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def id_ctrl(ctx, socket_path, as_json):
    """nvme id-ctrl: Identify Controller (as `identify`)."""
    ctx.invoke(identify, socket_path=socket_path, nsid=None, as_json=as_json)


@click.command("id-ns")
@SOCKET_OPT
@click.option("--namespace-id", "-n", "nsid", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def id_ns(ctx, socket_path, nsid, as_json):
    """nvme id-ns: Identify Namespace (as `identify -n`)."""
    ctx.invoke(identify, socket_path=socket_path, nsid=nsid, as_json=as_json)


@click.command("smart-log")
@SOCKET_OPT
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def smart_log(ctx, socket_path, as_json):
    """nvme smart-log: SMART / health log (as `smart`)."""
    ctx.invoke(smart, socket_path=socket_path, as_json=as_json)


@click.command("error-log")
@SOCKET_OPT
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def error_log(ctx, socket_path, as_json):
    """nvme error-log: this client's Error Information log (as `log error`)."""
    ctx.invoke(log, socket_path=socket_path, lid="error", as_json=as_json, length=4096)


@click.command("get-log")
@SOCKET_OPT
@click.option("--log-id", "-i", required=True, type=_int, help="LID")
@click.option("--log-len", "-l", default=4096, show_default=True, type=click.IntRange(4, 1 << 20))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def get_log(ctx, socket_path, log_id, log_len, as_json):
    """nvme get-log: any log page by LID (as `log`)."""
    ctx.invoke(log, socket_path=socket_path, lid=str(log_id), as_json=as_json, length=log_len)


def _passthru_alias(name: str, admin: bool):
    @click.command(name, params=[p for p in passthru.params if p.name != "admin"],
                   help=f"nvme {name} (as `passthru{' --admin' if admin else ''}`).")
    @click.pass_context
    def alias(ctx, **kw):
        ctx.invoke(passthru, admin=admin, **kw)
    return alias


io_passthru = _passthru_alias("io-passthru", False)
admin_passthru = _passthru_alias("admin-passthru", True)
NVME_CLI_ALIASES = (id_ctrl, id_ns, smart_log, error_log, get_log, io_passthru, admin_passthru)
