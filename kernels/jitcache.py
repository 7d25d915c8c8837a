"""Numba's on-disk cache, kept per version of the source.

Numba keys a cached function on its own file's timestamp only. A kernel that
inlines functions from other files (``dense.py`` inlines ``page_ops``,
``scores``, ``values``; ``flash/timing.py`` inlines ``flash/bus.py``) is
loaded from the cache unchanged after those files change: after an update,
the drive would run the old code, and an experiment on a callee would
measure nothing. So every process that has not been given a cache directory
(``NUMBA_CACHE_DIR``) uses ``numba/<digest>`` in the per-user cache
directory (``$CSDEMU_CACHE_DIR``, else ``$XDG_CACHE_HOME/csdemu``, else
``~/.cache/csdemu``), the digest covering the source compiled code can see:
every ``.py`` file of ``kernels/``, every file of ``csdemu/`` and
``nvme_cmds/`` that imports numba, and, transitively, the modules of those
packages such a file imports (a jitted function freezes their globals).
Changing any of them gives a fresh directory, and Numba compiles anew; an
unchanged tree finds its cache as before. Editing the daemon's Python
(controller, sessions, host library) keeps the cache: a three-minute
recompile per edit bought nothing. The
cache never goes beside the sources: an installed csdemu's sources sit in
site-packages, which is no place for it.

Reads files, imports nothing from them: ``kernels`` still imports nothing
from ``csdemu``.
"""

import ast
import hashlib
import os
import shutil

import numba

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("kernels", "csdemu", "nvme_cmds")
#: packages whose every file counts; in the others only what compiled code sees
WHOLE = ("kernels",)
ENV = "NUMBA_CACHE_DIR"
USER_ENV = "CSDEMU_CACHE_DIR"
#: source versions whose caches are kept (the current one included)
KEEP = 3


def _py_files(root: str, pkg: str) -> list[str]:
    out = []
    for dirpath, dirnames, files in os.walk(os.path.join(root, pkg)):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        out += [os.path.join(dirpath, n) for n in sorted(files) if n.endswith(".py")]
    return out


def _imports(source: str) -> tuple[bool, list[str]]:
    """-> (imports numba, the dotted names of the PACKAGES modules it imports),
    at module level only: an import inside a function is no global a jitted
    function could freeze."""
    uses_numba, mods = False, []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        uses_numba |= any(n == "numba" or n.startswith("numba.") for n in names)
        mods += [n for n in names if n.split(".")[0] in PACKAGES]
    return uses_numba, mods


def compiled_sources(root: str = ROOT) -> list[str]:
    """The files the digest covers, relative to ``root``, sorted."""
    texts = {os.path.relpath(p, root): open(p, "rb").read()
             for pkg in PACKAGES for p in _py_files(root, pkg)}
    by_module = {}
    for rel in texts:
        mod = rel[:-3].replace(os.sep, ".")
        by_module[mod[:-len(".__init__")] if mod.endswith(".__init__") else mod] = rel
    # Parsing is the cost of every process start that picks the cache: parse
    # only files that can hold compiled code (the word "numba" in them, or a
    # WHOLE package) and what they import, not all of them.
    parsed = {rel: _imports(src.decode()) for rel, src in texts.items()
              if b"numba" in src or rel.split(os.sep)[0] in WHOLE}
    todo = [rel for rel, (numba_, _) in parsed.items()
            if numba_ or rel.split(os.sep)[0] in WHOLE]
    seen = set()
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        if rel not in parsed:
            parsed[rel] = _imports(texts[rel].decode())
        todo += [by_module[m] for m in parsed[rel][1] if m in by_module]
    return sorted(seen)


def source_digest(root: str = ROOT) -> str:
    """sha256 over the relative path and bytes of every file of
    ``compiled_sources``, in a fixed order (16 hex digits)."""
    h = hashlib.sha256(numba.__version__.encode())
    for rel in compiled_sources(root):
        h.update(rel.encode() + b"\0")
        with open(os.path.join(root, rel), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def user_cache_dir() -> str:
    """csdemu's per-user cache directory (see the module docstring)."""
    if os.environ.get(USER_ENV):
        return os.environ[USER_ENV]
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "csdemu")


def use_source_keyed_cache() -> str:
    """Point Numba's cache at ``<user cache>/numba/<digest>`` unless a directory
    was chosen already; -> the directory in use. Must run before any
    cached Numba function is decorated (Numba picks the directory then);
    exported through the environment so child processes (the daemon) agree
    without hashing again."""
    chosen = os.environ.get(ENV) or numba.config.CACHE_DIR
    if chosen:
        return chosen
    base = os.path.join(user_cache_dir(), "numba")
    path = os.path.join(base, source_digest())
    if not os.path.isdir(path):
        prune(base, KEEP - 1)
    numba.config.CACHE_DIR = path
    os.environ[ENV] = path
    return path


def prune(base: str, keep: int) -> None:
    """Remove all but the ``keep`` most recently modified cache directories
    under ``base``: a full cache is ~25 MB, and every edit of the source
    starts a new one. A process still running an older source finds its
    directory gone and compiles again; Numba recreates it to save."""
    try:
        dirs = [os.path.join(base, d) for d in os.listdir(base)]
    except FileNotFoundError:
        return
    dirs = sorted((d for d in dirs if os.path.isdir(d)), key=os.path.getmtime, reverse=True)
    for d in dirs[keep:]:
        shutil.rmtree(d, ignore_errors=True)
