"""Power-on counters that outlive the daemon (SMART power cycles, unsafe
shutdowns, power-on hours), kept in DATA_DIR/lifetime.json.

They are statistics, not data: an unreadable file restarts them from zero
(with a log line), and one that cannot be written (a full disk) leaves the
old one in place."""
from __future__ import annotations

import json
import logging
import os
import time

from csdemu.drive.flash.files import write_atomic

NAME = "lifetime.json"
FIELDS = {"power_cycles": int, "unsafe_shutdowns": int, "power_on_s": float}

log = logging.getLogger("csdemu.drive")


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return dict.fromkeys(FIELDS, 0)
    except (OSError, ValueError) as e:
        log.warning("%s is unreadable (%s): the power-on counters start from zero", path, e)
        return dict.fromkeys(FIELDS, 0)
    if not isinstance(data, dict) or any(
            not isinstance(data.get(k), (int, float)) or isinstance(data.get(k), bool)
            or data.get(k) < 0 for k in FIELDS):
        log.warning("%s does not hold the power-on counters: they start from zero", path)
        return dict.fromkeys(FIELDS, 0)
    return {k: conv(data[k]) for k, conv in FIELDS.items()}


class Lifetime:
    def __init__(self, data_dir: str, clean_before: bool | None):
        self.path = os.path.join(data_dir, NAME)
        self.data = _read(self.path)
        self.data["power_cycles"] += 1
        if clean_before is False:
            self.data["unsafe_shutdowns"] += 1
        self.started = time.monotonic()
        self.save()

    def power_on_hours(self) -> int:
        return int((self.data["power_on_s"] + time.monotonic() - self.started) // 3600)

    def save(self, closing: bool = False) -> None:
        data = dict(self.data)
        if closing:
            data["power_on_s"] += time.monotonic() - self.started
        try:
            write_atomic(self.path, (json.dumps(data).encode(),), sync=closing)
        except OSError as e:
            log.warning("%s not saved: %s", self.path, e)
