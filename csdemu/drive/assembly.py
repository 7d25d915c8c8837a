"""Assemble a drive from a profile and a data dir: controller, the flash
block namespace (nsid 1) and the KV manager with its attention engine.

The data dir is the drive. `build_controller` first takes it (an exclusive
flock held for the daemon's life, so a second daemon cannot share it), then
decides, before writing anything: open the drive device.json describes;
format an empty dir; or refuse, with the reason, a dir whose device.json is
missing or damaged while backing files remain -- formatting over them
needs `--format`.
"""
from __future__ import annotations

import fcntl
import os

from csdemu.drive.controller import Controller, ControllerConfig
from csdemu.drive.flash.checkpoint import CKPT_NAME, JOURNAL_NAME, shut_down_cleanly
from csdemu.drive.flash.device_file import DEVICE_FILE, read_device_file
from csdemu.drive.flash.files import BackingError, DataDirError, open_private, tighten
from csdemu.drive.flash.nand import NandArray
from csdemu.drive.flash.nvm_namespace import FlashNamespace
from csdemu.drive.kv.manager import KVManager
from csdemu.drive.lifetime import NAME as LIFETIME_FILE
from csdemu.drive.lifetime import Lifetime
from csdemu.drive.profile import ProfileError, load_profile
from csdemu.drive.trace import DEFAULT_LIMIT, Tracer
from nvme_cmds.features import TimingMode

DEFAULT_PROFILE = "instinfer"
TIMING_MODES = {"virtual": TimingMode.VIRTUAL, "realtime": TimingMode.REALTIME}
LOCK_FILE = "daemon.lock"        # flocked for the daemon's life; holds its pid
# what a formatted drive leaves in its data dir, besides device.json
BACKING_FILES = (NandArray.DATA, NandArray.OOB, NandArray.BLOCKS, CKPT_NAME, JOURNAL_NAME)
# what --format removes: the drive and its history (a new drive starts at power cycle 0)
FORMAT_REMOVES = BACKING_FILES + (DEVICE_FILE, LIFETIME_FILE)


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


def lock_data_dir(data_dir: str) -> int:
    """Take the data dir for this process's life -> the lock's fd (keep it
    open). DataDirError naming the holder's pid if a daemon has it."""
    path = os.path.join(data_dir, LOCK_FILE)
    fd = open_private(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirError(f"data dir {data_dir} is in use by csdemu daemon pid {holder} "
                           f"(it holds {path}); stop it or give another --data-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def format_data_dir(data_dir: str) -> None:
    """--format: remove the drive the data dir holds (and any half-written
    replacement of its files), leaving the lock and the log."""
    for name in FORMAT_REMOVES:
        for path in (os.path.join(data_dir, name), os.path.join(data_dir, name + ".tmp")):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def open_drive(data_dir: str, profile: str | None, config_file: str | None, overrides,
               *, fmt: bool = False, preallocate: bool = False) -> FlashNamespace:
    """The flash namespace of the data dir (see the module doc)."""
    stored = None
    if os.path.exists(os.path.join(data_dir, DEVICE_FILE)):
        try:
            stored = read_device_file(data_dir)[1]
        except DataDirError as e:
            if not fmt:
                raise DataDirError(f"{e}; the drive's files are kept: start with --format to "
                                   f"erase them and format a new drive") from None
    else:
        left = [n for n in BACKING_FILES if os.path.exists(os.path.join(data_dir, n))]
        if left and not fmt:
            raise DataDirError(f"{data_dir} holds a drive's files ({', '.join(left)}) but no "
                               f"{DEVICE_FILE}, so its format is unknown; start with --format "
                               f"to erase them and format a new drive")
    chosen = profile or config_file or overrides
    if fmt:
        format_data_dir(data_dir)
        if not chosen and stored is not None:        # same drive model, new contents
            return FlashNamespace(1, stored, data_dir, preallocate=preallocate)
    if stored is not None and not chosen:
        return FlashNamespace(1, stored, data_dir, preallocate=preallocate)
    prof = load_profile(config_file or profile or DEFAULT_PROFILE, parse_overrides(overrides))
    return FlashNamespace(1, prof, data_dir, preallocate=preallocate)


def build_controller(data_dir: str, profile: str | None = None, config_file: str | None = None,
                     timing_mode: str | None = None, overrides=None,
                     engine_threads: int = 1, *, fmt: bool = False,
                     preallocate: bool = False, causal_arrival: bool = True,
                     trace: str | None = None,
                     trace_limit: int | None = None) -> tuple[Controller, dict]:
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    lock = lock_data_dir(data_dir)
    try:
        tighten(data_dir)
        formatted = os.path.exists(os.path.join(data_dir, DEVICE_FILE)) and not fmt
        clean_before = shut_down_cleanly(data_dir) if formatted else None
        try:
            ns = open_drive(data_dir, profile, config_file, overrides, fmt=fmt,
                            preallocate=preallocate)
        except BackingError as e:                # e.g. --preallocate on a disk too small
            raise DataDirError(f"{data_dir}: {e}") from None
    except BaseException:
        os.close(lock)
        raise
    prof = ns.profile
    g = prof.geometry
    cfg = ControllerConfig(profile_name=prof.name,
                           timing_mode=TIMING_MODES[timing_mode or prof.device.timing_mode],
                           causal_arrival=causal_arrival)
    info = {"channels": g.channels, "ways": g.ways, "planes": g.planes,
            "blocks_per_plane": g.blocks_per_plane, "pages_per_block": g.pages_per_block,
            "page_bytes": g.page_bytes, "oob_bytes": g.oob_bytes,
            "channel_mbps": prof.timing.channel_mbps, "pcie_mbps": prof.pcie.bandwidth_mbps,
            "gemv_mflops": int(prof.engine.gemv_gflops * 1000),
            "softmax_kflops": int(prof.engine.softmax_mflops * 1000),
            "filter_mbps": int(prof.engine.filter_mbps), "max_kv_namespaces": 1022,
            "kv_nsid_base": 2}
    ctrl = Controller(cfg, {1: ns}, info)
    ctrl.data_dir_lock = lock           # released when the daemon exits, however it exits
    ctrl.lifetime = Lifetime(data_dir, clean_before)
    ctrl.kv = KVManager(ns.ftl, prof, engine_threads)
    d = prof.derive()
    geometry = {"channels": g.channels, "ways": g.ways, "planes": g.planes,
                "lines": d.lines, "kv_lines": d.kv_lines, "pages_per_block": g.pages_per_block,
                "page_bytes": g.page_bytes}
    if trace:
        ctrl.trace_to(Tracer(trace, ns.ftl.clocks, geometry, {
            "name": prof.name, "tR_ns": prof.timing.tR_ns, "channel_mbps": prof.timing.channel_mbps,
            "pcie_mbps": prof.pcie.bandwidth_mbps, "pcie_latency_ns": prof.pcie.latency_ns},
            trace_limit or DEFAULT_LIMIT))
    return ctrl, {"profile": prof.name, "data_dir": data_dir, "geometry": geometry,
                  "raw_bytes": d.raw_bytes, "user_bytes": d.nlbas * prof.device.lba_size,
                  "overrides": list(overrides or ()), "trace": trace}
