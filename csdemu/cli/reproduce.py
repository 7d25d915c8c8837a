"""`csdemu reproduce`: the system model's answer to "what decode throughput
would this host, these drives and this model give, under each system?"."""
from __future__ import annotations

import click

from csdemu.cli.options import int_list


def _ratio(ctx, param, value):
    if value is None:
        return value
    if not 0.0 < value <= 1.0:
        raise click.BadParameter(f"must be in (0, 1], got {value}")
    return value


@click.command()
@click.option("--model", default="opt-13b", show_default=True, metavar="NAME|config.json",
              help="built-in opt-13b, opt-30b, llama-2-13b, or a transformers config.json")
@click.option("--gpus", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--csds", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--ssds", default=1, show_default=True, type=click.IntRange(1, 64),
              help="SSDs striped for FlexGen's KV (and ZeRO-Inference's swap)")
@click.option("--input", "input_len", default=1024, show_default=True, type=click.IntRange(1, 1 << 20))
@click.option("--output", "output_len", default=1024, show_default=True, type=click.IntRange(1, 1 << 20))
@click.option("--batch", "batches", default="1,4,8,16,32,64,128,256", show_default=True,
              callback=int_list, metavar="LIST")
@click.option("--sparse", default=0.125, show_default=True, type=float, callback=_ratio,
              metavar="RATIO", help="SparQ/SparF compression r/d = k/s")
@click.option("--profile", default="instinfer", show_default=True, metavar="P",
              help="CSD profile (see `csdemu profiles`) or a .toml path")
@click.option("--gpu", "gpu_hw", default=None, metavar="NAME|TOML", help="GPU profile [a6000]")
@click.option("--host", "host_hw", default=None, metavar="NAME|TOML", help="host profile [xeon-ddr4-96g]")
@click.option("--ssd", "ssd_hw", default=None, metavar="NAME|TOML", help="SSD profile [980pro]")
@click.option("--flexgen-path", "flexgen_hw", default=None, metavar="NAME|TOML",
              help="FlexGen's measured disk-path profile [flexgen]")
@click.option("--topology", default=None, metavar="NAME|TOML",
              help="host PCIe topology the CSDs share [instinfer-host]")
@click.option("--channels", default=None, type=click.IntRange(1, 64), help="what-if: CSD flash channels")
@click.option("--channel-gbps", default=None, type=click.FloatRange(0.001, 1000.0),
              help="what-if: CSD bandwidth per channel, GB/s")
@click.option("--ways", default=None, type=click.IntRange(1, 255), help="what-if: LUNs per channel")
@click.option("--link-gen", default=None, type=click.IntRange(1, 6), help="what-if: CSD PCIe generation")
@click.option("--link-width", default=None, type=click.Choice(["1", "2", "4", "8", "16"]),
              help="what-if: CSD PCIe lanes")
@click.option("--system", "systems", multiple=True,
              type=click.Choice(["flexgen", "flexgen-sparq", "deepspeed", "instinfer", "instinfer-sparf"]),
              help="only these systems (repeatable)")
@click.option("--png", default="throughput.png", show_default=True, metavar="PATH",
              help="figure path ('' for none)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of the table")
def reproduce(model, gpus, csds, ssds, input_len, output_len, batches, sparse, profile, gpu_hw,
              host_hw, ssd_hw, flexgen_hw, topology, channels, channel_gbps, ways, link_gen, link_width, systems, png,
              as_json):
    """Model decode throughput of FlexGen, ZeRO-Inference and InstInfer on this hardware."""
    from csdemu.drive.profile import ProfileError
    from csdemu.sysmodel import HardwareError, ModelError, reproduce as run
    from csdemu.sysmodel import SYSTEMS
    from csdemu.sysmodel.hardware import pcie_gbps
    from csdemu.sysmodel.report import format_table, plot_png, to_json

    from csdemu.topology import TopologyError, load_topology
    try:
        topo = load_topology(topology)
    except TopologyError as e:
        raise click.BadParameter(str(e), param_hint="--topology")
    try:
        topo.behind_switch(csds)
    except TopologyError as e:
        raise click.BadParameter(str(e), param_hint="--csds")
    ov = {}
    if channels is not None:
        ov["geometry.channels"] = channels
    if ways is not None:
        ov["geometry.ways"] = ways
    if channel_gbps is not None:
        ov["timing.channel_mbps"] = int(round(channel_gbps * 1000))
    if link_gen is not None or link_width is not None:
        try:
            ov["pcie.bandwidth_mbps"] = int(round(1000 * pcie_gbps(link_gen or 4, int(link_width or 4))))
        except HardwareError as e:
            raise click.ClickException(str(e))
    try:
        rows, params = run(model=model, gpus=gpus, csds=csds, ssds=ssds, input_len=input_len,
                           output_len=output_len, batches=batches, sparse=sparse, profile=profile,
                           overrides=ov, gpu=gpu_hw, host=host_hw, ssd=ssd_hw,
                           systems=tuple(systems) or SYSTEMS, flexgen=flexgen_hw,
                           topology=topology)
    except (ModelError, HardwareError, ProfileError, ValueError) as e:
        raise click.ClickException(" ".join(str(e).split()))
    if png:
        try:
            plot_png(rows, params, png)
            params["png"] = png
        except OSError as e:
            raise click.ClickException(f"cannot write {png}: {e.strerror or e}")
    click.echo(to_json(rows, params) if as_json else format_table(rows, params))
