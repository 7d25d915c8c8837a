"""One what-if parameter swept over values: each system's best valid
throughput over the batches at each value (`csdemu reproduce --sweep`)."""
from __future__ import annotations

PARAMS = {
    "channels": ("CSD flash channels", int),
    "channel-gbps": ("CSD bandwidth per channel, GB/s", float),
    "csds": ("CSDs", int),
    "page-hit": ("SparF page-hit rate (share of dense's pages sensed)", str),
}


class SweepError(ValueError):
    """A --sweep value that cannot be used; one line."""


def parse(text: str) -> tuple[str, list]:
    """'PARAM=V1,V2,...' -> (PARAM, [values])."""
    name, sep, vals = str(text).partition("=")
    name = name.strip().lower()
    if not sep or name not in PARAMS:
        raise SweepError(f"--sweep must be PARAM=V1,V2,... with PARAM one of "
                         f"{', '.join(PARAMS)}, got {text!r}")
    kind = PARAMS[name][1]
    out = []
    for v in vals.split(","):
        v = v.strip()
        if not v:
            continue
        try:
            x = kind(v)
        except ValueError:
            raise SweepError(f"--sweep {name}: {v!r} is not a {kind.__name__}") from None
        if kind is not str and x <= 0:
            raise SweepError(f"--sweep {name}: values must be positive, got {v!r}")
        out.append(x)
    if not out:
        raise SweepError(f"--sweep {name}: no values given")
    return name, out


def settings(name: str, value, base: dict) -> dict:
    """reproduce() keyword arguments for one point of the sweep."""
    kw = dict(base)
    ov = dict(kw.get("overrides") or {})
    if name == "channels":
        ov["geometry.channels"] = int(value)
    elif name == "channel-gbps":
        ov["timing.channel_mbps"] = int(round(float(value) * 1000))
    elif name == "csds":
        kw["csds"] = int(value)
    elif name == "page-hit":
        kw["page_hit"] = value
    kw["overrides"] = ov
    return kw


def best_valid(rows, system: str):
    vals = [r["tokens_per_s"] for r in rows if r["system"] == system and not r["oom"]
            and r.get("fits", True) and r["tokens_per_s"] is not None]
    return max(vals) if vals else None


def run(name: str, values, base: dict, reproduce) -> dict:
    """{"param", "label", "values", "best": {system: [best or None per value]}}."""
    best: dict[str, list] = {}
    for v in values:
        rows, _ = reproduce(**settings(name, v, base))
        for s in dict.fromkeys(r["system"] for r in rows):
            best.setdefault(s, []).append(best_valid(rows, s))
    return {"param": name, "label": PARAMS[name][0], "values": list(values), "best": best}
