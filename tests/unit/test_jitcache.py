"""Numba's cache directory follows the source (kernels/jitcache.py): a change
to any file compiled code can see gives another directory, a change elsewhere
does not; an unchanged tree the
same one; a directory the user chose is kept. Pure code, no daemon."""
import os
import shutil
import subprocess
import sys

from kernels import jitcache

from tests import ROOT


def _tree(tmp_path):
    for pkg in jitcache.PACKAGES:
        shutil.copytree(os.path.join(ROOT, pkg), tmp_path / pkg,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return str(tmp_path)


def test_digest_follows_every_package_file(tmp_path):
    root = _tree(tmp_path)
    d0 = jitcache.source_digest(root)
    assert d0 == jitcache.source_digest(root)
    # a callee's file, not the caller's: what Numba's own cache key misses
    bus = tmp_path / "csdemu" / "drive" / "flash" / "bus.py"
    bus.write_text(bus.read_text() + "\n# changed\n")
    d1 = jitcache.source_digest(root)
    assert d1 != d0
    (tmp_path / "kernels" / "ir" / "values.py").write_text("# another\n")
    assert jitcache.source_digest(root) not in (d0, d1)


def test_digest_ignores_source_compiled_code_cannot_see(tmp_path):
    root = _tree(tmp_path)
    d0 = jitcache.source_digest(root)
    ctrl = tmp_path / "csdemu" / "drive" / "controller.py"
    ctrl.write_text(ctrl.read_text() + "\n# changed\n")
    assert jitcache.source_digest(root) == d0
    # imported by engine.py, which imports numba: its globals may be frozen
    logs = tmp_path / "nvme_cmds" / "logs.py"
    logs.write_text(logs.read_text() + "\n# changed\n")
    assert jitcache.source_digest(root) != d0


def test_cache_files_and_bytecode_do_not_count(tmp_path):
    root = _tree(tmp_path)
    d0 = jitcache.source_digest(root)
    (tmp_path / "kernels" / "__pycache__").mkdir()
    (tmp_path / "kernels" / "__pycache__" / "x.nbi").write_bytes(b"index")
    (tmp_path / "kernels" / "notes.txt").write_text("not source")
    assert jitcache.source_digest(root) == d0


def _cache_dir(env):
    code = ("import csdemu.drive.flash.timing, numba, os; "
            "print(numba.config.CACHE_DIR); print(os.environ['NUMBA_CACHE_DIR'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    return out


def test_processes_share_the_keyed_directory_and_keep_a_chosen_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "CSDEMU_CACHE_DIR")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    d, exported = _cache_dir(env)
    assert d == exported == str(tmp_path / "xdg" / "csdemu" / "numba" / jitcache.source_digest())
    env["CSDEMU_CACHE_DIR"] = str(tmp_path / "mine")
    d, _ = _cache_dir(env)
    assert d == str(tmp_path / "mine" / "numba" / jitcache.source_digest())
    env["NUMBA_CACHE_DIR"] = str(tmp_path)
    assert _cache_dir(env) == [str(tmp_path), str(tmp_path)]


def test_prune_keeps_the_newest_caches(tmp_path):
    for i, name in enumerate("abcde"):
        d = tmp_path / name
        d.mkdir()
        (d / "f.nbi").write_bytes(b"x")
        os.utime(d, (1000 + i, 1000 + i))
    jitcache.prune(str(tmp_path), 2)
    assert sorted(os.listdir(tmp_path)) == ["d", "e"]
    jitcache.prune(str(tmp_path / "missing"), 2)      # no cache yet: nothing to do
