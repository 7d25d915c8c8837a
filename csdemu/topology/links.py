"""The host's PCIe topology and what an array step costs on it.

A topology profile (csdemu/topology/profiles/*.toml, every number with its
source) gives the root complex's lanes, those already taken (the GPU's and
any other device's), the lanes of one drive, and optionally a PCIe switch
(its upstream and downstream lanes). Drives go straight to root ports while
free lanes last; past that the switch takes `upstream_lanes` of the root
complex and the drives that no longer fit behind it share its upstream link.

One array step (csdemu.host.array issues it, csdemu.sysmodel.array models
it) costs
    slowest member's device time
  + q out: the longest of, over every link the drives share, the q bytes
    crossing it / its rate
  + outputs back: the same for the output bytes.
Shared links: the GPU's own link (P2P: every q leaves and every output
enters GPU memory through it) and the switch's upstream link (for the drives
behind it). A drive's own link is in its device time already (its profile's
[pcie]). Transfers on different shared links overlap (cut-through); the two
directions do not (the outputs exist only after the attend). The root
complex itself is taken as non-blocking.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULT = "instinfer-host"

# GB/s per lane after line coding (PCI-SIG base specifications): gen1/2
# 2.5/5 GT/s x 8b/10b, gen3/4/5 8/16/32 GT/s x 128b/130b, gen6 64 GT/s FLIT
# (242/256), each / 8 bits.
PCIE_LANE_GBPS = {1: 0.25, 2: 0.5, 3: 8 * 128 / 130 / 8, 4: 16 * 128 / 130 / 8,
                  5: 32 * 128 / 130 / 8, 6: 64 * 242 / 256 / 8}
# Share of the line rate left after TLP/DLLP framing and flow control that
# copies reach in practice (NVIDIA bandwidthTest, pinned memory: ~12-13 GB/s
# on gen3 x16, ~25 GB/s on gen4 x16).
PCIE_EFFICIENCY = 0.80
LINK_WIDTHS = (1, 2, 4, 8, 16)


class TopologyError(ValueError):
    """A topology profile or an array size it cannot hold; one line."""


@dataclass(frozen=True)
class Switch:
    upstream_lanes: int
    downstream_lanes: int


@dataclass(frozen=True)
class Topology:
    name: str
    description: str
    link_gen: int
    root_complex_lanes: int
    gpu_lanes: int
    drive_lanes: int
    reserved_lanes: int = 0
    efficiency: float = PCIE_EFFICIENCY
    switch: Switch | None = None

    def gbps(self, lanes: int) -> float:
        """GB/s (= bytes per ns) of a link of `lanes` lanes."""
        return PCIE_LANE_GBPS[self.link_gen] * lanes * self.efficiency

    @property
    def free_lanes(self) -> int:
        return self.root_complex_lanes - self.gpu_lanes - self.reserved_lanes

    @property
    def max_drives(self) -> int:
        direct = self.free_lanes // self.drive_lanes
        if self.switch is None:
            return direct
        via = ((self.free_lanes - self.switch.upstream_lanes) // self.drive_lanes
               + self.switch.downstream_lanes // self.drive_lanes)
        return max(direct, via)

    def behind_switch(self, drives: int) -> list[bool]:
        """For each of `drives` drives: is it behind the switch? The last
        ones go there when the root complex runs out of lanes."""
        if drives < 1:
            raise TopologyError(f"an array needs at least one drive, got {drives}")
        if drives > self.max_drives:
            raise TopologyError(f"topology {self.name} holds at most {self.max_drives} drives "
                                f"of x{self.drive_lanes}, not {drives}")
        if drives * self.drive_lanes <= self.free_lanes:
            return [False] * drives
        direct = (self.free_lanes - self.switch.upstream_lanes) // self.drive_lanes
        return [i >= direct for i in range(drives)]

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "switch"}
        out["switch"] = None if self.switch is None else vars(self.switch).copy()
        return out


@dataclass(frozen=True)
class MemberStep:
    """One drive's part of an array step: its modeled device time and the
    bytes it gets from the host and sends back."""
    member: int
    device_ns: int
    bytes_in: int
    bytes_out: int


@dataclass(frozen=True)
class ArrayTime:
    device_ns: int            # the array's modeled time of the step
    slowest_ns: int
    slowest_member: int
    host_in_ns: int           # q (and any appended token) over the shared links
    host_out_ns: int          # outputs back over them
    members: tuple = field(default_factory=tuple)

    @property
    def host_ns(self) -> int:
        return self.host_in_ns + self.host_out_ns


def attend_io_bytes(batch: int, q_heads: int, head_dim: int) -> int:
    """Bytes of q (and of the output) of an attend: float32, as the drive takes them."""
    return batch * q_heads * head_dim * 4


def _link_ns(topo: Topology, behind: list[bool], steps, attr: str) -> int:
    total = sum(getattr(s, attr) for s in steps)
    ns = total / topo.gbps(topo.gpu_lanes)
    if topo.switch is not None:
        via = sum(getattr(s, attr) for s in steps if behind[s.member])
        ns = max(ns, via / topo.gbps(topo.switch.upstream_lanes))
    return math.ceil(ns)


def array_time(topo: Topology, drives: int, steps) -> ArrayTime:
    """The array's time of one step of the members in `steps` (members with
    nothing to do in this step are left out) in an array of `drives`."""
    steps = tuple(steps)
    behind = topo.behind_switch(drives)
    if not steps:
        return ArrayTime(0, 0, -1, 0, 0, steps)
    slow = max(steps, key=lambda s: (s.device_ns, -s.member))
    t_in, t_out = _link_ns(topo, behind, steps, "bytes_in"), _link_ns(topo, behind, steps, "bytes_out")
    return ArrayTime(slow.device_ns + t_in + t_out, slow.device_ns, slow.member, t_in, t_out, steps)


# ------------------------------------------------------------------ profiles

_TOP_KEYS = {"description": str, "link_gen": int, "root_complex_lanes": int, "gpu_lanes": int,
             "drive_lanes": int, "reserved_lanes": int, "efficiency": float}
_SWITCH_KEYS = {"upstream_lanes": int, "downstream_lanes": int}


def _check(where: str, section: str, body: dict, keys: dict) -> dict:
    if not isinstance(body, dict):
        raise TopologyError(f"{where}: [{section}] must be a table")
    for k, v in body.items():
        want = keys.get(k)
        if want is None:
            raise TopologyError(f"{where}: [{section}] unknown key {k!r}")
        if want is str:
            if not isinstance(v, str):
                raise TopologyError(f"{where}: [{section}] {k} must be text, got {v!r}")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or \
                (want is int and v != int(v)):
            kind = "a non-negative integer" if want is int else "a non-negative number"
            raise TopologyError(f"{where}: [{section}] {k} must be {kind}, got {v!r}")
    return body


def load_topology(name_or_path=None) -> Topology:
    """A shipped topology by name (default: instinfer-host) or a .toml path."""
    name_or_path = name_or_path or DEFAULT
    if isinstance(name_or_path, Topology):
        return name_or_path
    p = Path(str(name_or_path))
    if not p.suffix:
        p = PROFILE_DIR / f"{name_or_path}.toml"
    where = f"topology {p.name}"
    try:
        with open(p, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        known = ", ".join(n for n, _ in list_topologies())
        raise TopologyError(f"unknown topology {str(name_or_path)!r} (known: {known})") from None
    except tomllib.TOMLDecodeError as e:
        raise TopologyError(f"{where}: {' '.join(str(e).split())}") from None
    for k in raw:
        if k not in ("topology", "switch"):
            raise TopologyError(f"{where}: unknown table [{k}]")
    top = _check(where, "topology", raw.get("topology"), _TOP_KEYS)
    for k in ("description", "link_gen", "root_complex_lanes", "gpu_lanes", "drive_lanes"):
        if k not in top:
            raise TopologyError(f"{where}: [topology] {k} is required")
    sw = raw.get("switch")
    switch = None
    if sw is not None:
        _check(where, "switch", sw, _SWITCH_KEYS)
        if set(sw) != set(_SWITCH_KEYS):
            raise TopologyError(f"{where}: [switch] needs upstream_lanes and downstream_lanes")
        switch = Switch(int(sw["upstream_lanes"]), int(sw["downstream_lanes"]))
    topo = Topology(p.stem, top["description"], int(top["link_gen"]),
                    int(top["root_complex_lanes"]), int(top["gpu_lanes"]), int(top["drive_lanes"]),
                    int(top.get("reserved_lanes", 0)), float(top.get("efficiency", PCIE_EFFICIENCY)),
                    switch)
    if topo.link_gen not in PCIE_LANE_GBPS:
        raise TopologyError(f"{where}: [topology] link_gen must be one of {sorted(PCIE_LANE_GBPS)}")
    for what, lanes in (("[topology] gpu_lanes", topo.gpu_lanes),
                        ("[topology] drive_lanes", topo.drive_lanes),
                        ("[switch] upstream_lanes", switch.upstream_lanes if switch else 16)):
        if lanes not in LINK_WIDTHS:
            raise TopologyError(f"{where}: {what} must be one of {LINK_WIDTHS}, got {lanes}")
    if not 0 < topo.efficiency <= 1:
        raise TopologyError(f"{where}: [topology] efficiency must be in (0, 1], got {topo.efficiency}")
    if topo.free_lanes < topo.drive_lanes:
        raise TopologyError(f"{where}: no root-complex lanes left for a drive "
                            f"({topo.root_complex_lanes} - {topo.gpu_lanes} - {topo.reserved_lanes})")
    if switch and switch.upstream_lanes > topo.free_lanes:
        raise TopologyError(f"{where}: [switch] upstream_lanes {switch.upstream_lanes} exceed "
                            f"the {topo.free_lanes} free root-complex lanes")
    return topo


def list_topologies() -> list[tuple[str, str]]:
    out = []
    for p in sorted(PROFILE_DIR.glob("*.toml")):
        try:
            desc = tomllib.loads(p.read_text()).get("topology", {}).get("description", "")
        except tomllib.TOMLDecodeError:
            desc = "(unreadable)"
        out.append((p.stem, desc))
    return out
