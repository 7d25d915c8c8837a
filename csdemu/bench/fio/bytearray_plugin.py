"""Baseline for the fio benchmark: nbdkit's Python plugin serving a plain bytearray.

    nbdkit python csdemu/bench/fio/bytearray_plugin.py size=256M

The smallest useful plugin: no device behind it, so fio through it measures
nbdkit + the embedded Python interpreter alone (the transport csdemu's own
plugin also pays). Same thread model and capabilities as csdemu/nbd/plugin.py.
"""
import nbdkit

API_VERSION = 2

_size = 64 << 20
disk = None


def config(key, value):
    global _size
    if key == "size":
        _size = nbdkit.parse_size(value)
    else:
        raise RuntimeError(f"unknown parameter {key!r} (size)")


def config_complete():
    global disk
    disk = bytearray(_size)


def thread_model():
    return nbdkit.THREAD_MODEL_PARALLEL


def open(readonly):  # noqa: A001
    return 1


def get_size(h):
    return len(disk)


def can_flush(h):
    return True


def can_trim(h):
    return True


def can_zero(h):
    return True


def can_fua(h):
    return nbdkit.FUA_NATIVE


def can_multi_conn(h):
    return True


def pread(h, buf, offset, flags):
    buf[:] = disk[offset:offset + len(buf)]


def pwrite(h, buf, offset, flags):
    disk[offset:offset + len(buf)] = buf


def flush(h, flags):
    pass


def trim(h, count, offset, flags):
    disk[offset:offset + count] = bytearray(count)


def zero(h, count, offset, flags):
    disk[offset:offset + count] = bytearray(count)
