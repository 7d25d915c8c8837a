"""Assemble a drive: controller + namespaces from a profile and a data dir."""
from __future__ import annotations

from csdemu.controller import Controller, ControllerConfig
from csdemu.ns_memory import MemoryNamespace


def build_controller(data_dir: str, profile: str | None = None, config_file: str | None = None,
                     timing_mode: str | None = None) -> tuple[Controller, dict]:
    cfg = ControllerConfig(profile_name=profile or "memory")
    if timing_mode is not None:
        cfg.timing_mode = {"virtual": 0, "realtime": 1}[timing_mode]
    ns = MemoryNamespace(1)
    ctrl = Controller(cfg, {1: ns})
    return ctrl, {"profile": cfg.profile_name, "data_dir": data_dir}
