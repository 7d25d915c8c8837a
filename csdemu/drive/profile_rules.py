"""The rules a profile's values must satisfy, one line of error per broken
rule naming the profile, the section and the key (csdemu.drive.profile loads and
builds; this module only judges)."""
from __future__ import annotations

import math

MAX_CHANNELS = 64          # nvme_cmds.logs.FLASH_LOG holds 64 per-channel counters


class ProfileError(ValueError):
    """A profile could not be loaded; the message is one line naming the key."""


# Per-key rules: (kind, check) where kind is "int"/"float"/"str" and check is
# "pos" (> 0), "nonneg" (>= 0), "pct" (0..100), "pct_open" (0 <= x < 100),
# "pow2" (positive power of two), or a tuple of allowed strings.
_RULES: dict[tuple[str, str], tuple[str, object]] = {
    ("device", "description"): ("str", None),
    ("device", "timing_mode"): ("str", ("virtual", "realtime")),
    ("device", "lba_size"): ("int", "pow2"),
    ("device", "over_provisioning_pct"): ("float", "pct_open"),
    ("device", "kv_pct"): ("float", "pct_open"),
    ("device", "write_buffer_bytes"): ("int", "nonneg"),
    ("device", "endurance_pe_cycles"): ("int", "pos"),
    ("geometry", "channels"): ("int", "pos"),
    ("geometry", "ways"): ("int", "pos"),
    ("geometry", "planes"): ("int", "pos"),
    ("geometry", "blocks_per_plane"): ("int", "pos"),
    ("geometry", "pages_per_block"): ("int", "pos"),
    ("geometry", "page_bytes"): ("int", "pow2"),
    ("geometry", "flash_page_bytes"): ("int", "nonneg"),
    ("geometry", "oob_bytes"): ("int", "nonneg"),
    ("timing", "tR_ns"): ("int", "pos"),
    ("timing", "tPROG_ns"): ("int", "pos"),
    ("timing", "tBERS_ns"): ("int", "nonneg"),
    ("timing", "tR_4k_ns"): ("int", "nonneg"),
    ("timing", "channel_mbps"): ("int", "nonneg"),
    ("timing", "channel_xfer_overhead_ns"): ("int", "nonneg"),
    ("timing", "fw_read_ns"): ("int", "nonneg"),
    ("timing", "fw_read_4k_ns"): ("int", "nonneg"),
    ("timing", "fw_write_ns"): ("int", "nonneg"),
    ("timing", "fw_write_per_4k_ns"): ("int", "nonneg"),
    ("timing", "fw_other_ns"): ("int", "nonneg"),
    ("pcie", "bandwidth_mbps"): ("int", "nonneg"),
    ("pcie", "latency_ns"): ("int", "nonneg"),
    ("gc", "policy"): ("str", ("greedy", "cost-benefit")),
    ("gc", "threshold_pct"): ("float", "pct"),
    ("gc", "threshold_high_pct"): ("float", "pct"),
    ("gc", "background_max_valid_pct"): ("float", "pct"),
    ("faults", "read_fail_ppm"): ("int", "ppm"),
    ("faults", "program_fail_ppm"): ("int", "ppm"),
    ("faults", "erase_fail_ppm"): ("int", "ppm"),
    ("faults", "bad_block_ppm"): ("int", "ppm"),
    ("faults", "read_fail_every"): ("int", "nonneg"),
    ("faults", "program_fail_every"): ("int", "nonneg"),
    ("faults", "seed"): ("int", "nonneg"),
    ("engine", "gemv_gflops"): ("float", "pos"),
    ("engine", "softmax_mflops"): ("float", "pos"),
    ("engine", "filter_mbps"): ("float", "pos"),
    ("engine", "kv_dram_bytes"): ("int", "pos"),
}

OOB_RECORD_BYTES = 24      # csdemu.drive.flash.nand.OOB_DTYPE.itemsize
MAX_PAGES = (1 << 31) - 1  # csdemu.drive.flash.checkpoint.L2P_DTYPE (int32) maps this many


def check_value(where: str, sec: str, key: str, value):
    """`value` of [sec] key, checked against its rule (ints stay ints)."""
    kind, check = _RULES[(sec, key)]
    head = f"{where}: [{sec}] {key} must be"
    if kind == "str":
        if not isinstance(value, str):
            raise ProfileError(f"{head} a string, got {value!r}")
        if isinstance(check, tuple) and value not in check:
            raise ProfileError(f"{head} one of {', '.join(repr(c) for c in check)}, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            noun = {"pos": "a positive integer", "pow2": "a power-of-two integer",
                    "ppm": "an integer in 0..1000000"}.get(check, "a non-negative integer")
            raise ProfileError(f"{head} {noun}, got {value!r}")
        if check == "pos" and value <= 0:
            raise ProfileError(f"{head} a positive integer, got {value!r}")
        if check == "nonneg" and value < 0:
            raise ProfileError(f"{head} a non-negative integer, got {value!r}")
        if check == "pow2" and (value <= 0 or value & (value - 1)):
            raise ProfileError(f"{head} a power-of-two integer, got {value!r}")
        if check == "ppm" and not 0 <= value <= 1_000_000:
            raise ProfileError(f"{head} an integer in 0..1000000, got {value!r}")
        return value
    # float
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProfileError(f"{head} a number, got {value!r}")
    value = float(value)
    if check == "pos" and value <= 0:
        raise ProfileError(f"{head} a positive number, got {value!r}")
    if check == "pct" and not 0.0 <= value <= 100.0:
        raise ProfileError(f"{head} a percentage in 0..100, got {value!r}")
    if check == "pct_open" and not 0.0 <= value < 100.0:
        raise ProfileError(f"{head} a percentage in 0..100 (exclusive), got {value!r}")
    return value


def cross_checks(where: str, p) -> None:
    """Rules that tie keys together (geometry fits the PPA fields, ...)."""
    g, d, gc = p.geometry, p.device, p.gc
    if g.channels > MAX_CHANNELS:
        raise ProfileError(f"{where}: [geometry] channels must be at most {MAX_CHANNELS}, got {g.channels}")
    if g.ways > 255 or g.planes > 15 or g.pages_per_block > 65535 or g.blocks_per_plane > (1 << 20) - 1:
        raise ProfileError(f"{where}: [geometry] ways/planes/pages_per_block/blocks_per_plane exceed the PPA "
                           f"bit fields (255/15/65535/1048575)")
    fpb = g.flash_page_bytes or g.page_bytes
    if fpb % g.page_bytes:
        raise ProfileError(f"{where}: [geometry] flash_page_bytes must be a multiple of page_bytes "
                           f"({g.page_bytes}), got {g.flash_page_bytes}")
    if g.pages_per_block % (fpb // g.page_bytes):
        raise ProfileError(f"{where}: [geometry] pages_per_block must be a multiple of the "
                           f"{fpb // g.page_bytes} pages in a flash page, got {g.pages_per_block}")
    if g.oob_bytes < OOB_RECORD_BYTES:
        raise ProfileError(f"{where}: [geometry] oob_bytes must be at least {OOB_RECORD_BYTES} "
                           f"(the OOB record), got {g.oob_bytes}")
    if d.lba_size > g.page_bytes or d.lba_size < 512:
        raise ProfileError(f"{where}: [device] lba_size must be a power of two in 512..page_bytes "
                           f"({g.page_bytes}), got {d.lba_size}")
    if gc.threshold_pct > gc.threshold_high_pct:
        raise ProfileError(f"{where}: [gc] threshold_pct must not exceed threshold_high_pct "
                           f"({gc.threshold_high_pct}), got {gc.threshold_pct}")
    if g.blocks_per_plane < 4:
        raise ProfileError(f"{where}: [geometry] blocks_per_plane must be at least 4 (lines for host, "
                           f"GC and spare), got {g.blocks_per_plane}")
    pages = g.channels * g.ways * g.planes * g.blocks_per_plane * g.pages_per_block
    if pages > MAX_PAGES:
        raise ProfileError(f"{where}: [geometry] gives {pages} pages of {g.page_bytes} B, more than "
                           f"the {MAX_PAGES} the L2P maps (8 TiB of 4 KiB pages); lower "
                           f"[device] capacity or blocks_per_plane, or raise page_bytes")
    if d.write_buffer_bytes and d.write_buffer_bytes < fpb:
        raise ProfileError(f"{where}: [device] write_buffer_bytes must be 0 or at least one flash "
                           f"page ({fpb}), got {d.write_buffer_bytes}")
