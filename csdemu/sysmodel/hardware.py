"""Host, GPU and SSD profiles (csdemu/sysmodel/hw/*.toml) and PCIe links.

A hardware profile is a TOML file with any of the sections [gpu], [host],
[ssd]; every number carries its datasheet source as a comment. The CSDs are
the daemon's own profiles (csdemu.drive.profile.load_profile). One more section,
[flexgen] (hw/flexgen.toml), describes FlexGen's software path to the disk
(measured by FlexGen's authors, cited in the file): it is a property of the
baseline's code, not of the SSD, so it lives apart from the SSD datasheet.

PCIe: a link of generation g and width w moves
    raw(g) * w * EFFICIENCY  bytes/s,
with raw per-lane rates from the PCI-SIG base specifications after line
coding (gen3/4/5: 8/16/32 GT/s x 128/130 / 8 = 0.985/1.969/3.938 GB/s; gen1/2:
2.5/5 GT/s x 8/10 / 8) and EFFICIENCY = 0.80, the share left after TLP/DLLP
framing and flow control that host<->GPU copies reach in practice (NVIDIA
bandwidthTest, pinned memory: ~12-13 GB/s on gen3 x16, ~25 GB/s on gen4 x16).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from csdemu.topology.links import PCIE_EFFICIENCY, PCIE_LANE_GBPS   # one table for both

HW_DIR = Path(__file__).resolve().parent / "hw"


class HardwareError(ValueError):
    """A hardware profile could not be used; one line naming the key."""


def pcie_gbps(gen: int, width: int, efficiency: float = PCIE_EFFICIENCY) -> float:
    if gen not in PCIE_LANE_GBPS:
        raise HardwareError(f"PCIe generation must be one of {sorted(PCIE_LANE_GBPS)}, got {gen!r}")
    if width not in (1, 2, 4, 8, 16):
        raise HardwareError(f"PCIe width must be 1, 2, 4, 8 or 16, got {width!r}")
    return PCIE_LANE_GBPS[gen] * width * efficiency


@dataclass(frozen=True)
class Gpu:
    description: str
    memory_gb: float
    mem_bw_gbps: float
    fp16_tflops: float
    fp32_tflops: float = 0.0
    runtime_reserve_gb: float = 0.5
    link_gen: int = 4
    link_width: int = 16

    @property
    def link_gbps(self) -> float:
        return pcie_gbps(self.link_gen, self.link_width)


@dataclass(frozen=True)
class Host:
    description: str
    memory_gb: float
    mem_bw_gbps: float
    os_reserve_gb: float = 4.0
    page_cluster: int = 8


@dataclass(frozen=True)
class Ssd:
    description: str
    read_gbps: float
    write_gbps: float
    rand_read_iops_qd1: float = 20000.0
    rand_write_iops_qd1: float = 50000.0
    capacity_gb: float = 1000.0
    block_bytes: int = 4096
    link_gen: int = 4
    link_width: int = 4


@dataclass(frozen=True)
class FlexGenPath:
    description: str
    disk_read_fraction: float = 1.0     # share of the SSD's rated read FlexGen's path reaches
    disk_write_fraction: float = 1.0    # same for writes
    relay_buffer_elems: int = 1 << 30   # pinned relay of each copy thread, in fp16 elements
    gds_read_fraction: float = 1.0      # share of the SSD's rated read cuFile reaches (FlexGen-GDS)
    gds_write_fraction: float = 1.0     # same for writes

    def __post_init__(self):
        for k in ("disk_read_fraction", "disk_write_fraction", "gds_read_fraction",
                  "gds_write_fraction"):
            v = getattr(self, k)
            if not 0.0 < v <= 1.0:
                raise HardwareError(f"[flexgen] {k} must be in (0, 1], got {v!r}")


@dataclass(frozen=True)
class Vllm:
    description: str
    gpu_memory_utilization: float = 0.9
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    watermark: float = 0.01

    def __post_init__(self):
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise HardwareError(f"[vllm] gpu_memory_utilization must be in (0, 1], "
                                f"got {self.gpu_memory_utilization!r}")
        for k in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            if int(getattr(self, k)) < 1 or getattr(self, k) != int(getattr(self, k)):
                raise HardwareError(f"[vllm] {k} must be a positive integer, got {getattr(self, k)!r}")


@dataclass(frozen=True)
class Hardware:
    gpu: Gpu
    host: Host
    ssd: Ssd
    flexgen: FlexGenPath = FlexGenPath("rated SSD bandwidth (no software loss)")
    vllm: Vllm = Vllm("vLLM defaults")

    def with_(self, **kw) -> "Hardware":
        return replace(self, **kw)


_CLASSES = {"gpu": Gpu, "host": Host, "ssd": Ssd, "flexgen": FlexGenPath, "vllm": Vllm}
DEFAULTS = {"gpu": "a6000", "host": "xeon-ddr4-96g", "ssd": "980pro", "flexgen": "flexgen",
            "vllm": "vllm"}


def _load_section(kind: str, name_or_path) -> object:
    p = Path(str(name_or_path))
    if not p.suffix:
        p = HW_DIR / f"{name_or_path}.toml"
    where = f"{kind} profile {p.name}"
    try:
        with open(p, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        known = ", ".join(sorted(x.stem for x in HW_DIR.glob("*.toml")
                                 if kind in tomllib.loads(x.read_text())))
        raise HardwareError(f"unknown {kind} profile {name_or_path!r} (known: {known})") from None
    except tomllib.TOMLDecodeError as e:
        raise HardwareError(f"{where}: {' '.join(str(e).split())}") from None
    body = raw.get(kind)
    if not isinstance(body, dict):
        raise HardwareError(f"{where}: missing [{kind}] table")
    cls = _CLASSES[kind]
    known = {f.name: f for f in fields(cls)}
    for k in body:
        if k not in known:
            raise HardwareError(f"{where}: [{kind}] unknown key {k!r}")
    for k, v in body.items():
        if k == "description":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise HardwareError(f"{where}: [{kind}] {k} must be a non-negative number, got {v!r}")
    try:
        return cls(**body)
    except TypeError as e:
        raise HardwareError(f"{where}: [{kind}] {e}") from None
    except HardwareError as e:
        raise HardwareError(f"{where}: {e}") from None


def load_hardware(gpu=None, host=None, ssd=None, flexgen=None, vllm=None) -> Hardware:
    return Hardware(_load_section("gpu", gpu or DEFAULTS["gpu"]),
                    _load_section("host", host or DEFAULTS["host"]),
                    _load_section("ssd", ssd or DEFAULTS["ssd"]),
                    _load_section("flexgen", flexgen or DEFAULTS["flexgen"]),
                    _load_section("vllm", vllm or DEFAULTS["vllm"]))
