"""Per-channel work counters filled by the attention kernels.

Every kernel returns ``counters``: int64 ``[nchannels, NCTR]``, one row per
flash channel, columns below.  A timing model charges each channel from its
row: flash page reads (``*_READ``, ``FLASH_BYTES``) at the channel's flash
rate, DRAM-buffer reads at DRAM speed, and engine work (``MACS``, ``EXPS``,
``FILTER``) at the engine's GeMV / softmax / filter rates (paper Table I).

Page counts: for each (sequence, kv head) every page that exists in a layout
is either read from flash, read from the DRAM buffer, or skipped, so
``K_READ + K_DRAM + K_SKIP`` = token-indexed K pages that exist (same for V
and KD).  A page needed by several q heads of one kv head (GQA) counts once.
Bytes are whole pages (``page rows x cols x itemsize``) even for a partially
filled tail page, except in SparF's exact pass: there a token page moves only
its selected rows (``rows x cols x itemsize``), as a NAND column read would.

Attribution: token-indexed pages and everything done per token (exact
scores, exps, filtering) go to the channel of the token's group
(``group_channel[b, g]``); channel-indexed K pages and the approximate-score
MACs go to the channel of the dim page (``dim_channel[b, dblock, tblock]``).
"""

K_READ = 0       #: token-indexed K pages read from flash
V_READ = 1       #: token-indexed V pages read from flash
KD_READ = 2      #: channel-indexed (dim) K pages read from flash (SparF)
K_SKIP = 3       #: token-indexed K pages not read (SparF exact stage)
V_SKIP = 4       #: token-indexed V pages not read (SparF exact stage)
KD_SKIP = 5      #: dim pages not read (SparF approximate stage)
K_DRAM = 6       #: token-indexed K pages read from the device-DRAM buffer
V_DRAM = 7       #: token-indexed V pages read from the device-DRAM buffer
KD_DRAM = 8      #: dim pages read from the device-DRAM buffer
FLASH_BYTES = 9  #: bytes read from flash (moved over the channel)
DRAM_BYTES = 10  #: bytes read from the DRAM buffer
MACS = 11        #: multiply-adds (q.K scores + p.V sums, approx scores)
EXPS = 12        #: softmax exponentials
FILTER = 13      #: elements passed through a top-k filter (SparF)
NCTR = 14

NAMES = ("k_read", "v_read", "kd_read", "k_skip", "v_skip", "kd_skip",
         "k_dram", "v_dram", "kd_dram", "flash_bytes", "dram_bytes",
         "macs", "exps", "filter")
assert len(NAMES) == NCTR

