"""-o normal|json|binary on every verb that prints device data, against a real
daemon: json is one document with the fields, binary the structure's raw bytes
(and the same values as json), normal the text the verb printed before -o."""
import json
import subprocess
import sys

import numpy as np
import pytest

from nvme_cmds.identify import ID_CTRL, ID_NS, to_dict
from nvme_cmds.logs import ENGINE_LOG, FLASH_LOG, SMART_LOG


def csdemu(*args, text=True):
    return subprocess.run([sys.executable, "-m", "csdemu", *args], capture_output=True,
                          text=text, timeout=120)


def decoded(layout):
    return lambda raw: to_dict(np.frombuffer(raw, layout, count=1)[0])


# verb, a field its json has, a normal line that starts with that field, and
# how many bytes binary gives with a decoder of them (None: no raw data)
STABLE = ["vid", "sn", "mn", "sqes", "nn", "nsze", "lbaf0_lbads", "version", "nchannels",
          "total_lines", "composite_temperature", "available_spare"]
VERBS = [
    (["identify"], "sqes", 4096, decoded(ID_CTRL)),
    (["id-ctrl"], "sqes", 4096, decoded(ID_CTRL)),
    (["identify", "-n", "1"], "nsze", 4096, decoded(ID_NS)),
    (["id-ns", "-n", "1"], "nsze", 4096, decoded(ID_NS)),
    (["smart"], "composite_temperature", SMART_LOG.itemsize, decoded(SMART_LOG)),
    (["smart-log"], "composite_temperature", SMART_LOG.itemsize, decoded(SMART_LOG)),
    (["log", "smart"], "composite_temperature", SMART_LOG.itemsize, decoded(SMART_LOG)),
    (["get-log", "-i", "2"], "composite_temperature", SMART_LOG.itemsize, decoded(SMART_LOG)),
    (["log", "flash"], "total_lines", FLASH_LOG.itemsize, decoded(FLASH_LOG)),
    (["get-log", "-i", "0xC0"], "total_lines", FLASH_LOG.itemsize, decoded(FLASH_LOG)),
    (["log", "engine"], "nchannels", ENGINE_LOG.itemsize, decoded(ENGINE_LOG)),
    (["get-log", "-i", "0xC1"], "nchannels", ENGINE_LOG.itemsize, decoded(ENGINE_LOG)),
    (["log", "error"], "entries", 4096, None),
    (["error-log"], "entries", 4096, None),
    (["get-log", "-i", "1", "-l", "256"], "entries", 256, None),
]


@pytest.mark.parametrize("verb,field,nbytes,decode", VERBS, ids=[" ".join(v[0]) for v in VERBS])
def test_each_verb_in_each_format(daemon, verb, field, nbytes, decode):
    s = ["--socket", daemon.socket_path]
    before = csdemu(*verb, *s)
    normal = csdemu(*verb, *s, "-o", "normal")
    assert before.returncode == normal.returncode == 0, normal.stderr
    assert normal.stdout == before.stdout                   # -o normal is the default, unchanged
    assert any(line.startswith(f"{field} ") for line in normal.stdout.splitlines())

    as_json = csdemu(*verb, *s, "-o", "json")
    assert as_json.returncode == 0 and as_json.stderr == ""
    doc = json.loads(as_json.stdout)
    assert field in doc
    assert json.loads(csdemu(*verb, *s, "--json").stdout).keys() == doc.keys()

    raw = csdemu(*verb, *s, "-o", "binary", text=False)
    assert raw.returncode == 0 and raw.stderr == b""
    assert len(raw.stdout) == nbytes
    assert csdemu(*verb, *s, "-b", text=False).stdout[:64] == raw.stdout[:64]
    if decode is not None:
        fields = decode(raw.stdout)
        for name in STABLE:
            if name in doc:
                assert fields[name] == doc[name], name
    else:
        assert doc == {"entries": 0} and raw.stdout == bytes(nbytes)   # a fresh client's


def test_a_log_page_without_a_layout(daemon):
    """The NVMe log csdemu does not decode (none yet) fails the same way in
    every format; a known page read with --length gives that many bytes."""
    s = ["--socket", daemon.socket_path]
    for fmt in ("normal", "json", "binary"):
        r = csdemu("log", "0x05", *s, "-o", fmt)
        assert r.returncode == 1 and r.stdout == "" and "INVALID_LOG_PAGE" in r.stderr
    r = csdemu("log", "engine", "--length", "1024", *s, "-o", "binary", text=False)
    assert r.returncode == 0 and len(r.stdout) == 1024


def test_passthru_in_each_format(daemon):
    s = ["--socket", daemon.socket_path]
    read = ["-n", "1", "--cdw12", "0", "-l", "4096"]
    normal = csdemu("passthru", *s, "-O", "0x02", *read)
    assert normal.returncode == 0
    assert normal.stdout.startswith("status: SUCCESS") and "0000: " in normal.stdout
    doc = json.loads(csdemu("io-passthru", *s, "-O", "0x02", *read, "-o", "json").stdout)
    assert doc["status"] == "SUCCESS" and len(doc["data"]) == 2 * 4096
    raw = csdemu("io-passthru", *s, "-O", "0x02", *read, "-o", "binary", text=False)
    assert raw.returncode == 0 and raw.stdout == bytes.fromhex(doc["data"])
    ident = csdemu("admin-passthru", *s, "-O", "6", "--cdw10", "1", "-l", "4096", "-b", text=False)
    assert ident.returncode == 0 and decoded(ID_CTRL)(ident.stdout)["sqes"] == 0x66
    # nvme-cli 1.x spelt the opcode -o: still taken, also beside a format
    legacy = csdemu("passthru", *s, "-o", "0x80")
    assert legacy.returncode == 0 and legacy.stdout.startswith("status: SUCCESS")
    assert json.loads(csdemu("passthru", *s, "-o", "0x80", "-o", "json").stdout)["sc"] == 0
    # a failed command: exit 1; binary leaves stdout empty and says why on stderr
    bad = csdemu("passthru", *s, "-O", "0x7e", "-n", "1", "-l", "16", "-o", "binary", text=False)
    assert bad.returncode == 1 and bad.stdout == b"" and b"INVALID_OPCODE" in bad.stderr
    bad = csdemu("passthru", *s, "-O", "0x7e", "-n", "1", "-o", "json")
    assert bad.returncode == 1 and json.loads(bad.stdout)["status"] == "INVALID_OPCODE"


def test_get_feature_in_each_format(daemon):
    s = ["--socket", daemon.socket_path]
    r = csdemu("get-feature", *s, "-f", "timing-mode")
    assert r.returncode == 0
    assert r.stdout.splitlines() == ["get-feature: 0xc0 (timing-mode), current value: 0x00000000",
                                     f"  {'mode':<28} virtual"]
    doc = json.loads(csdemu("get-feature", *s, "-f", "0x07", "-o", "json").stdout)
    value = doc["value"]
    assert doc["name"] == "number-of-queues" and doc["fields"] == {
        "io_submission_queues": (value & 0xFFFF) + 1, "io_completion_queues": (value >> 16) + 1}
    every = json.loads(csdemu("get-feature", *s, "--json").stdout)
    assert {f["name"] for f in every} >= {"timing-mode", "volatile-write-cache", "fault-injection"}
    assert [f for f in every if f["fid"] == 6][0]["fields"] == {"write_cache_enabled": 1}
    caps = json.loads(csdemu("get-feature", *s, "-f", "6", "-s", "supported", "-o", "json").stdout)
    assert caps["fields"] == {"saveable": False, "namespace_specific": False, "changeable": True}
    r = csdemu("get-feature", *s, "-f", "0x55")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "INVALID_FIELD" in r.stderr


def test_status_in_each_format(daemon):
    s = ["--socket", daemon.socket_path]
    normal = csdemu("status", *s, "-o", "normal")
    assert normal.returncode == 0 and normal.stdout.startswith("pid ")
    assert [ln for ln in normal.stdout.splitlines() if ln.startswith("drive: ")]
    doc = json.loads(csdemu("status", *s, "-o", "json").stdout)
    assert doc["socket"] == daemon.socket_path and "geometry" in doc
    assert json.loads(csdemu("status", *s, "--json").stdout).keys() == doc.keys()


@pytest.mark.parametrize("args,needles", [
    (["status", "-o", "binary"], ["--output-format", "binary", "no raw data"]),
    (["get-feature", "-o", "binary"], ["--output-format", "binary", "no raw data"]),
    (["passthru", "-O", "0x80", "-o", "binary"], ["--output-format", "--data-len"]),
    (["identify", "-o", "xml"], ["--output-format", "'xml'"]),
    (["smart", "--json", "-o", "binary"], ["--json", "-o/--output-format binary"]),
    (["log", "engine", "-b", "-o", "json"], ["-b/--raw-binary", "-o/--output-format json"]),
    (["passthru", "-o", "0x80", "-O", "0x80"], ["-O/--opcode"]),
    (["passthru", "-o", "json"], ["--opcode"]),
    (["get-feature", "-f", "nosuch"], ["--feature-id", "'nosuch'"]),
])
def test_a_bad_format_is_a_one_line_usage_error(daemon, args, needles):
    r = csdemu(*args, "--socket", daemon.socket_path)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
