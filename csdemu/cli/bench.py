"""`csdemu bench ...`: measurements that print one JSON object each."""
from __future__ import annotations

import json

import click

from csdemu.cli.options import SOCKET_OPT, daemon_for, int_list, say, trace_option
from csdemu.transport.qpair import MAX_QUEUE_DEPTH


def emit(result: dict, out: str | None, as_json: bool) -> None:
    from csdemu.bench import report
    from csdemu.bench.machine import machine, write_json
    result["machine"] = machine()
    if out:
        write_json(result, out)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(report.text({k: v for k, v in result.items() if k != "machine"}))


@click.group()
def bench():
    """Benchmarks (each prints one JSON object with --json)."""


@bench.command()
@SOCKET_OPT
@click.option("--seconds", default=3.0, show_default=True, type=click.FloatRange(0, 3600, min_open=True),
              help="QD32 throughput phase length")
@click.option("--qd", default=32, show_default=True, type=click.IntRange(1, MAX_QUEUE_DEPTH // 2))
@click.option("--samples", default=20000, show_default=True, type=click.IntRange(1, 10_000_000),
              help="QD1 round trips timed")
@click.option("--json", "as_json", is_flag=True)
@click.option("--out", default=None, metavar="FILE", help="also write the JSON here")
def qpair(socket_path, seconds, qd, samples, as_json, out):
    """Transport: NOP commands/s at QD32 and QD1 round-trip latency."""
    from csdemu.bench.qpair import run_qpair_bench
    with daemon_for(socket_path) as path:
        result = run_qpair_bench(path, seconds=seconds, qd=qd, samples=samples)
    emit(result, out, as_json)


@bench.command("generate")
@SOCKET_OPT
@click.option("--batch", default=8, show_default=True, type=click.IntRange(1, 256))
@click.option("--context", default=2048, show_default=True, type=click.IntRange(1, 1 << 20))
@click.option("--steps", default=16, show_default=True, type=click.IntRange(1, 100_000),
              help="timed decode steps per round (after an untimed prefill and step)")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1, 100),
              help="interleaved rounds of drive dense, drive SparF and sdpa")
@click.option("--profile", default=None, metavar="NAME")
@click.option("--engine-threads", default=2, show_default=True, type=click.IntRange(1, 256),
              help="kernel threads of the drive started for the run")
@click.option("--json", "as_json", is_flag=True)
@click.option("--out", default=None, metavar="FILE")
def generate_bench(socket_path, batch, context, steps, rounds, profile, engine_threads, as_json, out):
    """SmolLM2 decode tokens/s: attention on the drive vs transformers' sdpa."""
    from csdemu.host.device import connect
    from csdemu.bench.generate import run_generate_bench
    from csdemu.hf.weights import load_smollm2
    with daemon_for(socket_path, profile, ["--engine-threads", str(engine_threads)]) as path, \
            connect(path) as dev:
        model, tok = load_smollm2()
        try:
            result = run_generate_bench(dev, model, tok, batch, context, steps, rounds, progress=say)
        except ValueError as exc:           # e.g. batch x context longer than the corpus
            raise click.ClickException(str(exc)) from None
    result["engine_threads"] = engine_threads
    emit(result, out, as_json)


@bench.command("attention")
@SOCKET_OPT
@click.option("--repeat", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--contexts", default="1024,2048,4096,8192,16384", show_default=True, callback=int_list,
              help="context lengths, multiples of 16")
@click.option("--engine-threads", default=2, show_default=True, type=click.IntRange(1, 256),
              help="kernel threads of the drive started for the run")
@trace_option("the drive started for this run")
@click.option("--json", "as_json", is_flag=True)
@click.option("--out", default=None, metavar="FILE")
def attention_bench(socket_path, repeat, contexts, engine_threads, trace, as_json, out):
    """Kernels vs streaming bandwidth, numpy and torch; Attend through the daemon."""
    from csdemu.bench.attention import T, run_attention_bench
    if any(c % T for c in contexts):
        raise click.BadParameter(f"must be multiples of {T} (whole pages), got {contexts}",
                                 param_hint="--contexts")
    ctx = tuple(contexts)
    with daemon_for(socket_path, "instinfer", ["--engine-threads", str(engine_threads)],
                    trace=trace) as path:
        result = run_attention_bench(path, repeat, ctx, progress=say)
    result["engine_threads"] = engine_threads
    emit(result, out, as_json)


@bench.command("trace")
@click.option("--baseline", default=None, metavar="DIR|REV",
              help="source tree (a directory, or a git revision of this checkout) to time the "
                   "untraced charge on as well [default: the commit before tracing]")
@click.option("--json", "as_json", is_flag=True)
@click.option("--out", default=None, metavar="FILE")
def trace_bench(baseline, as_json, out):
    """What --trace costs: the timing model and two daemons, traced off vs on."""
    from csdemu.bench.trace_cost import run_trace_bench
    try:
        result = run_trace_bench(baseline, progress=say)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    emit(result, out, as_json)


@bench.command("flash")
@click.option("--profile", default="instinfer", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--out", default=None, metavar="FILE")
def flash_bench(profile, as_json, out):
    """Flash backend: emulator MB/s vs modeled MB/s, WAF at 90 % fill."""
    from csdemu.bench.flash import run_flash_bench
    result = run_flash_bench(profile)
    emit(result, out, as_json)


@bench.command("realtime")
@click.option("--profile", default="instinfer", show_default=True, metavar="NAME",
              help="profile of the drive started for the run (and of the model it is timed against)")
@click.option("--engine-threads", default=2, show_default=True, type=click.IntRange(1, 256),
              help="kernel threads of the drive started for the run")
@click.option("--json", "as_json", is_flag=True)
@click.option("--out", default=None, metavar="FILE")
def realtime_bench(profile, engine_threads, as_json, out):
    """End to end: the client's wall time over the modeled time, block I/O and Attend.
    Starts a fresh drive of its own: the in-process model must see the same state."""
    from csdemu.bench.realtime import run_realtime_bench
    from csdemu.drive.profile import load_profile
    from csdemu.host.spawn import DaemonProcess
    load_profile(profile)                # a bad name fails here, in one line
    with DaemonProcess(profile=profile, extra_args=["--engine-threads", str(engine_threads)]) as d:
        result = run_realtime_bench(d.socket_path, profile)
    result["engine_threads"] = engine_threads
    emit(result, out, as_json)


@bench.command("causal")
@click.option("--json", "as_json", is_flag=True)
@click.option("--out", default=None, metavar="FILE")
def causal_bench(as_json, out):
    """Dependent streams under the causal arrival rule, arrival at fetch, and realtime."""
    from csdemu.bench.causal import run_causal_bench
    emit(run_causal_bench(), out, as_json)


@bench.command("array")
@click.option("--drives", default="1,2,4,8", show_default=True, callback=int_list,
              help="array sizes, each against the first")
@click.option("--batch", default=16, show_default=True, type=click.IntRange(1, 4096))
@click.option("--context", default=4096, show_default=True, type=click.IntRange(16, 1 << 20),
              help="tokens per sequence, a multiple of 16")
@click.option("--repeat", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--profile", default="instinfer", show_default=True, metavar="NAME")
@click.option("--topology", default=None, metavar="NAME|FILE.toml",
              help="host PCIe topology [default: instinfer-host]")
@click.option("--engine-threads", default=1, show_default=True, type=click.IntRange(1, 256),
              help="kernel threads of each member daemon")
@click.option("--json", "as_json", is_flag=True)
@click.option("--out", default=None, metavar="FILE")
def array_bench(drives, batch, context, repeat, profile, topology, engine_threads, as_json, out):
    """An OPT-13B layer on 1..N drives: modeled vs system model, scaling, wall time."""
    from csdemu.bench.array import run_array_bench
    from csdemu.drive.profile import load_profile
    from csdemu.topology import TopologyError, load_topology
    if context % 16:
        raise click.BadParameter(f"must be a multiple of 16 (whole pages), got {context}",
                                 param_hint="--context")
    load_profile(profile)                # a bad name fails here, in one line
    try:
        load_topology(topology).behind_switch(max(drives))
    except TopologyError as exc:
        raise click.BadParameter(str(exc), param_hint="--topology") from None

    def show(row):
        if not as_json:
            click.echo(f"drives {row['drives']}: modeled {row['modeled_ms']:.3f} ms, "
                       f"system model {row['sysmodel_ms']:.3f} ms, wall {row['wall_ms']:.1f} ms",
                       err=True)
    result = run_array_bench(tuple(drives), batch, context, repeat=repeat, profile=profile,
                             topology=topology, engine_threads=engine_threads, progress=show)
    emit(result, out, as_json)
