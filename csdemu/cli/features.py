"""`csdemu get-feature`, as nvme get-feature: one feature's value (or every
feature's, without -f), with its fields decoded as `nvme get-feature -H` does."""
from __future__ import annotations

import click

from csdemu.cli.options import SOCKET_OPT, connect
from csdemu.cli.output import emit, output_options
from nvme_cmds.features import (SEL_CAPABILITIES, SEL_CURRENT, SEL_DEFAULT, SEL_SAVED, FeatureId,
                                TimingMode)

SELECTS = {"current": SEL_CURRENT, "default": SEL_DEFAULT, "saved": SEL_SAVED,
           "supported": SEL_CAPABILITIES}

# (field, first bit, width, added to the raw value): the fields of Dword 0 that
# the NVMe base specification gives each feature; a 0-based count gets 1 added.
FIELDS = {
    FeatureId.ARBITRATION: [("arbitration_burst", 0, 3, 0), ("low_priority_weight", 8, 8, 0),
                            ("medium_priority_weight", 16, 8, 0),
                            ("high_priority_weight", 24, 8, 0)],
    FeatureId.POWER_MANAGEMENT: [("power_state", 0, 5, 0), ("workload_hint", 5, 3, 0)],
    FeatureId.VOLATILE_WRITE_CACHE: [("write_cache_enabled", 0, 1, 0)],
    FeatureId.NUMBER_OF_QUEUES: [("io_submission_queues", 0, 16, 1),
                                 ("io_completion_queues", 16, 16, 1)],
    FeatureId.INTERRUPT_COALESCING: [("aggregation_threshold", 0, 8, 1),
                                     ("aggregation_time_100us", 8, 8, 0)],
    FeatureId.FAULT_INJECTION: [("read_fail_ppm", 0, 32, 0)],
}
# Get Features with SEL=011b: what can be done with the feature.
CAPABILITY_BITS = [("saveable", 0), ("namespace_specific", 1), ("changeable", 2)]


def decode(fid: int, sel: int, value: int) -> dict:
    """Dword 0 of Get Features, field by field."""
    if sel == SEL_CAPABILITIES:
        return {name: bool(value >> bit & 1) for name, bit in CAPABILITY_BITS}
    if fid == FeatureId.TIMING_MODE:
        try:
            return {"mode": TimingMode(value).name.lower()}
        except ValueError:
            return {"mode": f"unknown ({value})"}
    return {name: (value >> first & ((1 << width) - 1)) + plus
            for name, first, width, plus in FIELDS.get(fid, [])}


class FeatureParam(click.ParamType):
    """A FID as a number (any base) or a name: timing-mode, number-of-queues, ..."""
    name = "FID"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        key = value.upper().replace("-", "_")
        if key in FeatureId.__members__:
            return int(FeatureId[key])
        try:
            return int(value, 0)
        except ValueError:
            names = ", ".join(f.name.lower().replace("_", "-") for f in FeatureId)
            self.fail(f"{value!r} is not a number or one of {names}", param, ctx)


def _name(fid: int) -> str:
    try:
        return FeatureId(fid).name.lower().replace("_", "-")
    except ValueError:
        return "unknown"


@click.command("get-feature")
@SOCKET_OPT
@click.option("--feature-id", "-f", "fid", type=FeatureParam(), default=None,
              help="FID or name [default: every feature the drive has]")
@click.option("--sel", "-s", type=click.Choice(list(SELECTS)), default="current",
              show_default=True, help="which value: current, default, saved, or supported "
                                      "(what can be done with it)")
@output_options(raw=False)
def get_feature(socket_path, fid, sel, fmt):
    """nvme get-feature: a feature's value and its fields (Get Features, 0Ah)."""
    fids = [int(f) for f in FeatureId] if fid is None else [fid]
    rows = []
    with connect(socket_path) as dev:
        for f in fids:
            value = dev.get_feature(f, SELECTS[sel])
            rows.append({"fid": f, "name": _name(f), "sel": sel, "value": value,
                         "fields": decode(f, SELECTS[sel], value)})

    def normal():
        for r in rows:
            click.echo(f"get-feature: {r['fid']:#04x} ({r['name']}), {sel} value: "
                       f"{r['value']:#010x}")
            for k, v in r["fields"].items():
                click.echo(f"  {k:<28} {v}")
    emit(fmt, rows[0] if fid is not None else rows, normal=normal)
