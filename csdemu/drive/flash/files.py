"""Files of a data dir: private (0600), replaced atomically, never left half
written.

The data dir holds a drive's contents, so no other local user may read it:
every file is created 0600 whatever the umask, and `tighten()` closes files
an older csdemu left 0644. A file replaced whole (checkpoint, journal,
device.json, lifetime.json) is written to NAME.tmp, fsynced and renamed
over NAME; a failure (a full disk) removes the .tmp and leaves NAME as it
was.
"""
from __future__ import annotations

import errno
import mmap
import os
import stat
from pathlib import Path

PRIVATE = 0o600        # owner read/write: the drive's data is the user's alone
# errnos that mean the backing file system has no room (EFBIG: RLIMIT_FSIZE
# or the file system's file size limit): the command gets Capacity Exceeded
NO_SPACE = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EFBIG))


class DataDirError(ValueError):
    """The data dir cannot be used as it is (in use, damaged, or holding
    a drive the command would destroy); the message says why, in one line."""


def open_private(path, flags: int) -> int:
    """os.open with O_CREAT at 0600, also closing an existing file to others."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, PRIVATE)
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077 and st.st_uid == os.getuid():
            os.fchmod(fd, PRIVATE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def fsync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(path, fill, sync: bool) -> None:
    """Write a temporary file with fill(fd), then rename it over `path`.
    On any error the temporary file is removed and `path` is untouched."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    fd = open_private(tmp, os.O_WRONLY | os.O_TRUNC)
    try:
        fill(fd)
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    os.replace(tmp, path)
    if sync:
        fsync_dir(os.path.dirname(path) or ".")


def write_atomic(path, chunks, *, sync: bool = True) -> None:
    """Replace `path` with the bytes of `chunks` (buffers), 0600. On any
    error the temporary file is removed and `path` is untouched."""
    def fill(fd):
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            while view.nbytes:
                n = os.write(fd, view)
                view = view[n:]
    _replace(path, fill, sync)


def write_atomic_at(path, pieces, size: int) -> None:
    """write_atomic of a file of `size` bytes from (offset, buffer) pieces;
    bytes no piece covers stay holes (read back as zeros)."""
    def fill(fd):
        for off, buf in pieces:
            pwrite_all(fd, buf, off)
        os.ftruncate(fd, size)
    _replace(path, fill, True)


def tighten(data_dir) -> list[str]:
    """chmod 0600 every regular file of ours in `data_dir` that others could
    read; -> the names changed."""
    changed = []
    for entry in os.scandir(data_dir):
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077 and st.st_uid == os.getuid():
            os.chmod(entry.path, PRIVATE)
            changed.append(entry.name)
    return changed


class BackingError(RuntimeError):
    """A backing file refused a write (disk full, I/O error). Nothing of the
    failed operation is stored; `full` says whether it was a lack of space."""

    def __init__(self, err: int, what: str):
        self.errno = err or errno.EIO
        super().__init__(f"{what}: {os.strerror(self.errno)}")

    @property
    def full(self) -> bool:
        return self.errno in NO_SPACE


def map_file(path: Path, nbytes: int, create: bool, mismatch=DataDirError):
    if not create and not os.path.exists(path):
        raise mismatch(f"{path} is missing")
    fd = open_private(path, os.O_RDWR | (os.O_TRUNC if create else 0))
    try:
        if create:
            os.ftruncate(fd, nbytes)
        elif os.fstat(fd).st_size != nbytes:
            raise mismatch(f"{path}: size {os.fstat(fd).st_size} does not match the "
                           f"profile's geometry ({nbytes} bytes)")
        mm = mmap.mmap(fd, nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            # The attention kernels read 4 KiB pages in FTL order, a TLB miss
            # each on 4 KiB mappings; file systems with large folios (ext4
            # here) map the page cache by 2 MiB, more of it when advised.
            try:
                mm.madvise(mmap.MADV_HUGEPAGE)
            except OSError:             # a kernel without THP: 4 KiB it is
                pass
    except BaseException:
        os.close(fd)
        raise
    return fd, mm


def reserve(fd: int, off: int, nbytes: int, what: str) -> None:
    try:
        os.posix_fallocate(fd, off, nbytes)
    except OSError as e:
        raise BackingError(e.errno, f"reserving {nbytes} bytes of {what}") from None


def pwrite_all(fd: int, buf, off: int) -> None:
    """pwrite every byte or raise OSError: a full file system returns a short
    count first and ENOSPC only on the next call."""
    view = memoryview(buf).cast("B")
    while view.nbytes:
        n = os.pwrite(fd, view, off)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view, off = view[n:], off + n
