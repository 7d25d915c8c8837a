"""Default locations. `csdemu start` and `csdemu.connect()` agree on these."""
import os
import stat
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



def socket_dir_problem(socket_path: str, uid: int | None = None) -> str | None:
    """Why a daemon may not listen in `socket_path`'s directory, or None.
    Whoever controls that directory can move the socket aside and answer in
    the daemon's place, so it must be a real directory (not a symlink, whose
    target its owner may change) owned by the user and closed to others
    (0700, as XDG_RUNTIME_DIR is). A missing directory is fine: the daemon
    creates it so."""
    d = os.path.dirname(os.path.abspath(socket_path))
    uid = os.getuid() if uid is None else uid
    try:
        st = os.lstat(d)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return f"socket directory {d} is not a directory (a symlink?)"
    if st.st_uid != uid:
        return f"socket directory {d} is owned by uid {st.st_uid}, not {uid}"
    if st.st_mode & 0o077:
        return (f"socket directory {d} has mode {stat.S_IMODE(st.st_mode):04o}; "
                f"other users could replace the socket, so it must be 0700")
    return None
