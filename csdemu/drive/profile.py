"""Device profiles: named TOML presets describing one emulated drive.

A profile is a TOML file with the sections [device], [geometry], [timing],
[pcie], [gc], [faults] and [engine]. `load_profile()` accepts a shipped
profile name (``"instinfer"``), a path to a TOML file or a JSON file written by
`Profile.to_json()`, plus an optional dict of overrides
(``{"geometry.blocks_per_plane": 16}`` or ``{"geometry": {...}}``) that are
validated exactly like the file. Every problem raises `ProfileError` with a
one-line message naming the profile, the section and the key::

    profile instinfer.toml: [timing] tR_ns must be a positive integer, got -3

Field names carry their unit: ``_ns`` nanoseconds, ``_mbps`` 10^6 bytes per
second, ``_bytes`` bytes, ``_pct`` percent, ``_ppm`` parts per million.
Optional knobs default to 0, which means "off / not modeled" (FEMU's rule:
a new knob at 0 keeps behaviour unchanged).

Glossary (as in NVMeVirt's ssd.h):
    page        the mapping unit (page_bytes, 4 KiB): what the FTL maps one LPN to
                and what the NAND layer reads/programs whole; PPNs count these.
    flash page  the NAND sensing/program unit (flash_page_bytes, a multiple of
                page_bytes); one tR reads it, one tPROG programs it.
    block       erase unit: pages_per_block pages on one plane of one LUN.
    plane       blocks_per_plane blocks; planes share their LUN's timing.
    LUN / way   an independently busy die: `ways` of them share one channel.
    channel     a bus with its own transfer bandwidth (channel_mbps).
    line        superblock: the block with the same index on every plane of
                every LUN of every channel; the unit of GC. lines = blocks_per_plane.
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from csdemu.drive.profile_rules import ProfileError, check_value, cross_checks

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"

# --------------------------------------------------------------------------- sections

@dataclass(frozen=True, slots=True)
class DeviceParams:
    description: str
    timing_mode: str = "virtual"          # "virtual" | "realtime"
    lba_size: int = 4096                  # bytes per logical block
    over_provisioning_pct: float = 7.0    # % of raw flash hidden from the host
    write_buffer_bytes: int = 0           # DRAM write buffer (0 = write-through)
    endurance_pe_cycles: int = 3000       # rated program/erase cycles per block
    kv_pct: float = 0.0                   # % of the lines set aside for KV namespaces


@dataclass(frozen=True, slots=True)
class GeometryParams:
    channels: int
    ways: int                             # LUNs per channel
    planes: int                           # planes per LUN
    blocks_per_plane: int
    pages_per_block: int                  # pages of page_bytes
    page_bytes: int = 4096                # mapping unit
    flash_page_bytes: int = 0             # NAND read/program unit; 0 = page_bytes
    oob_bytes: int = 64                   # spare bytes per page


@dataclass(frozen=True, slots=True)
class TimingParams:
    tR_ns: int                            # array read of one flash page
    tPROG_ns: int                         # program of one flash page
    tBERS_ns: int                         # erase of one block
    tR_4k_ns: int = 0                     # read of <= 4 KiB (partial page); 0 = tR_ns
    channel_mbps: int = 0                 # bus bandwidth per channel; 0 = not modeled
    channel_xfer_overhead_ns: int = 0     # fixed cost per channel transfer
    fw_read_ns: int = 0                   # firmware time per read command > 4 KiB
    fw_read_4k_ns: int = 0                # firmware time per read command <= 4 KiB
    fw_write_ns: int = 0                  # firmware time per write command
    fw_write_per_4k_ns: int = 0           # plus this per 4 KiB written
    fw_other_ns: int = 0                  # firmware time per flush / DSM / write zeroes


@dataclass(frozen=True, slots=True)
class PcieParams:
    bandwidth_mbps: int = 0               # host link bandwidth; 0 = not modeled
    latency_ns: int = 0                   # fixed one-way latency per transfer


@dataclass(frozen=True, slots=True)
class GcParams:
    policy: str = "greedy"                # "greedy" | "cost-benefit"
    threshold_pct: float = 75.0           # background GC from this line usage
    threshold_high_pct: float = 95.0      # foreground GC from this line usage
    background_max_valid_pct: float = 12.5  # background victims at most this valid


@dataclass(frozen=True, slots=True)
class FaultParams:
    read_fail_ppm: int = 0
    program_fail_ppm: int = 0
    erase_fail_ppm: int = 0
    bad_block_ppm: int = 0                # factory bad blocks, drawn at format
    read_fail_every: int = 0              # every Nth page read fails (0 = off)
    program_fail_every: int = 0           # every Nth page program fails (0 = off)
    seed: int = 0


# The InstInfer paper's drive has 2 GB of DRAM: the default for profiles
# (and device.json files) written before the key existed.
PAPER_DRAM_BYTES = 2 << 30


@dataclass(frozen=True, slots=True)
class EngineParams:
    gemv_gflops: float = 13.3
    softmax_mflops: float = 15.0
    filter_mbps: float = 1800.0
    kv_dram_bytes: int = PAPER_DRAM_BYTES  # device DRAM for KV group buffers, all namespaces


@dataclass(frozen=True, slots=True)
class DerivedGeometry:
    """Derived geometry, all computed by `Profile.derive()` (NVMeVirt's
    "below are all calculated values")."""
    pages_per_flash_page: int     # S: mapping pages per NAND flash page
    flash_pages_per_block: int
    luns: int                     # channels * ways
    blocks_per_line: int          # channels * ways * planes
    lines: int                    # = blocks_per_plane
    total_blocks: int
    pages_per_line: int
    total_pages: int              # physical mapping pages
    raw_bytes: int                # total_pages * page_bytes
    lbas_per_page: int
    user_pages: int               # host-visible pages: raw * (1 - OP), at most raw - 3 lines
    nlbas: int                    # host-visible logical blocks
    write_buffer_pages: int
    kv_lines: int                 # lines KV namespaces may hold at once


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    device: DeviceParams
    geometry: GeometryParams
    timing: TimingParams
    pcie: PcieParams
    gc: GcParams
    faults: FaultParams
    engine: EngineParams

    def derive(self) -> DerivedGeometry:
        g, d = self.geometry, self.device
        fpb = g.flash_page_bytes or g.page_bytes
        s = fpb // g.page_bytes
        luns = g.channels * g.ways
        bpl = luns * g.planes
        ppl = bpl * g.pages_per_block
        total = ppl * g.blocks_per_plane
        # KV namespaces get whole lines of their own; the block namespace lives
        # on the rest (at least 4 lines), so KV never takes the space it needs.
        kv_lines = max(0, min(int(g.blocks_per_plane * d.kv_pct / 100.0), g.blocks_per_plane - 4))
        host = total - kv_lines * ppl
        # GC needs about three lines of slack (the host's and GC's open lines and
        # one free line), so a small geometry gets more spare than OP asks for
        user = min(int(host * (1.0 - d.over_provisioning_pct / 100.0)), host - 3 * ppl)
        return DerivedGeometry(
            pages_per_flash_page=s,
            flash_pages_per_block=g.pages_per_block // s,
            luns=luns,
            blocks_per_line=bpl,
            lines=g.blocks_per_plane,
            total_blocks=bpl * g.blocks_per_plane,
            pages_per_line=ppl,
            total_pages=total,
            raw_bytes=total * g.page_bytes,
            lbas_per_page=g.page_bytes // d.lba_size,
            user_pages=user,
            nlbas=user * (g.page_bytes // d.lba_size),
            write_buffer_pages=d.write_buffer_bytes // g.page_bytes,
            kv_lines=kv_lines,
        )

    def to_dict(self) -> dict:
        return {sec: asdict(getattr(self, sec)) for sec in _SECTIONS}

    def to_json(self) -> str:
        return json.dumps({"name": self.name, **self.to_dict()}, indent=1, sort_keys=True)


_SECTIONS = {
    "device": DeviceParams,
    "geometry": GeometryParams,
    "timing": TimingParams,
    "pcie": PcieParams,
    "gc": GcParams,
    "faults": FaultParams,
    "engine": EngineParams,
}

def _flatten_overrides(where: str, overrides) -> dict[tuple[str, str], object]:
    out: dict[tuple[str, str], object] = {}
    for k, v in (overrides or {}).items():
        if isinstance(v, dict) and "." not in k:
            for k2, v2 in v.items():
                out[(k, k2)] = v2
            continue
        if not isinstance(k, str) or k.count(".") != 1:
            raise ProfileError(f"{where}: override {k!r} must be 'section.key'")
        sec, key = k.split(".")
        out[(sec, key)] = v
    return out


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_capacity(where: str, v) -> int:
    """"2T", "512G", "1.5T" or a number of bytes -> bytes (binary units)."""
    if isinstance(v, bool):
        raise ProfileError(f"{where}: [device] capacity must be bytes or a size like 2T, got {v!r}")
    if isinstance(v, (int, float)):
        n = v
    else:
        text = str(v).strip().upper().removesuffix("IB").removesuffix("B")
        unit = text[-1:] if text[-1:] in _UNITS else ""
        try:
            n = float(text[:-1] if unit else text) * _UNITS[unit]
        except ValueError:
            raise ProfileError(f"{where}: [device] capacity must be bytes or a size like 2T, "
                               f"got {v!r}") from None
    if n <= 0:
        raise ProfileError(f"{where}: [device] capacity must be positive, got {v!r}")
    return int(n)


def _apply_capacity(where: str, merged: dict, overridden: set) -> None:
    """[device] capacity (raw flash bytes) -> [geometry] blocks_per_plane:
    the fewest whole lines that hold it."""
    cap = merged.get("device", {}).pop("capacity", None)
    if cap is None:
        return
    if ("geometry", "blocks_per_plane") in overridden and ("device", "capacity") in overridden:
        raise ProfileError(f"{where}: give device.capacity or geometry.blocks_per_plane, not both")
    g = merged.setdefault("geometry", {})
    try:
        line = (int(g["channels"]) * int(g["ways"]) * int(g["planes"]) * int(g["pages_per_block"])
                * int(g.get("page_bytes", 4096)))
    except (KeyError, TypeError, ValueError):
        raise ProfileError(f"{where}: [device] capacity needs [geometry] channels, ways, planes "
                           "and pages_per_block") from None
    g["blocks_per_plane"] = max(1, -(-parse_capacity(where, cap) // line))


def profile_from_dict(raw: dict, *, name: str, where: str | None = None,
                      overrides=None) -> Profile:
    """Validate a parsed profile dict (sections -> keys) plus overrides."""
    where = where or f"profile {name}"
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: top level must be a table")
    merged: dict[str, dict] = {}
    for sec, body in raw.items():
        if sec in ("name", "extends"):
            continue
        if sec not in _SECTIONS:
            raise ProfileError(f"{where}: unknown section [{sec}]")
        if not isinstance(body, dict):
            raise ProfileError(f"{where}: [{sec}] must be a table, got {body!r}")
        merged[sec] = dict(body)
    flat = _flatten_overrides(where, overrides)
    for (sec, key), v in flat.items():
        if sec not in _SECTIONS:
            raise ProfileError(f"{where}: override names unknown section [{sec}]")
        merged.setdefault(sec, {})[key] = v
    _apply_capacity(where, merged, set(flat))

    built = {}
    for sec, cls in _SECTIONS.items():
        body = merged.get(sec, {})
        known = {f.name for f in fields(cls)}
        for key in body:
            if key not in known:
                raise ProfileError(f"{where}: [{sec}] unknown key {key!r}")
        kwargs = {}
        for f in fields(cls):
            if f.name in body:
                kwargs[f.name] = check_value(where, sec, f.name, body[f.name])
            elif f.default is MISSING:
                raise ProfileError(f"{where}: [{sec}] missing required key {f.name!r}")
        built[sec] = cls(**kwargs)
    prof = Profile(name=name, **built)
    cross_checks(where, prof)
    return prof


def _resolve(name_or_path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".toml", ".json") and p.exists():
        return p
    cand = PROFILE_DIR / f"{name_or_path}.toml"
    if cand.exists():
        return cand
    if p.exists():
        return p
    raise ProfileError(f"profile {name_or_path}: no such profile (shipped: "
                       f"{', '.join(n for n, _ in list_profiles())})")


def load_profile(name_or_path, overrides=None) -> Profile:
    """Load a shipped profile by name, or a .toml/.json file by path, and
    apply `overrides` ({"section.key": value} or {"section": {key: value}})."""
    if isinstance(name_or_path, Profile):
        if not overrides:
            return name_or_path
        return profile_from_dict(name_or_path.to_dict(), name=name_or_path.name,
                                 overrides=overrides)
    path = _resolve(name_or_path)
    where = f"profile {path.name}"
    try:
        if path.suffix == ".json":
            raw = json.loads(path.read_text())
        else:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ProfileError(f"{where}: {' '.join(str(e).split())}") from None
    except OSError as e:
        raise ProfileError(f"{where}: {e.strerror}") from None
    name = raw.get("name") if path.suffix == ".json" else path.stem
    raw = _extended(raw, path, where, [path.resolve()])
    return profile_from_dict(raw, name=str(name or path.stem), where=where, overrides=overrides)


def _extended(raw: dict, path: Path, where: str, seen: list) -> dict:
    """A profile that names a base (`extends = "instinfer"`, a shipped name or
    a path relative to it) -> the base's sections with this one's keys over them."""
    base_name = raw.get("extends")
    if base_name is None:
        return raw
    if not isinstance(base_name, str):
        raise ProfileError(f"{where}: extends must be a profile name or path, got {base_name!r}")
    rel = path.parent / base_name
    base_path = rel if rel.suffix == ".toml" and rel.exists() else _resolve(base_name)
    if base_path.resolve() in seen:
        raise ProfileError(f"{where}: extends {base_name!r} loops back on itself")
    try:
        with open(base_path, "rb") as f:
            base = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ProfileError(f"{where}: extends {base_name!r}: {' '.join(str(e).split())}") from None
    base = _extended(base, base_path, f"profile {base_path.name}", seen + [base_path.resolve()])
    out = {sec: dict(body) if isinstance(body, dict) else body for sec, body in base.items()}
    for sec, body in raw.items():
        if sec == "extends":
            continue
        if isinstance(body, dict) and isinstance(out.get(sec), dict):
            out[sec].update(body)
        else:
            out[sec] = body
    out.pop("extends", None)
    return out


def list_profiles() -> list[tuple[str, str]]:
    """[(name, one-line description)] of the shipped profiles."""
    out = []
    for p in sorted(PROFILE_DIR.glob("*.toml")):
        try:
            with open(p, "rb") as f:
                desc = tomllib.load(f).get("device", {}).get("description", "")
        except (OSError, tomllib.TOMLDecodeError):
            desc = "(unreadable)"
        out.append((p.stem, " ".join(str(desc).split())))
    return out
