"""The tree's promises that no import-linter contract can see: `import
csdemu` is cheap, the daemon's start path never loads the host library, and
every CLI module imports on its own (no registration cycle)."""
import subprocess
import sys

import pytest

from tests import ROOT


def _loaded(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.split()


def test_import_csdemu_loads_nothing_else():
    mods = _loaded("import csdemu")
    assert [m for m in mods if m.startswith("csdemu.")] == []
    assert "numpy" not in mods


def test_the_public_api_comes_from_the_host_library():
    import csdemu
    from csdemu.host.device import connect
    from csdemu.host.kv import SparF
    from csdemu.transport.errors import NVMeError
    assert (csdemu.connect, csdemu.SparF, csdemu.NVMeError) == (connect, SparF, NVMeError)
    assert callable(csdemu.hf.load_smollm2)
    with pytest.raises(AttributeError):
        csdemu.no_such_name


def test_the_daemon_start_path_never_loads_the_host_library():
    # what `csdemu start --foreground` imports: the CLI, then the drive
    mods = _loaded("import csdemu.cli, csdemu.drive.daemon, csdemu.drive.assembly, csdemu.drive.cpus")
    host = [m for m in mods if m.startswith(("csdemu.host", "csdemu.hf", "csdemu.bench.",
                                             "csdemu.sysmodel", "torch", "transformers"))]
    assert host == []


@pytest.mark.parametrize("module", ["admin", "bench", "daemon", "demo", "generate", "nbd",
                                   "options", "reproduce", "stress", "warmup"])
def test_each_cli_module_imports_first(module):
    """Imported before anything else (as tools and tests do), a verb module
    finds the group whole: it never imports the group back."""
    mods = _loaded(f"import csdemu.cli.{module}\nfrom csdemu.cli import main\n"
                   "assert len(main.commands) >= 16, sorted(main.commands)")
    assert f"csdemu.cli.{module}" in mods
