"""device.json: what a formatted data dir holds (the profile it was
formatted with, its format version), checked before anything else is
opened, so a damaged one is refused with the reason rather than read as
some other drive.
"""
from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

from csdemu.drive.flash.files import DataDirError
from csdemu.drive.profile import Profile, profile_from_dict

DEVICE_FILE = "device.json"
# 2: OOB CRCs cover lpn and seq as well as the data, and device.json carries
# a checksum; 1 (read still): CRCs of the data alone, no checksum
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def device_record(profile: Profile) -> bytes:
    """device.json's bytes for a drive formatted now with `profile`."""
    stored = {"format_version": FORMAT_VERSION, "name": profile.name, "created": time.time(),
              "profile": profile.to_dict()}
    stored["checksum"] = _checksum(stored)
    return json.dumps(stored, indent=1).encode()


def _checksum(stored: dict) -> int:
    body = {k: v for k, v in stored.items() if k != "checksum"}
    return zlib.crc32(json.dumps(body, sort_keys=True).encode())


def read_device_file(data_dir) -> tuple[dict, Profile]:
    """-> (device.json's contents, the profile stored in it); DataDirError
    saying what is wrong with it otherwise."""
    path = Path(data_dir) / DEVICE_FILE
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataDirError(f"{path} is missing") from None
    except (OSError, ValueError) as e:
        raise DataDirError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(stored, dict):
        raise DataDirError(f"{path} is not a JSON object")
    version = stored.get("format_version")
    if version not in READABLE_VERSIONS:
        raise DataDirError(f"{path}: format_version {version!r} is not one this csdemu reads "
                           f"({', '.join(map(str, READABLE_VERSIONS))})")
    if version >= 2 and stored.get("checksum") != _checksum(stored):
        raise DataDirError(f"{path} fails its checksum (edited or corrupt)")
    try:
        prof = profile_from_dict(stored["profile"], name=str(stored.get("name", "stored")))
    except (KeyError, TypeError, ValueError) as e:
        raise DataDirError(f"{path}: its profile is unusable ({e})") from None
    return stored, prof
