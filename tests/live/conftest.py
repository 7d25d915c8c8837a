import pytest

from csdemu.host.spawn import DaemonProcess


@pytest.fixture(scope="session")
def daemon():
    """One real daemon process for the transport tests (temp dir, own socket)."""
    d = DaemonProcess(extra_args=["--poll-idle-us", "2000"]).start()
    yield d
    d.cleanup()


@pytest.fixture
def dev(daemon):
    import csdemu
    with csdemu.connect(daemon.socket_path) as device:
        yield device


@pytest.fixture(scope="module")
def small_dev():
    """A client of a small drive of the module's own (tools.torture.common.SMALL_DRIVE)."""
    import csdemu
    from tools.torture.common import small_daemon
    d = small_daemon().start()
    with csdemu.connect(d.socket_path) as device:
        yield device
    d.cleanup()
