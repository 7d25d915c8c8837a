"""Log page identifiers and layouts (Get Log Page, admin 02h)."""
from enum import IntEnum

import numpy as np


class LogPage(IntEnum):
    ERROR_INFO = 0x01
    SMART = 0x02
    FLASH_STATS = 0xC0      # vendor: flash translation layer and NAND statistics
    ENGINE_STATS = 0xC1     # vendor: in-storage attention engine statistics


MAX_CHANNELS = 64

# SMART / Health Information (NVMe 2.0 Figure 207), 512 bytes. The 128-bit
# counters are stored as two u64 halves (lo, hi).
SMART_LOG = np.dtype({
    "names": ["critical_warning", "composite_temperature", "available_spare",
              "available_spare_threshold", "percentage_used",
              "data_units_read", "data_units_written", "host_read_commands",
              "host_write_commands", "controller_busy_time", "power_cycles",
              "power_on_hours", "unsafe_shutdowns", "media_errors", "num_err_log_entries"],
    "formats": ["u1", "<u2", "u1", "u1", "u1",
                ("<u8", 2), ("<u8", 2), ("<u8", 2), ("<u8", 2), ("<u8", 2), ("<u8", 2),
                ("<u8", 2), ("<u8", 2), ("<u8", 2), ("<u8", 2)],
    "offsets": [0, 1, 3, 4, 5, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176],
    "itemsize": 512,
})

# Vendor log C0h: flash statistics, 4096 bytes.
FLASH_LOG = np.dtype({
    "names": ["version", "nchannels", "gc_runs", "gc_pages_copied", "host_pages_written",
              "nand_pages_written", "nand_pages_read", "erases", "pe_min", "pe_max",
              "pe_avg", "free_lines", "total_lines", "bad_blocks", "read_failures",
              "program_failures", "channel_busy_ns"],
    "formats": ["<u4", "<u4", "<u8", "<u8", "<u8", "<u8", "<u8", "<u8", "<u4", "<u4",
                "<f8", "<u4", "<u4", "<u4", "<u8", "<u8", ("<u8", MAX_CHANNELS)],
    "offsets": [0, 4, 8, 16, 24, 32, 40, 48, 56, 60, 64, 72, 76, 80, 88, 96, 512],
    "itemsize": 4096,
})

assert SMART_LOG.itemsize == 512 and SMART_LOG.fields["data_units_read"][1] == 32
assert SMART_LOG.fields["media_errors"][1] == 160
assert FLASH_LOG.itemsize == 4096


def u128(value: int) -> tuple[int, int]:
    return value & 0xFFFFFFFFFFFFFFFF, value >> 64


def from_u128(pair) -> int:
    return int(pair[0]) | (int(pair[1]) << 64)

# Vendor log C1h: attention engine statistics, 4096 bytes.
# pages_read_flash counts NAND pages sensed (one tR each); bytes_read_flash and
# channel_bytes count bytes moved over the flash channels, which for SparF's
# exact pass is only the selected tokens' rows of a page (column reads).
ENGINE_LOG = np.dtype({
    "names": ["version", "nchannels", "kv_namespaces", "sequences", "attends", "sparf_attends",
              "appends", "tokens_appended", "pages_programmed", "reclaims",
              "pages_read_flash", "pages_read_dram", "pages_skipped", "bytes_read_flash",
              "pcie_in_ns", "flash_ns", "compute_ns", "pcie_out_ns", "device_ns",
              "kernel_wall_ns", "charge_wall_ns", "channel_bytes", "channel_pages"],
    "formats": ["<u4", "<u4", "<u4", "<u4", "<u8", "<u8", "<u8", "<u8", "<u8", "<u8",
                "<u8", "<u8", "<u8", "<u8", "<u8", "<u8", "<u8", "<u8", "<u8", "<u8", "<u8",
                ("<u8", MAX_CHANNELS), ("<u8", MAX_CHANNELS)],
    "offsets": [0, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128,
                136, 144, 1024, 1536],
    "itemsize": 4096,
})
assert ENGINE_LOG.itemsize == 4096
