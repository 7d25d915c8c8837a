"""`csdemu demo`: a temporary drive, block I/O, identify and SMART, then a clean stop."""
from __future__ import annotations

import time

import click
import numpy as np



def run_demo(profile: str | None = None, nblocks: int = 256) -> None:
    from csdemu.host.device import connect
    from csdemu.host.spawn import DaemonProcess
    with DaemonProcess(profile=profile) as d:
        click.echo(f"started a csdemu daemon (pid {d.proc.pid}) on {d.socket_path}")
        with connect(d.socket_path) as dev:
            ident = dev.identify()
            ns = dev.identify_ns(1)
            bs = dev.lba_size()
            click.echo(f"controller: {ident['mn']}  serial {ident['sn']}  NVMe {ident['ver'] >> 16}."
                       f"{(ident['ver'] >> 8) & 0xFF}  MDTS {dev.mdts_bytes() >> 10} KiB")
            vs = ident["vs"]
            click.echo(f"CSD: profile {vs['profile'] or '-'}, {vs['channels']} channels x "
                       f"{vs['ways']} ways, page {vs['page_bytes']} B")
            click.echo(f"namespace 1: {ns['nsze']} blocks of {bs} B ({ns['nsze'] * bs / 2**30:.2f} GiB)")
            rng = np.random.default_rng(1)
            data = rng.integers(0, 256, nblocks * bs, dtype=np.uint8)
            t0 = time.perf_counter()
            dev_ns = dev.write(0, data)
            dev.flush()
            back = dev.read(0, nblocks)
            wall = time.perf_counter() - t0
            ok = bool(np.array_equal(back, data))
            click.echo(f"wrote, flushed and read back {nblocks} blocks: "
                       f"{'identical' if ok else 'MISMATCH'}; wall {wall * 1e3:.1f} ms, "
                       f"modeled write time {dev_ns / 1e6:.3f} ms")
            click.echo("SMART / health:")
            for k, v in dev.smart().items():
                click.echo(f"  {k:<28} {v}")
            if not ok:
                raise click.ClickException("data read back differs from data written")
        rc = d.stop()
        click.echo(f"daemon stopped (exit status {rc})")


@click.command()
@click.option("--profile", default=None, metavar="NAME")
def demo(profile):
    """Start a temporary drive, write and read blocks, print identify and SMART."""
    run_demo(profile)
