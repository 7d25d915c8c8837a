"""KV namespaces and in-storage attention against a real daemon."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import csdemu
from csdemu.host.kv import from_storage, to_storage
from nvme_cmds.kv import KVDtype, attend_cdws
from nvme_cmds.opcodes import NvmOpcode, VendorAdminOpcode, VendorIoOpcode
from nvme_cmds.status import Status
from tests import naive

TOL = {"float16": 2e-5, "bfloat16": 2e-5, "float32": 2e-5}   # vs float64 on the stored values


def stored(a, dtype):
    """What the drive stores for `a`, widened to float64 (the reference's input)."""
    code = {"float16": KVDtype.FLOAT16, "bfloat16": KVDtype.BFLOAT16, "float32": KVDtype.FLOAT32}[dtype]
    return from_storage(to_storage(a, code), code).astype(np.float64)


def build(kv, rng, lens, dtype, layer=0, chunks=(None,)):
    """Append random K/V of the given lengths (in a prefill then token steps)."""
    B, H, D = len(lens), kv.kv_heads, kv.head_dim
    K = [rng.standard_normal((L, H, D)).astype(np.float32) for L in lens]
    V = [rng.standard_normal((L, H, D)).astype(np.float32) for L in lens]
    ids = list(range(100, 100 + B))
    for b in range(B):
        L = lens[b]
        pre = L // 2
        kv.append(layer, [ids[b]], K[b][None, :pre], V[b][None, :pre])
        for t in range(pre, L, 7):                       # decode-like small appends
            kv.append(layer, [ids[b]], K[b][None, t:t + 7], V[b][None, t:t + 7])
    Smax = max(lens)
    Kd = np.zeros((B, H, Smax, D))
    Vd = np.zeros((B, H, Smax, D))
    for b in range(B):
        Kd[b, :, :lens[b]] = stored(K[b], dtype).transpose(1, 0, 2)
        Vd[b, :, :lens[b]] = stored(V[b], dtype).transpose(1, 0, 2)
    return ids, K, V, Kd, Vd


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("q_heads,kv_heads,head_dim", [(4, 4, 64), (9, 3, 64), (8, 1, 32)])
def test_dense_attend_matches_reference(dev, dtype, q_heads, kv_heads, head_dim):
    rng = np.random.default_rng(q_heads * 7 + head_dim)
    kv = dev.create_kv_namespace(layers=2, q_heads=q_heads, kv_heads=kv_heads,
                                 head_dim=head_dim, dtype=dtype)
    try:
        lens = [1, 31, 32, 33, 100]
        ids, K, V, Kd, Vd = build(kv, rng, lens, dtype, layer=1)
        q = rng.standard_normal((len(lens), q_heads, head_dim)).astype(np.float32)
        out = kv.attend(1, ids, q)
        ref = naive.dense(q, Kd, Vd, lens)
        assert np.abs(out - ref).max() < TOL[dtype]
        assert kv.last.device_ns > 0
        # The other layer holds nothing yet: an error, not zeros or garbage.
        with pytest.raises(csdemu.NVMeError) as e:
            kv.attend(0, ids, q)
        assert e.value.status == Status.DEALLOCATED_OR_UNWRITTEN
        k, v = kv.read(1, ids[4], 10, 50)
        assert np.array_equal(k.astype(np.float64), Kd[4, :, 10:60].transpose(1, 0, 2))
        assert np.array_equal(v.astype(np.float64), Vd[4, :, 10:60].transpose(1, 0, 2))
    finally:
        kv.delete()


def test_sparf_equals_dense_when_keeping_everything_and_approximates_otherwise(dev):
    rng = np.random.default_rng(3)
    kv = dev.create_kv_namespace(layers=1, q_heads=6, kv_heads=2, head_dim=64, sparse_layout=True)
    try:
        lens = [300, 520, 64]
        ids, K, V, Kd, Vd = build(kv, rng, lens, "float16")
        q = rng.standard_normal((3, 6, 64)).astype(np.float32)
        dense = kv.attend(0, ids, q).copy()
        full = kv.attend(0, ids, q, sparse=csdemu.SparF(r=64, k=10_000, window=0)).copy()
        assert np.abs(full - dense).max() < 1e-5
        sp = csdemu.SparF(r=8, k=64, window=16)
        approx = kv.attend(0, ids, q, sparse=sp)
        v_mean = np.stack([Vd[b, :, :lens[b]].mean(axis=1) for b in range(3)]).astype(np.float32)
        ref = naive.sparf(q, Kd, Vd, lens, v_mean, sp.r, sp.k, sp.window)
        ref = ref[0] if isinstance(ref, tuple) else ref
        assert np.abs(approx - ref).max() < 1e-4
        log = dev.engine_log()
        assert log["sparf_attends"] >= 2 and log["pages_skipped"] > 0
    finally:
        kv.delete()


def test_sparf_needs_the_sparse_layout(dev):
    kv = dev.create_kv_namespace(layers=1, q_heads=2, kv_heads=2, head_dim=64)
    try:
        kv.append(0, [1], np.ones((1, 4, 2, 64)), np.ones((1, 4, 2, 64)))
        with pytest.raises(csdemu.NVMeError) as e:
            kv.attend(0, [1], np.ones((1, 2, 64), np.float32), sparse=csdemu.SparF(8, 4))
        assert e.value.status == Status.INVALID_FIELD
    finally:
        kv.delete()


def test_reclaim_erases_whole_blocks_without_gc_copies(dev):
    kv = dev.create_kv_namespace(layers=4, q_heads=2, kv_heads=2, head_dim=64)
    try:
        before = dev.flash_log()
        rng = np.random.default_rng(5)
        for layer in range(4):
            x = rng.standard_normal((2, 600, 2, 64))
            kv.append(layer, [7, 8], x, x)
        mid = dev.flash_log()
        assert mid["free_lines"] < before["free_lines"]
        assert kv.reclaim([7, 8, 12345]) == 2
        after = dev.flash_log()
        assert after["free_lines"] == before["free_lines"]
        assert after["gc_pages_copied"] == before["gc_pages_copied"]
        assert after["erases"] > before["erases"]
        with pytest.raises(csdemu.NVMeError):          # the sequence is gone
            kv.attend(0, [7], np.ones((1, 2, 64), np.float32))
    finally:
        kv.delete()


def test_engine_log_counts_pages_per_channel(dev):
    kv = dev.create_kv_namespace(layers=1, q_heads=4, kv_heads=4, head_dim=64)
    try:
        x = np.random.default_rng(1).standard_normal((4, 32 * 16, 4, 64))
        kv.append(0, [1, 2, 3, 4], x, x)
        before = dev.engine_log()
        kv.attend(0, [1, 2, 3, 4], np.ones((4, 4, 64), np.float32))
        log = dev.engine_log()
        pages = np.array(log["channel_pages"]) - np.array(before["channel_pages"])
        assert pages.sum() == 4 * 4 * 16 * 2              # every K and V page of the layer
        assert (pages > 0).all()                           # every channel took part
        assert log["device_ns"] > before["device_ns"]
        # the emulator's own costs of the attend: kernel, then the timing model
        assert log["kernel_wall_ns"] > before["kernel_wall_ns"]
        assert log["charge_wall_ns"] > before["charge_wall_ns"]
    finally:
        kv.delete()


def test_kv_commands_refuse_bad_input(dev):
    kv = dev.create_kv_namespace(layers=2, q_heads=2, kv_heads=1, head_dim=64)
    try:
        kv.append(0, [5], np.ones((1, 3, 1, 64)), np.ones((1, 3, 1, 64)))
        io = dev.io

        def st(opc, **kw):
            return io.execute(opc, nsid=kv.nsid, mptr=kv.meta_off, **kw).status
        assert st(VendorIoOpcode.ATTEND, **attend_cdws(7, 1)) == Status.INVALID_FIELD     # layer
        assert st(VendorIoOpcode.ATTEND, **attend_cdws(0, 0)) == Status.INVALID_FIELD     # batch 0
        assert st(VendorIoOpcode.ATTEND, cdw10=5 << 16, cdw11=1) == Status.INVALID_FIELD  # mode
        assert st(0xEE) == Status.INVALID_OPCODE
        assert st(NvmOpcode.READ) == Status.INVALID_OPCODE                                # block I/O
        q = np.ones((1, 2, 64), np.float32)
        with pytest.raises(csdemu.NVMeError) as e:
            kv.attend(0, [999], q)                                                        # unknown seq
        assert e.value.status == Status.INVALID_FIELD
        with pytest.raises(csdemu.NVMeError) as e:
            kv.read(0, 5, 2, 10)                                                          # past the end
        assert e.value.status == Status.LBA_OUT_OF_RANGE
        # The metadata pointer must stay inside the arena.
        assert io.execute(VendorIoOpcode.RECLAIM, nsid=kv.nsid, cdw11=1,
                          mptr=dev.arena.size).status == Status.DATA_TRANSFER_ERROR
        # Bad namespace descriptions.
        for shape in [dict(layers=0), dict(q_heads=3, kv_heads=2), dict(head_dim=48),
                      dict(dtype="int8")]:
            args = dict(layers=1, q_heads=2, kv_heads=2, head_dim=64) | shape
            with pytest.raises((csdemu.NVMeError, ValueError)):
                dev.create_kv_namespace(**args)
        assert np.isfinite(kv.attend(0, [5], q)).all()                                   # still fine
    finally:
        kv.delete()


def test_another_client_is_refused(daemon, dev):
    kv = dev.create_kv_namespace(layers=1, q_heads=2, kv_heads=2, head_dim=64)
    try:
        kv.append(0, [1], np.ones((1, 5, 2, 64)), np.ones((1, 5, 2, 64)))
        with csdemu.connect(daemon.socket_path) as other:
            off = other.alloc.alloc(8)
            c = other.io.execute(VendorIoOpcode.RECLAIM, nsid=kv.nsid, cdw11=1, mptr=off)
            assert c.status == Status.ACCESS_DENIED
            c = other.admin.execute(VendorAdminOpcode.DELETE_KV_NAMESPACE, nsid=kv.nsid)
            assert c.status == Status.ACCESS_DENIED
        assert kv.attend(0, [1], np.ones((1, 2, 64), np.float32)).shape == (1, 2, 64)
    finally:
        kv.delete()


def test_dead_clients_kv_namespaces_are_deleted(daemon, dev):
    code = textwrap.dedent(f"""
        import os, numpy as np, csdemu
        d = csdemu.connect({daemon.socket_path!r})
        kv = d.create_kv_namespace(layers=1, q_heads=2, kv_heads=2, head_dim=64)
        kv.append(0, [1, 2], np.ones((2, 300, 2, 64)), np.ones((2, 300, 2, 64)))
        print(kv.nsid, flush=True)
        os.kill(os.getpid(), 9)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    nsid = int(p.stdout.split()[0])
    import time
    for _ in range(50):
        if nsid not in dev.namespaces():
            break
        time.sleep(0.02)
    assert nsid not in dev.namespaces()


@pytest.mark.parametrize("q_heads,kv_heads", [(8, 8), (9, 3), (8, 1)])
def test_dense_attend_relative_error_with_large_logits(dev, q_heads, kv_heads):
    """fp16 storage, logits in the hundreds: ≤ 2e-3 relative error vs float64."""
    rng = np.random.default_rng(11)
    kv = dev.create_kv_namespace(layers=1, q_heads=q_heads, kv_heads=kv_heads, head_dim=64)
    try:
        lens = [1, 15, 17, 200]
        ids, K, V, Kd, Vd = build(kv, rng, lens, "float16")
        q = (60 * rng.standard_normal((len(lens), q_heads, 64))).astype(np.float32)
        out = kv.attend(0, ids, q)
        ref = naive.dense(q, Kd, Vd, lens)
        logits = max(np.abs(Kd[b, :, :lens[b]] @ q[b, 0]).max() for b in range(len(lens))) / 8
        assert logits > 100
        assert np.abs(out - ref).max() / np.abs(ref).max() <= 2e-3
    finally:
        kv.delete()


def test_another_clients_namespace_is_invisible(daemon, dev):
    kv = dev.create_kv_namespace(layers=1, q_heads=2, kv_heads=2, head_dim=64)
    try:
        assert kv.nsid in dev.namespaces()
        with csdemu.connect(daemon.socket_path) as other:
            assert kv.nsid not in other.namespaces()
            assert other.io.execute(VendorIoOpcode.NOP, nsid=kv.nsid).status == Status.ACCESS_DENIED
            assert other.io.execute(NvmOpcode.READ, nsid=kv.nsid).status == Status.ACCESS_DENIED
            c = other.passthru(0x06, nsid=kv.nsid, read_len=4096, admin=True)   # Identify
            assert c.status == Status.ACCESS_DENIED
    finally:
        kv.delete()


def test_attend_with_append_equals_append_then_attend(dev):
    """The decode step's token can ride on the Attend (one command per layer)."""
    rng = np.random.default_rng(21)
    a = dev.create_kv_namespace(layers=1, q_heads=6, kv_heads=2, head_dim=64)
    b = dev.create_kv_namespace(layers=1, q_heads=6, kv_heads=2, head_dim=64)
    try:
        ids = [3, 4]
        pre = rng.standard_normal((2, 47, 2, 64))
        a.append(0, ids, pre, pre)
        b.append(0, ids, pre, pre)
        for _ in range(3):                         # crosses a page boundary at 48 tokens
            k, v = rng.standard_normal((2, 1, 2, 64)), rng.standard_normal((2, 1, 2, 64))
            q = rng.standard_normal((2, 6, 64)).astype(np.float32)
            a.append(0, ids, k, v)
            out_a = a.attend(0, ids, q).copy()
            out_b = b.attend(0, ids, q, append=(k, v)).copy()
            assert np.array_equal(out_a, out_b)
        ka, va = a.read(0, 4, 0, 50)
        kb, vb = b.read(0, 4, 0, 50)
        assert np.array_equal(ka, kb) and np.array_equal(va, vb)
        with pytest.raises(ValueError):
            b.attend(0, ids, q, append=(k[:, :, :1], v))
    finally:
        a.delete()
        b.delete()


@pytest.mark.parametrize("sparse_layout", [False, True])
def test_batched_token_append_equals_per_sequence_appends(tmp_path, sparse_layout):
    """A decode step's one-token append to a whole batch (the fused Attend's
    path) stores, programs and charges exactly what one append per sequence
    does, including the channel-indexed K copy (SparF layout) or the
    dims-major K pages (dense layout), and the page tables (and pages to
    read) cached between attends follow every group edge."""
    import time

    from csdemu.drive.assembly import build_controller
    from csdemu.drive.kv.store import KVStore

    def drive(name):
        ctrl, _ = build_controller(str(tmp_path / name), "femu-bbssd",
                                   overrides=["geometry.blocks_per_plane=16",
                                              "geometry.pages_per_block=64"])
        d = {"layers": 2, "q_heads": 4, "kv_heads": 2, "head_dim": 64,
             "dtype": int(KVDtype.FLOAT16), "flags": int(sparse_layout), "tokens_per_page": 0,
             "dims_per_page": 16}
        shape = ctrl.kv.shape_from(d)
        return ctrl.kv.engine, KVStore(shape, ctrl.kv.engine.ftl, 16, ctrl.kv.new_stream)

    (eng_a, a), (eng_b, b) = drive("a"), drive("b")
    assert a.shape.tokens_per_page == 32
    assert a.shape.tokens_per_dim_page == (128 if sparse_layout else 0)
    assert a.shape.k_dims_major == (not sparse_layout)
    rng = np.random.default_rng(5)
    lens, now = [125, 30, 64, 1], time.monotonic_ns()
    for store in (a, b):
        for sid, L in enumerate(lens):
            kv = rng.standard_normal((2, L, 2, 64)).astype(np.float16).view(np.uint16)
            for layer in (0, 1):
                store.append(store.get(sid, create=True), layer, kv[0], kv[1], now)
        rng = np.random.default_rng(5)
    # the first flash K page of sequence 0, head 1, as stored
    rng0 = np.random.default_rng(5)
    first_k = rng0.standard_normal((2, lens[0], 2, 64)).astype(np.float16).view(np.uint16)[0]
    raw = a.pool[a.get(0).pages[0][1, 1, 0]]                 # layer 1, head 1, group 0
    want = first_k[:32, 1]                                   # [T, D] token-major
    assert np.array_equal(raw.reshape(64, 32).T if a.shape.k_dims_major else raw, want)
    for store in (a, b):                  # both, to keep their flash timelines equal
        ok, k_back, _, _ = store.read(store.get(0), 1, 0, lens[0], now)
        assert ok and np.array_equal(k_back, first_k)
    seqs_a, seqs_b = [a.get(i) for i in range(4)], [b.get(i) for i in range(4)]
    q = rng.standard_normal((4, 4, 64)).astype(np.float32)
    for step in range(40):                      # crosses T = 32 and Tp = 128 edges
        now += 1_000_000
        k, v = rng.standard_normal((2, 4, 2, 64)).astype(np.float16).view(np.uint16)
        for i, seq in enumerate(seqs_a):
            a.append(seq, 1, k[i:i + 1], v[i:i + 1], now)
        b.append_token(seqs_b, 1, k, v, now)
        for sparse in (None, (8, 16, 4)) if sparse_layout else (None,):
            outs = []
            a._batches.clear()              # a builds every table afresh; b keeps its cache
            for eng, store, seqs in ((eng_a, a, seqs_a), (eng_b, b, seqs_b)):
                out = np.empty_like(q)
                outs.append((eng.attend(store, seqs, 1, q, out, now, sparse), out))
            assert outs[0][0] == outs[1][0] and np.array_equal(outs[0][1], outs[1][1])
        for x, y in zip(a.token_tables(seqs_a, 1), b.token_tables(seqs_b, 1)):
            assert np.array_equal(x, y)
        if sparse_layout:
            assert np.array_equal(a.dim_tables(seqs_a, 1), b.dim_tables(seqs_b, 1))
    for sa, sb in zip(seqs_a, seqs_b):
        assert np.array_equal(sa.length, sb.length) and np.array_equal(sa.v_sum, sb.v_sum)
    ca, cb = eng_a.ftl.clocks, eng_b.ftl.clocks
    assert np.array_equal(ca.state, cb.state) and np.array_equal(ca.iv, cb.iv)
    ra, rb = a.read(seqs_a[0], 1, 0, 165, now), b.read(seqs_b[0], 1, 0, 165, now)
    assert ra[0] and np.array_equal(ra[1], rb[1]) and np.array_equal(ra[2], rb[2])
