"""Modeled time of one Attend command: pure code over the flash clocks.

The daemon's KV engine and the system model both call `attend_time`, so a
what-if answer and a live command are charged by the same arithmetic:

    q over PCIe ─► page reads on each channel (tR on the page's LUN, then the
    channel bus; csdemu.drive.flash.timing) ─► engine compute at the profile's rates,
    pipelined behind the reads ─► output over PCIe

A page read senses the whole page (tR), but may move only part of it over
the channel: SparF's exact pass clocks out just the selected tokens' rows
(ONFI 4.x Change Read Column), so `attend_time` takes per-page transfer
sizes next to the page size.

Work is counted in the units of the paper's Table I: GeMV FLOPs (scores and
the weighted value sum), softmax work, and bytes through the SparF filter.

How Table I's rates are read (docs/system-model.md, "The CSD engine"):
  * they are the rates of ONE attention kernel instance, and the drive has one
    instance per flash channel (each channel computes the partial attention of
    the pages it holds; the controller merges partials by log-sum-exp), so
    `EngineRates.units` = channels;
  * the three stages of a kernel (GeMV -> softmax -> filter) are a dataflow
    pipeline, so a kernel's time is its slowest stage, not the sum;
  * the softmax rate counts score elements (one exp-and-normalise per score).
Read this way every stage keeps up with its 1.4 GB/s channel (GeMV needs
1.4 GFLOP/s, softmax 2.7 M scores/s, filter <= 1.4 GB/s), which is what a
kernel placed next to a channel is sized for. The literal reading (one
engine, 5 FLOPs per score, stages in series) makes a batch-8 OPT-13B layer at
1536 tokens take ~180 ms, 8x its 22 ms flash read, and makes SparF (which does
softmax over more scores than dense) slower than dense attention, the
opposite of the paper's result.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from csdemu.drive.flash.timing import Clocks, NandTiming, Op, advance_batch, pcie_transfer
from csdemu.drive.flash.trace_ring import Kind, emit_rows

SOFTMAX_FLOPS_PER_SCORE = 1      # Table I's softmax rate counts score elements
SCORE_BYTES = 4                  # fp32 approximate score through the filter


@dataclass(frozen=True, slots=True)
class EngineRates:
    """Rates of one kernel instance (paper Table I) and how many instances run
    in parallel (`units`: one per flash channel)."""
    gemv_flops_per_s: float
    softmax_flops_per_s: float
    filter_bytes_per_s: float
    units: int = 1

    @classmethod
    def from_profile(cls, profile) -> "EngineRates":
        e = profile.engine
        return cls(e.gemv_gflops * 1e9, e.softmax_mflops * 1e6, e.filter_mbps * 1e6,
                   int(profile.geometry.channels))

    def compute_ns(self, work: "AttendWork") -> int:
        """Engine time of `work` spread evenly over the units; the stages of a
        unit are pipelined, so the slowest stage sets the time."""
        stage = max(work.gemv_flops / self.gemv_flops_per_s,
                    work.softmax_flops / self.softmax_flops_per_s,
                    work.filter_bytes / self.filter_bytes_per_s)
        return int(round(1e9 * stage / max(1, self.units)))

    def stage_ns(self, work: "AttendWork") -> tuple[int, int, int]:
        """Each stage's busy time on one unit: GeMV, softmax, filter."""
        u = max(1, self.units)
        return tuple(int(round(1e9 * x / u)) for x in (
            work.gemv_flops / self.gemv_flops_per_s, work.softmax_flops / self.softmax_flops_per_s,
            work.filter_bytes / self.filter_bytes_per_s))


@dataclass(slots=True)
class AttendWork:
    q_bytes: int = 0
    out_bytes: int = 0
    gemv_flops: float = 0.0
    softmax_flops: float = 0.0
    filter_bytes: float = 0.0

    def __iadd__(self, other: "AttendWork") -> "AttendWork":
        for f in ("q_bytes", "out_bytes", "gemv_flops", "softmax_flops", "filter_bytes"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        return self


def dense_work(seq_lens, q_heads: int, head_dim: int, io_bytes_per_elem: int = 4) -> AttendWork:
    """Exact attention of one q vector per (sequence, q head) over all its tokens."""
    tokens = float(np.sum(seq_lens))
    b = len(seq_lens)
    return AttendWork(q_bytes=b * q_heads * head_dim * io_bytes_per_elem,
                      out_bytes=b * q_heads * head_dim * io_bytes_per_elem,
                      gemv_flops=4.0 * head_dim * tokens * q_heads,
                      softmax_flops=SOFTMAX_FLOPS_PER_SCORE * tokens * q_heads)


def sparf_work(seq_lens, q_heads: int, head_dim: int, r: int, k: int, window: int,
               io_bytes_per_elem: int = 4) -> AttendWork:
    """SparF: approximate scores on r dims over all tokens, filter to k + window,
    exact attention on the selection, blend with the mean value vector."""
    lens = np.asarray(seq_lens, dtype=np.float64)
    sel = np.minimum(lens, k + window)
    b = len(lens)
    tokens, chosen = float(lens.sum()), float(sel.sum())
    return AttendWork(q_bytes=b * q_heads * head_dim * io_bytes_per_elem,
                      out_bytes=b * q_heads * head_dim * io_bytes_per_elem,
                      gemv_flops=q_heads * (2.0 * r * tokens + 4.0 * head_dim * chosen
                                            + 2.0 * head_dim * b),
                      softmax_flops=SOFTMAX_FLOPS_PER_SCORE * q_heads * (tokens + chosen),
                      filter_bytes=SCORE_BYTES * q_heads * tokens)


@dataclass(slots=True)
class EngineClock:
    """The attention engine as one more timed resource."""
    avail_ns: int = 0
    busy_ns: int = 0


@dataclass(slots=True)
class AttendTime:
    done_ns: int
    q_arrival_ns: int
    flash_done_ns: int
    compute_ns: int
    engine_done_ns: int
    pages: int
    breakdown: dict = field(default_factory=dict)


def attend_time(start_ns: int, page_ch: np.ndarray, page_lun: np.ndarray, page_bytes: int,
                work: AttendWork, clocks: Clocks, nand: NandTiming, rates: EngineRates,
                engine: EngineClock, fw_ns: int = 0, xfer_bytes=None) -> AttendTime:
    """Charge one Attend against the clocks; return when its output reaches the host.
    Every page senses `page_bytes`; it moves `xfer_bytes` (int array, one per
    page) over its channel, or the whole page when that is None."""
    t_q = pcie_transfer(start_ns + fw_ns, work.q_bytes, clocks, nand)
    npages = int(len(page_ch))
    if npages:
        moved = page_bytes if xfer_bytes is None else xfer_bytes
        arrivals = advance_batch(Op.READ, page_ch, page_lun, t_q, moved, clocks, nand,
                                 sense_bytes=page_bytes)
        flash_done = int(arrivals.max())
    else:
        flash_done = t_q
    compute = rates.compute_ns(work)
    begin = max(engine.avail_ns, t_q)
    # the engine trails the last page by that page's share of its unit's work
    tail = min(compute, compute * max(1, rates.units) // npages) if npages else compute
    engine_done = max(begin + compute, flash_done + tail)
    engine.busy_ns += compute
    engine.avail_ns = engine_done
    if clocks.trace[0, 0]:
        trace_engine(clocks.trace, rates, work, begin, engine_done,
                     begin + compute >= engine_done)
    done = pcie_transfer(engine_done, work.out_bytes, clocks, nand)
    return AttendTime(done, t_q, flash_done, compute, engine_done, npages, {
        "pcie_in_ns": t_q - start_ns,
        "flash_ns": flash_done - t_q,
        "compute_ns": compute,
        "engine_wait_ns": engine_done - max(flash_done, begin),
        "pcie_out_ns": done - engine_done,
    })


def trace_engine(tr, rates: EngineRates, work: AttendWork, begin: int, engine_done: int,
                 compute_bound: bool) -> None:
    """Each unit's stages as intervals in the trace ring. The stages run
    side by side (a pipeline), so each is drawn for its own busy time: from
    `begin` when the engine sets the pace, else ending with the engine, the
    work on the last pages to arrive being what trails the reads."""
    rows = []
    for kind, d in zip((Kind.GEMV, Kind.SOFTMAX, Kind.FILTER), rates.stage_ns(work)):
        if d <= 0:
            continue
        s, e = (begin, begin + d) if compute_bound else (engine_done - d, engine_done)
        rows += [(kind, u, s, e, 0) for u in range(max(1, rates.units))]
    if rows:
        emit_rows(tr, rows)


def spread_pages(npages: int, channels: int, ways: int, first: int = 0):
    """Channel-first striping of `npages` consecutive pages (what the KV layout
    does along the token axis): page i on channel i % C, way (i // C) % W."""
    i = np.arange(first, first + npages, dtype=np.int64)
    return i % channels, (i // channels) % ways
