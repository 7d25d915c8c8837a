"""Assemble a drive from a profile and a data dir: controller, the flash
block namespace (nsid 1) and the KV manager with its attention engine."""
from __future__ import annotations

import os

from csdemu.drive.controller import Controller, ControllerConfig
from csdemu.drive.flash.checkpoint import shut_down_cleanly
from csdemu.drive.flash.nvm_namespace import DEVICE_FILE, FlashNamespace
from csdemu.drive.kv.manager import KVManager
from csdemu.drive.lifetime import Lifetime
from csdemu.drive.profile import ProfileError, load_profile
from nvme_cmds.features import TimingMode

DEFAULT_PROFILE = "instinfer"
TIMING_MODES = {"virtual": TimingMode.VIRTUAL, "realtime": TimingMode.REALTIME}


def parse_overrides(items) -> dict:
    """["geometry.blocks_per_plane=16", ...] -> {"geometry.blocks_per_plane": 16}."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ProfileError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        for conv in (int, float):
            try:
                value = conv(value)
                break
            except ValueError:
                continue
        out[key.strip()] = value
    return out


def build_controller(data_dir: str, profile: str | None = None, config_file: str | None = None,
                     timing_mode: str | None = None, overrides=None,
                     engine_threads: int = 1) -> tuple[Controller, dict]:
    formatted = os.path.exists(os.path.join(data_dir, DEVICE_FILE))
    clean_before = shut_down_cleanly(data_dir) if formatted else None
    if formatted and not (profile or config_file or overrides):
        ns = FlashNamespace.open(1, data_dir)
        prof = ns.profile
    else:
        prof = load_profile(config_file or profile or DEFAULT_PROFILE, parse_overrides(overrides))
        ns = FlashNamespace(1, prof, data_dir)
    g = prof.geometry
    cfg = ControllerConfig(profile_name=prof.name,
                           timing_mode=TIMING_MODES[timing_mode or prof.device.timing_mode])
    info = {"channels": g.channels, "ways": g.ways, "planes": g.planes,
            "blocks_per_plane": g.blocks_per_plane, "pages_per_block": g.pages_per_block,
            "page_bytes": g.page_bytes, "oob_bytes": g.oob_bytes,
            "channel_mbps": prof.timing.channel_mbps, "pcie_mbps": prof.pcie.bandwidth_mbps,
            "gemv_mflops": int(prof.engine.gemv_gflops * 1000),
            "softmax_kflops": int(prof.engine.softmax_mflops * 1000),
            "filter_mbps": int(prof.engine.filter_mbps), "max_kv_namespaces": 1022,
            "kv_nsid_base": 2}
    ctrl = Controller(cfg, {1: ns}, info)
    ctrl.lifetime = Lifetime(data_dir, clean_before)
    ctrl.kv = KVManager(ns.ftl, prof, engine_threads)
    return ctrl, {"profile": prof.name, "data_dir": data_dir}
