"""Virtual and realtime timing modes on a real daemon: a realtime completion
is held until the command's modeled time has passed; a virtual one is posted
as soon as the work is done. A 20 ms tPROG makes a one-block FUA write cheap
to emulate but slow on the modeled drive."""
import time

import numpy as np

import csdemu
from csdemu.host.spawn import DaemonProcess
from nvme_cmds.features import FeatureId, TimingMode

SLOW_PROGRAM = ["--set", "timing.tPROG_ns=20000000"]


def fua_write_ns(dev, lba):
    """(wall ns, modeled ns) of a one-block FUA write."""
    t0 = time.perf_counter_ns()
    modeled = dev.write(lba, np.ones(4096, np.uint8), fua=True)
    return time.perf_counter_ns() - t0, modeled


def test_set_features_switches_virtual_and_realtime():
    with DaemonProcess(extra_args=SLOW_PROGRAM) as d, csdemu.connect(d.socket_path) as dev:
        assert dev.get_feature(FeatureId.TIMING_MODE) == TimingMode.VIRTUAL
        fua_write_ns(dev, 9)                                      # first-use set-up off the clock
        wall, modeled = fua_write_ns(dev, 10)
        assert modeled >= 20_000_000 and wall < modeled / 2      # virtual: not held
        dev.set_timing_mode(True)
        assert dev.get_feature(FeatureId.TIMING_MODE) == TimingMode.REALTIME
        wall, modeled = fua_write_ns(dev, 11)
        assert modeled >= 20_000_000 and wall >= modeled          # realtime: held
        dev.set_timing_mode(False)
        wall, modeled = fua_write_ns(dev, 12)
        assert wall < modeled / 2


def test_realtime_by_flag():
    with DaemonProcess(extra_args=SLOW_PROGRAM + ["--timing", "realtime"]) as d, \
            csdemu.connect(d.socket_path) as dev:
        assert dev.get_feature(FeatureId.TIMING_MODE) == TimingMode.REALTIME
        assert dev.identify()["vs"]["timing_mode"] == TimingMode.REALTIME
        wall, modeled = fua_write_ns(dev, 0)
        assert wall >= modeled >= 20_000_000


def test_switch_to_realtime_starts_a_fresh_timeline():
    """Virtual mode lets modeled work run far ahead of the wall clock (here 40
    MiB of writes at QD1 behind 20 ms programs: each write waits, in modeled
    time, for room in the write buffer, and the next arrives after it);
    switching to real time must not turn that lead into real waiting."""
    with DaemonProcess(extra_args=SLOW_PROGRAM) as d, csdemu.connect(d.socket_path) as dev:
        fua_write_ns(dev, 9)
        t0 = time.perf_counter_ns()
        modeled = sum(dev.write(1000 + 256 * i, np.ones(1 << 20, np.uint8)) for i in range(40))
        wall = time.perf_counter_ns() - t0
        assert modeled >= 1_000_000_000 and wall < modeled / 2    # modeled time far ahead
        dev.set_timing_mode(True)
        wall, modeled = fua_write_ns(dev, 11)
        assert 20_000_000 <= modeled < 200_000_000 and wall >= modeled
