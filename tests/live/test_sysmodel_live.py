"""The system model against a live drive: one timing code for both."""
import numpy as np

from csdemu.drive.profile import load_profile
from csdemu.sysmodel.csd import csd_attend_ns


def test_live_daemon_attend_time_equals_the_system_model(daemon):
    """One timing code: a live drive reports exactly what the model computes."""
    import time

    import csdemu
    prof = load_profile("instinfer")
    lens = [64, 128, 32, 96]           # whole page groups: every group is on flash
    with csdemu.connect(daemon.socket_path) as dev:
        kv = dev.create_kv_namespace(layers=1, q_heads=4, kv_heads=2, head_dim=128)
        try:
            rng = np.random.default_rng(0)
            for i, L in enumerate(lens):
                k = rng.standard_normal((1, L, 2, 128))
                kv.append(0, [i], k, k)
            time.sleep(0.2)            # let the programs finish: the drive is idle again
            kv.attend(0, list(range(len(lens))), np.ones((len(lens), 4, 128), np.float32))
            live = kv.last.device_ns
        finally:
            kv.delete()
    assert live == csd_attend_ns(prof, 4, 2, 128, lens, 2, 16)
