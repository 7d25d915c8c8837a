"""Default locations. `csdemu start` and `csdemu.connect()` agree on these."""
import os
from pathlib import Path


def default_socket() -> str:
    """$CSDEMU_SOCKET, else $XDG_RUNTIME_DIR/csdemu.sock, else /tmp/csdemu-UID/csdemu.sock."""
    env = os.environ.get("CSDEMU_SOCKET")
    if env:
        return env
    run = os.environ.get("XDG_RUNTIME_DIR")
    if run and os.path.isdir(run):
        return os.path.join(run, "csdemu.sock")
    return os.path.join(f"/tmp/csdemu-{os.getuid()}", "csdemu.sock")


def default_data_dir() -> str:
    """$CSDEMU_DATA_DIR, else ~/.local/share/csdemu."""
    env = os.environ.get("CSDEMU_DATA_DIR")
    if env:
        return env
    return str(Path.home() / ".local" / "share" / "csdemu")

