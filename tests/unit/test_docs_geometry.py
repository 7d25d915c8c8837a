"""The geometry the docs quote is the shipped profiles' (issue 22, item 5):
a profile change that leaves a doc behind fails here."""
import re

from csdemu.bench.fio.runner import DEFAULT_SET
from csdemu.drive.assembly import parse_overrides
from csdemu.drive.profile import load_profile
from tests import ROOT

MIB = 1 << 20


def _doc(name: str) -> str:
    with open(f"{ROOT}/docs/{name}") as f:
        return " ".join(f.read().split())          # line breaks as spaces


def test_profiles_md_gives_instinfer_lines_and_size():
    p = load_profile("instinfer")
    d = p.derive()
    line_mib = d.pages_per_line * p.geometry.page_bytes // MIB
    text = _doc("profiles.md")
    m = re.search(r"(\d+) lines of (\d+) MiB, (\d+) of them for KV", text)
    assert m and tuple(map(int, m.groups())) == (d.lines, line_mib, d.kv_lines), m and m.group(0)
    m = re.search(r"\*\*(\d+) blocks/plane x (\d+) pages\*\*", text)
    assert m and tuple(map(int, m.groups())) == (p.geometry.blocks_per_plane, p.geometry.pages_per_block)
    assert f"the array is {d.raw_bytes >> 30} GiB" in text
    assert f"a line of the instinfer geometry is {line_mib} MiB" in text


def test_fio_md_gives_the_make_fio_drive_once_and_right():
    d = load_profile("instinfer", parse_overrides(DEFAULT_SET)).derive()
    text = _doc("fio-and-stress.md")
    m = re.search(r"(\d+) MiB raw, (\d+) MiB for the host", text)
    assert m and (int(m.group(1)), int(m.group(2))) == (d.raw_bytes // MIB,
                                                       d.nlbas * 4096 // MIB), m and m.group(0)
    assert len(re.findall(r"\d+ MiB raw", text)) == 1
    m = re.search(r"(\d+) of instinfer's (\d+) lines of (\d+) MiB", text)
    i = load_profile("instinfer").derive()
    assert m and tuple(map(int, m.groups())) == (i.kv_lines, i.lines, i.pages_per_line * 4096 // MIB)
