"""Reads of any size (issue 20, item 6): a 2 GiB kv.read comes back whole,
split by the library into commands that fit the staging buffer and MDTS,
where one command used to fail with 'arena exhausted'."""
import numpy as np
import pytest

import csdemu
from csdemu.host.spawn import DaemonProcess

HKV, D = 8, 128
TOKENS = (2 << 30) // (2 * HKV * D * 2)          # K and V of fp16: 2 GiB in all


@pytest.fixture(scope="module")
def drive():
    d = DaemonProcess(profile="instinfer").start()     # 4 GiB raw, 3 GiB of it for KV
    yield d
    d.cleanup()


def test_a_2_gib_kv_read_comes_back_whole(drive):
    block = np.random.default_rng(0).standard_normal((1, 4096, HKV, D)).astype(np.float16)
    k = np.tile(block, (1, TOKENS // 4096, 1, 1))
    v = -k
    with csdemu.connect(drive.socket_path) as dev:
        kv = dev.create_kv_namespace(layers=1, q_heads=32, kv_heads=HKV, head_dim=D)
        kv.append(0, [1], k, v)
        got_k, got_v = kv.read(0, 1, 0, TOKENS)
        assert got_k.nbytes + got_v.nbytes == 2 << 30
        assert np.array_equal(got_k, k[0]) and np.array_equal(got_v, v[0])
        part_k, _ = kv.read(0, 1, TOKENS - 5000, 5000)                # a tail, mid-chunk
        assert np.array_equal(part_k, k[0, -5000:])
        with pytest.raises(ValueError, match="read at least 1 token"):
            kv.read(0, 1, 0, 0)
        kv.delete()
