"""InstInfer: prefill on the GPU, each layer's KV written to the CSDs while
the next layer computes, decode attention in the CSDs (kv heads split across
them by the live array's rule), the rest on the GPU. InstInfer-SparF: the
same with SparF at the configured ratio and page-hit rate.

Per layer of a decode step, in series (the GPU needs the layer's attention
output before its next matmul):
  * the GPU's non-attention work, weight-bound at small batch, FLOP-bound
    at large (common.gpu_layer_s);
  * one Attend command per drive, all issued before any is waited for: its
    round trip is the drive's firmware time for a read command plus the
    link's latency each way (the drive profile's timing.fw_read_ns and
    pcie.latency_ns);
  * the layer waits for the slowest drive (csdemu.topology.array_time),
    then q out and outputs back over the host links the drives share;
  * the new token's K and V to the busiest drive over its link.
"""
from __future__ import annotations

from csdemu.drive.profile import Profile
from csdemu.sysmodel.array import busiest_load, layer_array_attend
from csdemu.sysmodel.common import (GB, SysConfig, gib, gpu_bound, gpu_cap, gpu_link, gpu_step_s,
                                    integrate, oom_row, prefill_gpu_s, row)
from csdemu.topology import plan


def program_bw(p: Profile) -> float:
    g, t = p.geometry, p.timing
    fp = g.flash_page_bytes or g.page_bytes
    luns = g.channels * g.ways * g.planes
    arr = luns * fp / (t.tPROG_ns * 1e-9)
    bus = g.channels * t.channel_mbps * 1e6 if t.channel_mbps else float("inf")
    return min(arr, bus)


def command_round_trip_s(p: Profile) -> float:
    """One Attend command's round trip outside the data it moves: the drive's
    firmware time for a read command and the link latency of the submission
    and of the completion."""
    return (p.timing.fw_read_ns + 2 * p.pcie.latency_ns) * 1e-9


def kv_line_bytes(p: Profile) -> int:
    """What KV namespaces may hold at once: the drive's KV lines."""
    d = p.derive()
    return d.kv_lines * d.pages_per_line * p.geometry.page_bytes


def drive_loads(kv_heads: int, drives: int, batch: int) -> list[int]:
    """kv heads x sequences each drive holds, by the live array's rule."""
    return [s.heads * len(range(s.rem, batch, s.mod)) for s in plan(kv_heads, drives)]


def prefill_write_s(c: SysConfig, b: int, kcopy: float) -> float:
    """The prefill's KV leaving the GPU for the drives: each drive takes its
    share at min(its link, its program bandwidth); all of it crosses the GPU's
    link, and the share of the drives behind a switch crosses its upstream."""
    m, p, topo = c.model, c.csd, c.topology
    per_token = kcopy * c.input_len * m.layers * 2 * m.head_dim * m.dtype_bytes
    loads = drive_loads(m.kv_heads, c.csds, b)
    link = p.pcie.bandwidth_mbps * 1e6 if p.pcie.bandwidth_mbps else float("inf")
    drive_s = max(loads) * per_token / min(link, program_bw(p))
    total_s = sum(loads) * per_token / (topo.gbps(topo.gpu_lanes) * GB)
    behind = topo.behind_switch(c.csds)
    up_s = 0.0
    if topo.switch is not None and any(behind):
        via = sum(n for n, bh in zip(loads, behind) if bh)
        up_s = via * per_token / (topo.gbps(topo.switch.upstream_lanes) * GB)
    return max(drive_s, total_s, up_s)


def _instinfer(c: SysConfig, b: int, sparse: bool):
    name = "instinfer-sparf" if sparse else "instinfer"
    m, hw, p = c.model, c.hw, c.csd
    cap = gpu_cap(c)
    act = 4.0 * b * m.hidden * m.dtype_bytes + b * m.vocab * 4
    weights_on_gpu = m.weight_bytes + act <= cap
    if not weights_on_gpu:
        host_cap = (hw.host.memory_gb - hw.host.os_reserve_gb) * GB
        if m.weight_bytes > host_cap or 2 * m.layer_weight_bytes + act > cap:
            return oom_row(name, b, f"GPU/host memory: weights {gib(m.weight_bytes)}")
    load = busiest_load(m.kv_heads, c.csds, b)
    T = c.tokens_per_page
    link = p.pcie.bandwidth_mbps * 1e6 if p.pcie.bandwidth_mbps else float("inf")
    kcopy = 1.5 if sparse else 1.0                 # SparF keeps K twice
    w_stream = 0.0 if weights_on_gpu else m.weight_bytes / gpu_link(c)
    rtt = command_round_trip_s(p)

    def step(L):
        sp = c.sparsity(L) if sparse else None
        at, bd = layer_array_attend(p, c.topology, m.q_heads, m.kv_heads, m.head_dim, b, L,
                                    m.dtype_bytes, T, c.csds, sp)
        slowest = at.slowest_ns * 1e-9             # the layer waits for its slowest drive
        host_link = at.host_ns * 1e-9              # q out, outputs back, over shared links
        append = kcopy * load * 2 * m.head_dim * m.dtype_bytes / link
        drive_io = (bd["pcie_in_ns"] + bd["pcie_out_ns"]) * 1e-9
        flash = bd["flash_ns"] * 1e-9
        gpu = gpu_step_s(c, b)
        n = m.layers
        return {"kv_access_s": n * flash,
                "csd_compute_s": n * max(0.0, slowest - flash - drive_io),
                "csd_attend_s": n * slowest, "host_link_s": n * host_link,
                "command_s": n * rtt, "compute_s": gpu, "gpu_bound": gpu_bound(c, b),
                "transfer_s": n * (drive_io + host_link + append) + w_stream,
                "step_s": n * (slowest + host_link + rtt + append) + gpu + w_stream}

    prefill = max(prefill_gpu_s(c, b), prefill_write_s(c, b, kcopy)) + w_stream
    kv_csd = kcopy * load * c.max_len * m.layers * 2 * m.head_dim * m.dtype_bytes
    room = kv_line_bytes(p)
    fit = None if kv_csd <= room else (f"CSD KV lines: {gib(kv_csd)} of KV on the busiest CSD "
                                       f"> {gib(room)}")
    extra = {"weights_on_gpu": weights_on_gpu, "csd_kv_gb": kv_csd / GB,
             "csd_kv_lines_gb": room / GB, "csd_capacity_ok": fit is None}
    if sparse:
        extra["page_hit"] = c.page_hit.kind
    return row(name, b, c, prefill, integrate(c, step), extra=extra, fit_reason=fit)


def instinfer(c: SysConfig, b: int):
    return _instinfer(c, b, False)


def instinfer_sparf(c: SysConfig, b: int):
    return _instinfer(c, b, True)
