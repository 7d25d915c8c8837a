"""`csdemu generate`: a real model (SmolLM2-135M) decoding with attention on the drive."""
from __future__ import annotations

import contextlib
import json
import sys

import click

from csdemu.cli.options import SOCKET_OPT, TokenBar, daemon_for, int_list, say, trace_option

DEFAULT_PROMPT = "Explain in two sentences why storage drives can compute attention."


@click.command()
@click.option("--prompt", "prompts", multiple=True, metavar="TEXT",
              help="prompt (repeatable; rows cycle through them)")
@click.option("--batch", default=None, type=click.IntRange(1, 256), help="rows in the batch")
@click.option("--max-new-tokens", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--sparse", default=None, metavar="RATIO", help="SparF ratio, e.g. 1/8 (default: dense)")
@click.option("--kv-dtype", default="float16", show_default=True,
              type=click.Choice(["float16", "bfloat16", "float32"]))
@click.option("--profile", default=None, metavar="NAME", help="profile of a drive started for this run")
@click.option("--no-chat", is_flag=True, help="send prompts as they are, without the chat template")
@SOCKET_OPT
@click.option("--drives", default=None, type=click.IntRange(1, 64),
              help="split attention over an array of N drives (started for this run unless --array)")
@click.option("--array", "array_dir", default=None, metavar="DIR",
              help="use the array `csdemu array start` runs in DIR")
@trace_option("the drive started for this run")
@click.option("--json", "as_json", is_flag=True)
def generate(prompts, batch, max_new_tokens, sparse, kv_dtype, profile, no_chat, socket_path,
             drives, array_dir, trace, as_json):
    """Generate text with SmolLM2-135M, decode attention computed in the drive."""
    from csdemu.host.device import connect
    from csdemu.hf.generate import generate as run, parse_ratio
    from csdemu.hf.weights import load_smollm2
    try:
        ratio = parse_ratio(sparse)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--sparse") from None
    prompts = list(prompts) or [DEFAULT_PROMPT]
    rows = [prompts[i % len(prompts)] for i in range(batch or len(prompts))]
    with contextlib.ExitStack() as stack:
        if drives or array_dir:
            if trace:
                raise click.BadParameter("traces one drive: give --trace without --drives/--array",
                                         param_hint="--trace")
            if socket_path:
                raise click.BadParameter("give --socket or --drives/--array, not both",
                                         param_hint="--socket")
            from csdemu.drive.profile import load_profile
            from csdemu.host.array_spawn import open_array
            if profile:
                load_profile(profile)       # a bad name fails here, in one line
            dev = stack.enter_context(open_array(array_dir, drives, profile))
        else:
            dev = stack.enter_context(connect(stack.enter_context(
                daemon_for(socket_path, profile, trace=trace))))
        model, tok = load_smollm2()         # after the drive is up: a bad --profile fails first
        streamed = len(rows) == 1 and not as_json
        if streamed:                        # one row: its text as it comes, as `generate` tools do
            click.echo(f"[0] {rows[0]}\n    → ", nl=False)
        res = run(dev, model, tok, rows, max_new_tokens, ratio, kv_dtype, chat=not no_chat,
                  streamer=_text_stream(tok) if streamed else TokenBar(max_new_tokens))
        res["drives"] = len(dev) if drives or array_dir else 1
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    if streamed:
        click.echo()
    else:
        for i, (p, t) in enumerate(zip(rows, res["texts"])):
            click.echo(f"[{i}] {p}\n    → {t.strip()}")
    mode = f"SparF {sparse}" if ratio else "dense"
    where = "the drive" if res["drives"] == 1 else f"{res['drives']} drives"
    click.echo(f"\n{res['tokens']} tokens in {res['wall_s']} s: {res['tokens_per_s']} tokens/s "
               f"({mode} attention on {where}, KV {kv_dtype})")
    click.echo(f"modeled device time: {res['device_ns_per_step'] / 1e6:.3f} ms per decode step, "
               f"{res['device_ns_per_token'] / 1e6:.3f} ms per token")
    click.echo(f"KV pages read: {res['pages_read_flash']} from flash, {res['pages_read_dram']} from DRAM buffers")
    click.echo("bytes read per channel: " + ", ".join(f"{b / 2**20:.2f} MiB" for b in res["bytes_read_per_channel"]))


def _text_stream(tok):
    """transformers' TextStreamer, writing each finished word to stdout at once."""
    from transformers import TextStreamer

    class _Stream(TextStreamer):
        first = True

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if self.first:
                text, self.first = text.lstrip(), not text.strip()
            click.echo(text, nl=False)
            sys.stdout.flush()

    return _Stream(tok, skip_prompt=True, skip_special_tokens=True)


@click.command("eval-sparse")
@click.option("--contexts", default="1024,2048,4096", show_default=True, callback=int_list,
              help="context lengths")
@click.option("--ratios", default="1/2,1/4,1/8", show_default=True, help="SparF ratios")
@click.option("--eval-tokens", default=64, show_default=True, type=click.IntRange(1, 4096),
              help="teacher-forced tokens scored per row")
@click.option("--batch", default=4, show_default=True, type=click.IntRange(1, 64),
              help="text windows evaluated side by side")
@click.option("--profile", default=None, metavar="NAME")
@SOCKET_OPT
@click.option("--json", "as_json", is_flag=True)
@click.option("--out", default=None, metavar="FILE", help="also write the JSON here")
def eval_sparse(contexts, ratios, eval_tokens, batch, profile, socket_path, as_json, out):
    """Perplexity and top-1 agreement of SparF vs dense, attention on the drive."""
    from csdemu.bench.machine import machine, write_json
    from csdemu.host.device import connect
    from csdemu.hf.eval_sparse import evaluate
    from csdemu.hf.generate import parse_ratio
    from csdemu.hf.weights import load_smollm2
    try:
        rts = [parse_ratio(r) for r in ratios.split(",") if r]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ratios") from None

    def show(row):
        if as_json:                      # the JSON comes at the end; say how far it got
            say(f"eval-sparse: context {row['context']} {row['mode']}: perplexity "
                f"{row['perplexity']:.3f}, top-1 {row['top1_agreement']:.3f}")
        else:
            click.echo(f"{row['context']:>8} {row['mode']:>11} {row['perplexity']:>11.3f} "
                       f"{row['top1_agreement']:>12.3f} {row['device_ms_per_step']:>15.3f} "
                       f"{row['flash_pages_vs_dense']:>15.3f}")
    with daemon_for(socket_path, profile) as path, connect(path) as dev:
        model, tok = load_smollm2()
        if not as_json:
            click.echo(f"{'context':>8} {'mode':>11} {'perplexity':>11} {'top-1 agree':>12} "
                       f"{'device ms/step':>15} {'pages vs dense':>15}")
        try:
            res = evaluate(dev, model, tok, contexts, rts, eval_tokens, batch, progress=show)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    res["machine"] = machine()
    if out:
        write_json(res, out)
    if as_json:
        click.echo(json.dumps(res, indent=2))
