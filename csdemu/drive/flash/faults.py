"""Reproducible fault injection for NAND reads, programs and erases.

Two mechanisms, both off at 0 and combinable (FEMU-style counters plus a
seeded rate):

* every-Nth: the Nth, 2Nth, ... page operation of that kind fails, counted
  from the last `configure()` call, so a test can aim at one exact page;
* rate: each page operation fails with probability ppm / 10^6, drawn from a
  NumPy generator seeded with `seed`; the same seed and the same sequence of
  operations give the same failures.

Each check takes the number of pages of one batch and returns a boolean mask
(or None when nothing fails, the common fast path).
"""
from __future__ import annotations

import numpy as np


class FaultInjector:
    KINDS = ("read", "program", "erase")

    def __init__(self, read_fail_ppm=0, program_fail_ppm=0, erase_fail_ppm=0,
                 read_fail_every=0, program_fail_every=0, seed=0):
        self.configure(read_fail_ppm=read_fail_ppm, program_fail_ppm=program_fail_ppm,
                       erase_fail_ppm=erase_fail_ppm, read_fail_every=read_fail_every,
                       program_fail_every=program_fail_every, seed=seed)

    @classmethod
    def from_profile(cls, profile) -> "FaultInjector":
        f = profile.faults
        return cls(f.read_fail_ppm, f.program_fail_ppm, f.erase_fail_ppm,
                   f.read_fail_every, f.program_fail_every, f.seed)

    def configure(self, *, read_fail_ppm=None, program_fail_ppm=None, erase_fail_ppm=None,
                  read_fail_every=None, program_fail_every=None, seed=None) -> None:
        """Change rates at run time (e.g. from a vendor Set Features). Arguments
        left as None keep their value; counters and the generator restart."""
        cur = getattr(self, "_cfg", {"read_fail_ppm": 0, "program_fail_ppm": 0,
                                     "erase_fail_ppm": 0, "read_fail_every": 0,
                                     "program_fail_every": 0, "seed": 0})
        new = dict(cur)
        for k, v in (("read_fail_ppm", read_fail_ppm), ("program_fail_ppm", program_fail_ppm),
                     ("erase_fail_ppm", erase_fail_ppm), ("read_fail_every", read_fail_every),
                     ("program_fail_every", program_fail_every), ("seed", seed)):
            if v is None:
                continue
            v = int(v)
            if v < 0 or (k.endswith("ppm") and v > 1_000_000):
                raise ValueError(f"fault injection: {k} out of range, got {v}")
            new[k] = v
        self._cfg = new
        self._ppm = {"read": new["read_fail_ppm"], "program": new["program_fail_ppm"],
                     "erase": new["erase_fail_ppm"]}
        self._every = {"read": new["read_fail_every"], "program": new["program_fail_every"],
                       "erase": 0}
        self._count = {k: 0 for k in self.KINDS}
        self._rng = np.random.default_rng(new["seed"])
        self.active = any(self._ppm.values()) or any(self._every.values())

    def config(self) -> dict:
        return dict(self._cfg)

    def check(self, kind: str, n: int) -> np.ndarray | None:
        """Failure mask for the next `n` page operations of `kind`, or None."""
        if not self.active or n <= 0:
            return None
        mask = None
        every = self._every[kind]
        c0 = self._count[kind]
        self._count[kind] = c0 + n
        if every:
            idx = np.arange(c0 + 1, c0 + n + 1)
            m = idx % every == 0
            if m.any():
                mask = m
        ppm = self._ppm[kind]
        if ppm:
            m = self._rng.random(n) < ppm / 1e6
            if m.any():
                mask = m if mask is None else (mask | m)
        return mask
