"""`csdemu reproduce`: the system model's answer to "what decode throughput
would this host, these drives and this model give, under each system?"."""
from __future__ import annotations

import click

from csdemu.cli.options import int_list

SYSTEM_KEYS = ("flexgen", "flexgen-gds", "flexgen-sparq", "deepspeed", "recomp", "instinfer",
               "instinfer-sparf")


def _ratio(ctx, param, value):
    if value is None:
        return value
    if not 0.0 < value <= 1.0:
        raise click.BadParameter(f"must be in (0, 1], got {value}")
    return value


@click.command()
@click.option("--model", default="opt-13b", show_default=True, metavar="NAME|config.json",
              help="built-in opt-13b, opt-30b, llama-2-13b, smollm2-135m, or a transformers config.json")
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
@click.option("--page-hit", "page_hit", default="auto", show_default=True,
              metavar="RATE|uniform|paper|measured|auto",
              help="SparF's pages sensed as a share of dense's: a rate, the uniform rule, the "
                   "paper's 'about half', csdemu's eval-sparse figure (SmolLM2); auto = paper for "
                   "the paper's models, measured for SmolLM2, else uniform")
@click.option("--profile", default="instinfer", show_default=True, metavar="P",
              help="CSD profile (see `csdemu profiles`) or a .toml path")
@click.option("--gpu", "gpu_hw", default=None, metavar="NAME|TOML", help="GPU profile [a6000]")
@click.option("--host", "host_hw", default=None, metavar="NAME|TOML", help="host profile [xeon-ddr4-96g]")
@click.option("--ssd", "ssd_hw", default=None, metavar="NAME|TOML", help="SSD profile [980pro]")
@click.option("--flexgen-path", "flexgen_hw", default=None, metavar="NAME|TOML",
              help="FlexGen's measured disk-path profile [flexgen]")
@click.option("--vllm", "vllm_hw", default=None, metavar="NAME|TOML",
              help="vLLM's engine settings for Recomp [vllm]")
@click.option("--topology", default=None, metavar="NAME|TOML",
              help="host PCIe topology the CSDs share [instinfer-host]")
@click.option("--channels", default=None, type=click.IntRange(1, 64), help="what-if: CSD flash channels")
@click.option("--channel-gbps", default=None, type=click.FloatRange(0.001, 1000.0),
              help="what-if: CSD bandwidth per channel, GB/s")
@click.option("--ways", default=None, type=click.IntRange(1, 255), help="what-if: LUNs per channel")
@click.option("--link-gen", default=None, type=click.IntRange(1, 6), help="what-if: CSD PCIe generation")
@click.option("--link-width", default=None, type=click.Choice(["1", "2", "4", "8", "16"]),
              help="what-if: CSD PCIe lanes")
@click.option("--csd-capacity", default=None, metavar="SIZE",
              help="what-if: CSD raw flash, bytes or e.g. 2T (the profile's device.capacity)")
@click.option("--system", "systems", multiple=True, type=click.Choice(SYSTEM_KEYS),
              help="only these systems (repeatable)")
@click.option("--sweep", default=None, metavar="PARAM=V1,V2,...",
              help="what-if curve per system over one parameter: channels, channel-gbps, csds "
                   "or page-hit (best valid throughput over the batches)")
@click.option("--png", default=None, metavar="PATH",
              help="figure path: .pdf/.svg vector, else PNG at 300 dpi "
                   "[throughput.png for the table, none with --json]; '' for none")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of the table")
def reproduce(model, gpus, csds, ssds, input_len, output_len, batches, sparse, page_hit, profile,
              gpu_hw, host_hw, ssd_hw, flexgen_hw, vllm_hw, topology, channels, channel_gbps, ways,
              link_gen, link_width, csd_capacity, systems, sweep, png, as_json):
    """Model decode throughput of FlexGen (and its SparQ and GDS variants), ZeRO-Inference,
    Recomp (vLLM) and InstInfer (dense and SparF) on this hardware."""
    from csdemu.drive.profile import ProfileError, parse_capacity
    from csdemu.sysmodel import HardwareError, ModelError, PageHitError, reproduce as run
    from csdemu.sysmodel import SYSTEMS
    from csdemu.sysmodel import sweep as sweeps
    from csdemu.sysmodel.hardware import pcie_gbps
    from csdemu.sysmodel.report import format_sweep, format_table, plot, plot_sweep, to_json
    from csdemu.topology import TopologyError, load_topology
    try:
        topo = load_topology(topology)
    except TopologyError as e:
        raise click.BadParameter(str(e), param_hint="--topology")
    try:
        topo.behind_switch(csds)
    except TopologyError as e:
        raise click.BadParameter(str(e), param_hint="--csds")
    swept = None
    if sweep is not None:
        try:
            swept = sweeps.parse(sweep)
        except sweeps.SweepError as e:
            raise click.BadParameter(str(e), param_hint="--sweep")
        if swept[0] == "csds":
            try:
                topo.behind_switch(max(swept[1]))
            except TopologyError as e:
                raise click.BadParameter(str(e), param_hint="--sweep")
    ov = {}
    if channels is not None:
        ov["geometry.channels"] = channels
    if ways is not None:
        ov["geometry.ways"] = ways
    if channel_gbps is not None:
        ov["timing.channel_mbps"] = int(round(channel_gbps * 1000))
    if csd_capacity is not None:
        try:
            parse_capacity("--csd-capacity", csd_capacity)
        except ProfileError as e:
            raise click.BadParameter(str(e).replace("--csd-capacity: [device] capacity ", ""),
                                     param_hint="--csd-capacity")
        ov["device.capacity"] = csd_capacity
    if link_gen is not None or link_width is not None:
        try:
            ov["pcie.bandwidth_mbps"] = int(round(1000 * pcie_gbps(link_gen or 4, int(link_width or 4))))
        except HardwareError as e:
            raise click.ClickException(str(e))
    base = dict(model=model, gpus=gpus, csds=csds, ssds=ssds, input_len=input_len,
                output_len=output_len, batches=batches, sparse=sparse, profile=profile,
                overrides=ov, gpu=gpu_hw, host=host_hw, ssd=ssd_hw,
                systems=tuple(systems) or SYSTEMS, flexgen=flexgen_hw, topology=topology,
                page_hit=page_hit, vllm=vllm_hw)
    try:
        rows, params = run(**base)
        result = sweeps.run(*swept, base, run) if swept else None
    except PageHitError as e:
        raise click.BadParameter(" ".join(str(e).split()), param_hint="--page-hit")
    except (ModelError, HardwareError, ProfileError, ValueError) as e:
        raise click.ClickException(" ".join(str(e).split()))
    fig = png if png is not None else ("" if as_json else "throughput.png")
    if fig:
        try:
            plot_sweep(result, params, fig) if result else plot(rows, params, fig)
            params["figure"] = fig
        except (OSError, ValueError) as e:
            raise click.ClickException(f"cannot write {fig}: {getattr(e, 'strerror', None) or e}")
    if as_json:
        click.echo(to_json(rows, params, result))
    else:
        click.echo(format_table(rows, params))
        if result:
            click.echo("")
            click.echo(format_sweep(result))
