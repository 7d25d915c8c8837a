"""SparF on a live drive and in the system model: one rule. The drive charges
the pages its filters pass, at their places in its layout; the model, told
the same selection (or the same page-hit rate), builds the same command and
charges it with the same timing code."""
import time

import numpy as np
import pytest

import csdemu
from csdemu.drive.profile import load_profile
from csdemu.host.array_spawn import ArrayProcesses
from csdemu.sysmodel import Sparsity, array_attend_ns, csd_attend_ns

L, SEQS, HEADS, D, T = 2048, 2, 2, 128, 16     # whole groups and whole 2048-token K-copy pages
R, K = D // 8, L // 8                          # ratio 1/8
PICKED = tuple(range(38, 38 + K // T))         # 16 groups, 256 tokens: the top-k, by construction


def controlled_kv(rng, heads=HEADS):
    """q's largest |components| are dims 0..R-1; the tokens of PICKED line up with
    q, so the top-k is exactly those groups' tokens."""
    q = rng.standard_normal(D) * 0.05
    q[:R] = 1.0 + rng.random(R)
    k = rng.standard_normal((1, L, heads, D)) * 0.05
    lo, hi = PICKED[0] * T, (PICKED[-1] + 1) * T
    k[0, lo:hi] += 4.0 * q / np.linalg.norm(q)
    return k, q


@pytest.fixture(scope="module")
def live(daemon):
    """(dense pages, SparF pages, SparF device ns) of one Attend each on the same KV."""
    rng = np.random.default_rng(3)
    with csdemu.connect(daemon.socket_path) as dev:
        kv = dev.create_kv_namespace(layers=1, q_heads=HEADS * 2, kv_heads=HEADS, head_dim=D,
                                     sparse_layout=True)
        try:
            q = np.zeros((SEQS, HEADS * 2, D), np.float32)
            for i in range(SEQS):
                k, qi = controlled_kv(rng)
                kv.append(0, [i], k, rng.standard_normal(k.shape))
                q[i] = qi
            time.sleep(0.2)                     # programs done: the drive is idle again
            p0 = kv.engine_log()["pages_read_flash"]
            kv.attend(0, list(range(SEQS)), q)
            p1 = kv.engine_log()["pages_read_flash"]
            time.sleep(0.2)
            kv.attend(0, list(range(SEQS)), q, sparse=csdemu.SparF(r=R, k=K, window=T))
            ns = kv.last.device_ns
            p2 = kv.engine_log()["pages_read_flash"]
        finally:
            kv.delete()
    return p1 - p0, p2 - p1, ns


def test_live_sparf_time_is_the_models_for_the_same_selection(live):
    dense, sparf, ns = live
    assert dense == SEQS * HEADS * 2 * L // T
    # K and V of the 16 picked groups and the window's group, and R K-copy pages, per head
    assert sparf == SEQS * HEADS * (2 * (len(PICKED) + 1) + R)
    sel = Sparsity(0.125, groups=PICKED, dims=tuple(range(R)))
    assert csd_attend_ns(load_profile("instinfer"), HEADS * 2, HEADS, D, [L] * SEQS, 2, T, sel) == ns


def test_live_sparf_page_hit_rate_is_the_models_input(live):
    """Given only the share of dense's pages the drive sensed, the model senses as many."""
    from csdemu.sysmodel.csd import attend_pages
    dense, sparf, _ = live
    pages = attend_pages(load_profile("instinfer"), HEADS * 2, HEADS, D, [L] * SEQS, 2, T,
                         Sparsity(0.125, sparf / dense))[0]
    assert len(pages) == sparf


@pytest.fixture(scope="module")
def drives4():
    """Four small instinfer daemons (32 lines instead of 256: the timing is the same)."""
    with ArrayProcesses(4, profile="instinfer", extra_args=["--set", "geometry.blocks_per_plane=32",
                                                            "--poll-idle-us", "2000"]) as procs:
        yield procs


@pytest.mark.parametrize("drives", [1, 2, 4])
def test_live_array_sparf_step_is_the_models(drives4, drives):
    """One timing code on an array too: 4 kv heads over N drives, SparF with a known
    selection; the array's modeled step equals the model's N-CSD SparF attend."""
    kv_heads, q_heads = 4, 8
    rng = np.random.default_rng(5)
    with csdemu.connect_array(sockets=drives4.sockets[:drives]) as arr:
        kv = arr.create_kv_namespace(layers=1, q_heads=q_heads, kv_heads=kv_heads, head_dim=D,
                                     sparse_layout=True)
        try:
            q = np.zeros((SEQS, q_heads, D), np.float32)
            for i in range(SEQS):
                k, qi = controlled_kv(rng, kv_heads)
                kv.append(0, [i], k, rng.standard_normal(k.shape))
                q[i] = qi
            time.sleep(0.2)
            kv.attend(0, list(range(SEQS)), q, sparse=csdemu.SparF(r=R, k=K, window=T))
            live = kv.last.device_ns
        finally:
            kv.delete()
    sel = Sparsity(0.125, groups=PICKED, dims=tuple(range(R)))
    assert live == array_attend_ns(load_profile("instinfer"), None, q_heads, kv_heads, D, [L] * SEQS,
                                   2, T, drives, sel)
