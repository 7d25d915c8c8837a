"""Power-on counters that outlive the daemon (SMART power cycles, unsafe
shutdowns, power-on hours), kept in DATA_DIR/lifetime.json."""
from __future__ import annotations

import json
import os
import time

NAME = "lifetime.json"


class Lifetime:
    def __init__(self, data_dir: str, clean_before: bool | None):
        self.path = os.path.join(data_dir, NAME)
        try:
            with open(self.path) as f:
                self.data = json.load(f)
        except (FileNotFoundError, ValueError):
            self.data = {"power_cycles": 0, "unsafe_shutdowns": 0, "power_on_s": 0.0}
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
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.path)
