"""A non-editable install works: the wheel, installed into a fresh venv,
starts a drive and serves an Attend, with Numba's cache in the per-user
cache directory and nothing written into site-packages."""
import json
import os
import subprocess
import sys
import sysconfig

from tests import ROOT

ATTEND = r"""
import json, os, sys
import numpy as np
import csdemu, kernels
from kernels import jitcache
with csdemu.connect(sys.argv[1]) as dev:
    kv = dev.create_kv_namespace(layers=1, q_heads=4, kv_heads=2, head_dim=64, dtype="float16")
    k = np.random.default_rng(0).standard_normal((2, 40, 2, 64)).astype(np.float32)
    kv.append(0, [0, 1], k, k)
    out = kv.attend(0, [0, 1], np.ones((2, 4, 64), np.float32))
    ns = kv.last.device_ns
    kv.delete()
print(json.dumps({"csdemu": csdemu.__file__, "kernels": kernels.__file__,
                  "cache": jitcache.use_source_keyed_cache(), "shape": list(out.shape),
                  "finite": bool(np.isfinite(out).all()), "device_ns": ns}))
"""


def _run(argv, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{argv[:3]}: {r.stderr[-2000:]}"
    return r.stdout


def test_wheel_in_a_fresh_venv_starts_a_drive_and_attends(tmp_path):
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", str(wheels), ROOT], cwd=tmp_path)
    wheel = next(wheels.glob("csdemu-*.whl"))
    _run([sys.executable, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)])
    # The dependencies come from this venv (no network): a path entry, not its
    # .pth files, so this checkout's editable csdemu stays out of sight.
    site = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    with open(os.path.join(site, "csdemu_test_deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")

    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH", "VIRTUAL_ENV")}
    env["CSDEMU_CACHE_DIR"] = str(tmp_path / "cache")
    sock, data = str(tmp_path / "csdemu.sock"), str(tmp_path / "data")
    csdemu = [str(venv / "bin" / "csdemu")]
    _run(csdemu + ["start", "--socket", sock, "--data-dir", data, "--profile", "instinfer"],
         env=env, cwd=tmp_path)
    try:
        got = json.loads(_run([py, "-c", ATTEND, sock], env=env, cwd=tmp_path).splitlines()[-1])
    finally:
        _run(csdemu + ["stop", "--socket", sock], env=env, cwd=tmp_path)

    assert got["csdemu"].startswith(site) and got["kernels"].startswith(site)
    assert got["shape"] == [2, 4, 64] and got["finite"] and got["device_ns"] > 0
    assert got["cache"].startswith(str(tmp_path / "cache" / "numba"))
    cached = [f for _, _, fs in os.walk(got["cache"]) for f in fs if f.endswith(".nbi")]
    assert cached, "the daemon compiled nothing into the per-user cache"
    stray = [os.path.join(d, f) for d, _, fs in os.walk(site) for f in fs
             if f.endswith((".nbi", ".nbc"))]
    assert not stray, f"JIT cache written into site-packages: {stray[:3]}"
