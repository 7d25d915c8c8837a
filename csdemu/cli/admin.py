"""nvme-cli's verbs: identify, smart, log, passthru; each prints as -o says
(csdemu.cli.output)."""
from __future__ import annotations

import sys

import click

from csdemu.cli.options import SOCKET_OPT, connect, fail, timeout_option
from csdemu.cli.output import emit, hexdump, output_options, write_binary

IDENTIFY_BYTES = 4096
LOG_NAMES = {"flash": 0xC0, "engine": 0xC1, "smart": 0x02, "error": 0x01}


def _identify_raw(dev, nsid: int | None) -> bytes:
    """The 4 KiB Identify structure (controller, or namespace `nsid`), as the
    drive returned it."""
    from csdemu.host.error_log import failed_field
    from csdemu.transport.errors import NVMeError
    from nvme_cmds.identify import CNS
    from nvme_cmds.opcodes import AdminOpcode
    cns = CNS.CONTROLLER if nsid is None else CNS.NAMESPACE
    c = dev.passthru(AdminOpcode.IDENTIFY, nsid or 0, cdw10=cns, read_len=IDENTIFY_BYTES,
                     admin=True)
    if not c.ok:
        raise NVMeError(c.status, "identify" if nsid is None else "identify namespace",
                        failed_field(dev, c, AdminOpcode.IDENTIFY, True))
    return c.data


@click.command()
@SOCKET_OPT
@click.option("--namespace", "-n", "nsid", type=int, default=None, help="identify this namespace")
@output_options(raw=True)
def identify(socket_path, nsid, fmt):
    """Identify controller (or namespace with -n)."""
    import numpy as np
    from nvme_cmds.identify import ID_CTRL, ID_NS, to_dict
    with connect(socket_path) as dev:
        raw = _identify_raw(dev, nsid)
    layout = ID_CTRL if nsid is None else ID_NS
    emit(fmt, to_dict(np.frombuffer(raw, layout, count=1)[0]), raw)


@click.command()
@SOCKET_OPT
@output_options(raw=True)
def smart(socket_path, fmt):
    """SMART / health log (02h)."""
    from nvme_cmds.logs import SMART_LOG
    with connect(socket_path) as dev:
        if fmt == "binary":
            write_binary(dev.log_page(0x02, SMART_LOG.itemsize))
            return
        d = dev.smart()
    emit(fmt, d)


def _page_bytes(lid: int, length: int | None) -> int:
    """How much of log page `lid` to read raw: `length` if given, else the
    page's own size (4096 for pages csdemu has no layout of)."""
    from nvme_cmds.logs import ENGINE_LOG, FLASH_LOG, SMART_LOG
    sizes = {0x02: SMART_LOG.itemsize, 0xC0: FLASH_LOG.itemsize, 0xC1: ENGINE_LOG.itemsize}
    return length or sizes.get(lid, 4096)


@click.command()
@SOCKET_OPT
@click.argument("lid", default="flash")
@click.option("--length", default=None, type=click.IntRange(4, 1 << 20),
              help="bytes to read (whole dwords) [default: the page's size, else 4096]")
@output_options(raw=True)
def log(socket_path, lid, length, fmt):
    """Get Log Page: LID is flash (C0h), engine (C1h), smart (02h), error (01h)
    or a number (shown as a hex dump)."""
    from csdemu.transport.errors import NVMeError
    try:
        lid_num = LOG_NAMES[lid] if lid in LOG_NAMES else int(lid, 0)
    except ValueError:
        fail(f"LID {lid!r} is not flash, engine, smart, error or a number")
    raw = None
    with connect(socket_path) as dev:
        try:
            if fmt == "binary":
                write_binary(dev.log_page(lid_num, _page_bytes(lid_num, length)))
                return
            if lid_num == 0xC0:
                d = dev.flash_log()
            elif lid_num == 0xC1:
                d = dev.engine_log()
            elif lid_num == 0x02:
                d = dev.smart()
            elif lid_num == 0x01:
                d = _error_log(dev.log_page(lid_num, _page_bytes(lid_num, length)))
            else:
                raw = dev.log_page(lid_num, _page_bytes(lid_num, length))
                d = {"lid": lid_num, "hex": raw.hex()}
        except NVMeError as exc:
            fail(str(exc))

    def hex_page():
        click.echo(f"Log page {lid_num:#04x}, {len(raw)} bytes:")
        click.echo(hexdump(raw))
    emit(fmt, d, normal=hex_page if raw is not None else None)


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
@click.option("--opcode", "-O", type=_int, default=None,
              help="the opcode (required; nvme-cli 1.x's `-o OPCODE` is still taken)")
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
@output_options(raw=True, opcode_too=True)
@timeout_option("the command (it is then aborted)")
def passthru(socket_path, opcode, nsid, cdw10, cdw11, cdw12, cdw13, cdw14, cdw15,
             data_len, input_file, admin, fmt, opcode_from_o, timeout):
    """Send a raw command (nvme io-passthru / admin-passthru). -o binary
    prints the data read back (-l) and nothing else."""
    from csdemu.transport.errors import NVMeError
    if opcode is not None and opcode_from_o is not None:
        raise click.UsageError("give the opcode once: -O/--opcode or -o, not both")
    opcode = opcode if opcode is not None else opcode_from_o
    if opcode is None:
        raise click.UsageError("Missing option '-O' / '--opcode'.")
    if fmt == "binary" and not data_len:
        raise click.UsageError("-o/--output-format binary prints the data read back; "
                               "give -l/--data-len")
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
    said = (f"{'NVMe status' if not c.ok else 'status'}: {c.status_name} "
            f"(SCT {c.sct:#x}, SC {c.sc:#04x}) result {c.result:#x} device {c.device_ns} ns")

    def normal():
        click.echo(said)
        if data_len:
            click.echo(hexdump(c.data))
    if fmt == "binary" and not c.ok:
        click.echo(said, err=True)      # no data came back: stdout stays empty
    else:
        emit(fmt, out, c.data, normal)
    if not c.ok:
        sys.exit(1)


# ------------------------------------------------------------ nvme-cli's names
@click.command("id-ctrl")
@SOCKET_OPT
@output_options(raw=True)
@click.pass_context
def id_ctrl(ctx, socket_path, fmt):
    """nvme id-ctrl: Identify Controller (as `identify`)."""
    ctx.invoke(identify, socket_path=socket_path, nsid=None, output_format=fmt)


@click.command("id-ns")
@SOCKET_OPT
@click.option("--namespace-id", "-n", "nsid", type=int, default=1, show_default=True)
@output_options(raw=True)
@click.pass_context
def id_ns(ctx, socket_path, nsid, fmt):
    """nvme id-ns: Identify Namespace (as `identify -n`)."""
    ctx.invoke(identify, socket_path=socket_path, nsid=nsid, output_format=fmt)


@click.command("smart-log")
@SOCKET_OPT
@output_options(raw=True)
@click.pass_context
def smart_log(ctx, socket_path, fmt):
    """nvme smart-log: SMART / health log (as `smart`)."""
    ctx.invoke(smart, socket_path=socket_path, output_format=fmt)


@click.command("error-log")
@SOCKET_OPT
@output_options(raw=True)
@click.pass_context
def error_log(ctx, socket_path, fmt):
    """nvme error-log: this client's Error Information log (as `log error`)."""
    ctx.invoke(log, socket_path=socket_path, lid="error", output_format=fmt, length=None)


@click.command("get-log")
@SOCKET_OPT
@click.option("--log-id", "-i", required=True, type=_int, help="LID")
@click.option("--log-len", "-l", default=None, type=click.IntRange(4, 1 << 20),
              help="bytes to read [default: the page's size, else 4096]")
@output_options(raw=True)
@click.pass_context
def get_log(ctx, socket_path, log_id, log_len, fmt):
    """nvme get-log: any log page by LID (as `log`)."""
    ctx.invoke(log, socket_path=socket_path, lid=str(log_id), output_format=fmt, length=log_len)


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
