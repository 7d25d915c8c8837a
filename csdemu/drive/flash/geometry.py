"""Physical addresses: packed PPAs and dense physical page numbers (PPNs).

Two encodings of one physical page:

* **PPA** -- a packed int64 with bit fields, for APIs, logs and debugging::

      63      56 55    48 47  44 43           24 23     16 15            0
      +---------+--------+------+---------------+---------+--------------+
      | unused  |   CH   |  PL  |     BLOCK     |   LUN   |     PAGE     |
      +---------+--------+------+---------------+---------+--------------+

* **PPN** -- a dense index 0..total_pages-1, the FTL's working currency (the
  L2P stores PPNs; the NAND backing file is an array of pages indexed by PPN).
  PPNs are laid out in *write order* of a line, channel first::

      ppn = ((((block * FP + fpage) * PL + plane) * L + lun) * C + ch) * S + sub

  where S = pages per flash page, FP = flash pages per block, page-in-block =
  fpage * S + sub, and `block` is the block index within its plane, which is
  also the line (superblock) number. A line therefore occupies the PPN range
  [line * pages_per_line, (line + 1) * pages_per_line), and a cursor walking
  that range programs channel 0, 1, ..., C-1 (one flash page each), then the
  next LUN, then the next plane, then the next flash page: channel-first
  striping. Data written sequentially into a line is contiguous in the file,
  so a sequential read is one slice of the backing mmap.

Block ids are dense too: ``blk = ((block * PL + plane) * L + lun) * C + ch``, so
the blocks of line l are ids [l * blocks_per_line, (l + 1) * blocks_per_line).
All helpers accept Python ints or NumPy int64 arrays (vectorized).
"""
from __future__ import annotations

import numpy as np

from csdemu.drive.profile import Profile

PAGE_BITS, LUN_BITS, BLOCK_BITS, PLANE_BITS, CH_BITS = 16, 8, 20, 4, 8
PAGE_SHIFT = 0
LUN_SHIFT = PAGE_SHIFT + PAGE_BITS
BLOCK_SHIFT = LUN_SHIFT + LUN_BITS
PLANE_SHIFT = BLOCK_SHIFT + BLOCK_BITS
CH_SHIFT = PLANE_SHIFT + PLANE_BITS
assert CH_SHIFT + CH_BITS <= 63

UNMAPPED = -1


def encode_ppa(ch, lun, plane, block, page):
    """Pack fields into a PPA (ints or int64 arrays)."""
    return ((np.int64(ch) << CH_SHIFT) | (np.int64(plane) << PLANE_SHIFT)
            | (np.int64(block) << BLOCK_SHIFT) | (np.int64(lun) << LUN_SHIFT)
            | (np.int64(page) << PAGE_SHIFT))


def decode_ppa(ppa):
    """PPA -> (ch, lun, plane, block, page)."""
    ppa = np.int64(ppa) if np.isscalar(ppa) else np.asarray(ppa, np.int64)
    return ((ppa >> CH_SHIFT) & ((1 << CH_BITS) - 1),
            (ppa >> LUN_SHIFT) & ((1 << LUN_BITS) - 1),
            (ppa >> PLANE_SHIFT) & ((1 << PLANE_BITS) - 1),
            (ppa >> BLOCK_SHIFT) & ((1 << BLOCK_BITS) - 1),
            (ppa >> PAGE_SHIFT) & ((1 << PAGE_BITS) - 1))


class Geometry:
    """Shape of the NAND array plus PPN/PPA/block-id arithmetic."""

    def __init__(self, profile: Profile):
        g, d = profile.geometry, profile.derive()
        self.channels = g.channels
        self.ways = g.ways
        self.planes = g.planes
        self.blocks_per_plane = g.blocks_per_plane
        self.pages_per_block = g.pages_per_block
        self.page_bytes = g.page_bytes
        self.oob_bytes = g.oob_bytes
        self.S = d.pages_per_flash_page
        self.flash_page_bytes = self.S * g.page_bytes
        self.FP = d.flash_pages_per_block
        self.luns = d.luns
        self.blocks_per_line = d.blocks_per_line
        self.lines = d.lines
        self.total_blocks = d.total_blocks
        self.pages_per_line = d.pages_per_line
        self.total_pages = d.total_pages
        # offsets (relative to line * pages_per_line + blk_in_line * S) of the
        # pages of one block, in page-in-block order
        p = np.arange(self.pages_per_block, dtype=np.int64)
        self._blk_page_off = (p // self.S) * (self.S * self.blocks_per_line) + p % self.S

    # -- PPN decomposition (vectorized) ------------------------------------
    def ch_of(self, ppn):
        return (ppn // self.S) % self.channels

    def lun_of(self, ppn):
        return (ppn // (self.S * self.channels)) % self.ways

    def line_of(self, ppn):
        return ppn // self.pages_per_line

    def flash_page_of(self, ppn):
        """A dense id of the NAND flash page holding `ppn` (same id = one tR)."""
        return ppn // self.S

    def block_of(self, ppn):
        """Dense block id holding `ppn`."""
        return (ppn // self.pages_per_line) * self.blocks_per_line + \
            (ppn // self.S) % self.blocks_per_line

    def page_in_block(self, ppn):
        pos = ppn % self.pages_per_line
        return (pos // (self.S * self.blocks_per_line)) * self.S + pos % self.S

    def decompose(self, ppn):
        """PPN -> (ch, lun, plane, block, page) (block = index within plane)."""
        ppn = np.asarray(ppn, np.int64) if not np.isscalar(ppn) else int(ppn)
        x = ppn // self.S
        ch = x % self.channels
        x = x // self.channels
        lun = x % self.ways
        x = x // self.ways
        plane = x % self.planes
        x = x // self.planes
        fpage = x % self.FP
        block = x // self.FP
        return ch, lun, plane, block, fpage * self.S + ppn % self.S

    def compose(self, ch, lun, plane, block, page):
        """(ch, lun, plane, block, page) -> PPN."""
        fpage, sub = page // self.S, page % self.S
        return (((((block * self.FP + fpage) * self.planes + plane) * self.ways + lun)
                 * self.channels + ch) * self.S + sub)

    def ppn_to_ppa(self, ppn):
        return encode_ppa(*self.decompose(ppn))

    def ppa_to_ppn(self, ppa):
        ch, lun, plane, block, page = decode_ppa(ppa)
        return self.compose(ch, lun, plane, block, page)

    # -- blocks -------------------------------------------------------------
    def block_ch_lun(self, blk):
        """Dense block id -> (ch, lun)."""
        return blk % self.channels, (blk // self.channels) % self.ways

    def block_pages(self, blk: int) -> np.ndarray:
        """PPNs of one block, in page-in-block order."""
        line, bil = divmod(int(blk), self.blocks_per_line)
        return line * self.pages_per_line + bil * self.S + self._blk_page_off

    def line_blocks(self, line: int) -> np.ndarray:
        return np.arange(line * self.blocks_per_line, (line + 1) * self.blocks_per_line,
                         dtype=np.int64)

    def describe(self) -> str:
        return (f"{self.channels} ch x {self.ways} ways x {self.planes} planes x "
                f"{self.blocks_per_plane} blocks x {self.pages_per_block} pages x "
                f"{self.page_bytes} B (flash page {self.flash_page_bytes} B); "
                f"{self.lines} lines of {self.pages_per_line} pages")
