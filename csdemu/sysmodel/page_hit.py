"""Where SparF's page-hit rate comes from: `--page-hit RATE|uniform|paper|measured`.

A page-hit rate is the share of dense attention's flash pages that a SparF
Attend still senses on the same KV (csdemu.sysmodel.csd.Sparsity). Sources:
  * uniform  - none: the top-k tokens spread uniformly (csd.sparse_selection);
  * paper    - the InstInfer paper's "about half" at 1/8, for its models on its
               datasets (hw/page-hit.toml [paper]);
  * measured - csdemu's own `eval-sparse` on SmolLM2, per context length,
               interpolated (hw/page-hit.toml [measured]);
  * RATE     - a number in (0, 1] given by the user;
  * auto     - paper for the paper's models, measured for SmolLM2, else uniform.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TABLE = Path(__file__).resolve().parent / "hw" / "page-hit.toml"
CHOICES = ("uniform", "paper", "measured", "auto")


class PageHitError(ValueError):
    """A --page-hit value that cannot be used; one line."""


@dataclass(frozen=True)
class PageHit:
    kind: str                      # uniform | paper | measured | rate
    source: str                    # what the output names
    contexts: tuple = ()
    rates: tuple = ()

    def rate_at(self, context: int) -> float | None:
        if not self.rates:
            return None
        if len(self.rates) == 1:
            return float(self.rates[0])
        return float(np.interp(context, self.contexts, self.rates))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "source": self.source, "contexts": list(self.contexts),
                "rates": list(self.rates)}


def _table() -> dict:
    with open(TABLE, "rb") as f:
        return tomllib.load(f)


def _from_table(kind: str, ratio: float) -> PageHit:
    t = _table()[kind]
    if abs(ratio - t["ratio"]) > 1e-9:
        raise PageHitError(f"--page-hit {kind}: its figure is for ratio {t['ratio']}, "
                           f"not --sparse {ratio}; give a RATE or uniform")
    rates = t["sensed_vs_dense"]
    rates = tuple(rates) if isinstance(rates, list) else (rates,)
    src = t["description"] + (f"; command: {t['command']}" if "command" in t else "")
    return PageHit(kind, src, tuple(t.get("contexts", ())), rates)


def resolve(spec, model_name: str, ratio: float) -> PageHit:
    """The PageHit of `spec` (a CHOICES word, a number or a PageHit) for a model."""
    if isinstance(spec, PageHit):
        return spec
    word = "auto" if spec is None else str(spec).strip().lower()
    if word == "auto":
        name = str(model_name).lower()
        for kind in ("paper", "measured"):
            t = _table()[kind]
            if any(m in name for m in t["models"]) and abs(ratio - t["ratio"]) < 1e-9:
                return _from_table(kind, ratio)
        word = "uniform"
    if word == "uniform":
        return PageHit("uniform", "uniform rule: top-k spread uniformly over the tokens")
    if word in ("paper", "measured"):
        return _from_table(word, ratio)
    try:
        rate = float(word)
    except ValueError:
        raise PageHitError(f"--page-hit must be a rate in (0, 1] or one of "
                           f"{', '.join(CHOICES)}, got {spec!r}") from None
    if not 0.0 < rate <= 1.0:
        raise PageHitError(f"--page-hit rate must be in (0, 1], got {spec!r}")
    return PageHit("rate", f"given rate {rate:g} of dense's pages", (), (rate,))
