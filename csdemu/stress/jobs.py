"""Job files of `csdemu stress`: INI in fio's spirit, every key validated
with a one-line error that names it."""
from __future__ import annotations

import configparser
import math

class JobFileError(ValueError):
    """A job file problem; the message is one line naming the file, section and key."""


def _int(lo=None, hi=None):
    def conv(v):
        x = int(v, 0)
        if (lo is not None and x < lo) or (hi is not None and x > hi):
            raise ValueError
        return x
    conv.what = ("an integer" + (f" >= {lo}" if lo is not None and hi is None else "")
                 + (f" in {lo}..{hi}" if lo is not None and hi is not None else ""))
    return conv


def _float(lo=0.0, hi=None, open_lo=False):
    def conv(v):
        x = float(v)
        if not math.isfinite(x) or x < lo or (open_lo and x == lo) or (hi is not None and x > hi):
            raise ValueError
        return x
    conv.what = f"a number {'>' if open_lo else '>='} {lo:g}" + (f" and <= {hi:g}" if hi else "")
    return conv


def _choice(*names):
    def conv(v):
        v = v.strip().lower()
        if v not in names:
            raise ValueError
        return v
    conv.what = "one of " + ", ".join(names)
    return conv


OPS = ("append", "attend", "reclaim")


def _mix(v):
    out = dict.fromkeys(OPS, 0.0)
    for part in v.split(","):
        name, sep, w = part.strip().partition(":")
        name = name.strip().lower()
        if name not in out or not sep:
            raise ValueError
        out[name] = float(w)
        if out[name] < 0 or not math.isfinite(out[name]):
            raise ValueError
    if not sum(out.values()):
        raise ValueError
    return out


_mix.what = "a list like append:1,attend:4,reclaim:0 (non-negative weights, not all 0)"


def _text(v):
    return v


_text.what = "text"

# key: (converter, default, help)
KEYS = {
    "description": (_text, "", "free text"),
    "numjobs": (_int(1, 64), 1, "clones of this job run at once (each its own client)"),
    "iodepth": (_int(1, 256), 1, "commands in flight per clone (each slot owns `batch` sequences)"),
    "runtime": (_float(0.0), 0.0, "seconds to run (0: until `steps`; neither: 5 s)"),
    "steps": (_int(0), 0, "commands per clone (0: until `runtime`)"),
    "layers": (_int(1, 65535), 2, "model layers"),
    "q_heads": (_int(1, 65535), 8, "query heads"),
    "kv_heads": (_int(1, 65535), 8, "key/value heads (q_heads must be a multiple)"),
    "head_dim": (_int(1, 65535), 128, "head dimension"),
    "dtype": (_choice("float16", "bfloat16", "float32"), "float16", "KV storage type"),
    "batch": (_int(1, 4096), 4, "sequences per command"),
    "context": (_int(1, 1 << 20), 256, "tokens each sequence is prefilled with"),
    "context_max": (_int(0, 1 << 24), 0, "reclaim a sequence once it holds this many tokens (0: never)"),
    "append_tokens": (_int(1, 65535), 1, "tokens per append command (1 = decode)"),
    "mix": (_mix, "append:1,attend:1", "command weights: append, attend, reclaim"),
    "attention": (_choice("dense", "sparf"), "dense", "attention kind of the attend commands"),
    "sparf_ratio": (_float(0.0, 1.0, open_lo=True), 0.125, "SparF r/d and k/s (paper default 1/8)"),
    "sparf_r": (_int(0, 65535), 0, "SparF r (0: sparf_ratio x head_dim)"),
    "sparf_k": (_int(0), 0, "SparF k (0: sparf_ratio x context at each attend)"),
    "sparf_window": (_int(0, 65535), 16, "SparF local window of newest tokens"),
    "seed": (_int(0), 0, "random seed for K, V and q values and the command mix"),
}


def parse_job_file(path: str) -> list[dict]:
    """-> [{"name": section, key: value, ...}] for every job section, validated."""
    cp = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"),
                                   default_section="global", strict=True)
    cp.optionxform = str
    try:
        with open(path) as f:
            cp.read_file(f, source=path)
    except OSError as exc:
        raise JobFileError(f"{path}: {exc.strerror or exc}") from None
    except configparser.Error as exc:
        raise JobFileError(f"{path}: {' '.join(str(exc).split())}") from None
    jobs = []
    sections = cp.sections() or (["global"] if cp.defaults() else [])
    if not sections:
        raise JobFileError(f"{path}: no job sections")
    for sec in sections:
        items = cp.defaults() if sec == "global" else cp[sec]
        job = {"name": sec}
        for key in items:
            where = "global" if sec != "global" and key in cp.defaults() and key not in cp._sections[sec] else sec
            if key not in KEYS:
                raise JobFileError(f"{path}: [{where}] unknown key {key!r} "
                                   "(`csdemu stress --keys` lists the keys)")
            conv = KEYS[key][0]
            raw = items[key]
            try:
                job[key] = conv(raw.strip())
            except (ValueError, TypeError):
                raise JobFileError(f"{path}: [{where}] {key} must be {conv.what}, got {raw!r}") from None
        for key, (conv, default, _) in KEYS.items():
            if key not in job:
                job[key] = conv(default) if isinstance(default, str) and conv is not _text else default
        if job["q_heads"] % job["kv_heads"]:
            raise JobFileError(f"{path}: [{sec}] q_heads ({job['q_heads']}) must be a multiple of "
                               f"kv_heads ({job['kv_heads']})")
        if job["context_max"] and job["context_max"] <= job["context"]:
            raise JobFileError(f"{path}: [{sec}] context_max ({job['context_max']}) must be larger "
                               f"than context ({job['context']})")
        if job["sparf_r"] > job["head_dim"]:
            raise JobFileError(f"{path}: [{sec}] sparf_r ({job['sparf_r']}) must be at most "
                               f"head_dim ({job['head_dim']})")
        if not job["runtime"] and not job["steps"]:
            job["runtime"] = 5.0
        jobs.append(job)
    return jobs


# ---------------------------------------------------------------- one clone
