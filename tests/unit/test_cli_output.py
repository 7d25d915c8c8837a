"""The output formats' pure parts: choosing one format from -o, --json and -b;
nvme-cli's hex dump; Get Features' fields; and the docs naming every verb."""
import os
import re

import click
import pytest
from click.testing import CliRunner

from csdemu.cli.features import decode
from csdemu.cli.output import OutputFormat, hexdump, resolve, with_output_format
from nvme_cmds.features import SEL_CAPABILITIES, SEL_CURRENT, FeatureId
from tests import ROOT


@pytest.mark.parametrize("o,as_json,b,fmt", [
    (None, False, False, "normal"), ("json", False, False, "json"), (None, True, False, "json"),
    (None, False, True, "binary"), ("binary", False, True, "binary"), ("json", True, False, "json"),
])
def test_one_format_from_the_options(o, as_json, b, fmt):
    assert resolve(o, as_json, b) == fmt


@pytest.mark.parametrize("o,as_json,b", [("normal", True, False), ("json", False, True),
                                         (None, True, True), ("binary", True, False)])
def test_options_that_disagree_are_a_usage_error(o, as_json, b):
    with pytest.raises(click.UsageError, match="different output formats"):
        resolve(o, as_json, b)


def test_format_names_and_opcodes():
    assert OutputFormat().convert("JSON", None, None) == "json"
    with pytest.raises(click.BadParameter, match="no raw data"):
        OutputFormat(raw=False).convert("binary", None, None)
    with pytest.raises(click.BadParameter, match="'0x80' is not normal, json or binary"):
        OutputFormat().convert("0x80", None, None)
    assert OutputFormat(opcode_too=True).convert("0x80", None, None) == 0x80


def test_hexdump_is_nvme_clis_layout():
    raw = b"CSDE" + bytes(60) + b"\x01" + bytes(15)
    lines = hexdump(raw).splitlines()
    assert lines[0].split() == [f"{i:x}" for i in range(16)]
    assert lines[1] == "0000: " + "43 53 44 45 " + " ".join(["00"] * 12) + ' "CSDE............"'
    zeros = " ".join(["00"] * 15) + ' "................"'
    assert lines[2:] == ["0010: 00 " + zeros, "*", "0040: 01 " + zeros]
    # the last row is always shown, even when it repeats the one before
    assert hexdump(bytes(48)).splitlines()[-1].startswith("0020: 00")


def test_get_features_fields():
    assert decode(FeatureId.NUMBER_OF_QUEUES, SEL_CURRENT, 0x003E0010) == {
        "io_submission_queues": 17, "io_completion_queues": 63}
    assert decode(FeatureId.ARBITRATION, SEL_CURRENT, 0x04030207) == {
        "arbitration_burst": 7, "low_priority_weight": 2, "medium_priority_weight": 3,
        "high_priority_weight": 4}
    assert decode(FeatureId.TIMING_MODE, SEL_CURRENT, 1) == {"mode": "realtime"}
    assert decode(FeatureId.TIMING_MODE, SEL_CURRENT, 9) == {"mode": "unknown (9)"}
    assert decode(FeatureId.TIMING_MODE, SEL_CAPABILITIES, 0b101) == {
        "saveable": True, "namespace_specific": False, "changeable": True}


def test_a_verb_with_only_json_gains_output_format():
    seen = []

    @click.command()
    @click.option("--json", "as_json", is_flag=True)
    def report(as_json):
        seen.append(as_json)

    cmd = with_output_format(report)
    runner = CliRunner()
    assert runner.invoke(cmd, ["-o", "json"]).exit_code == 0
    assert runner.invoke(cmd, ["--json"]).exit_code == 0
    assert runner.invoke(cmd, []).exit_code == 0
    assert seen == [True, True, False]
    r = runner.invoke(cmd, ["-o", "binary"])
    assert r.exit_code == 2 and "--output-format" in r.output
    assert with_output_format(cmd) is cmd


def test_docs_name_every_verb_that_takes_output_format():
    from csdemu.cli.app import main
    with open(os.path.join(ROOT, "docs", "cli.md")) as f:
        text = f.read()
    verbs = [n for n, c in main.commands.items() if any(p.name == "output_format" for p in c.params)]
    assert len(verbs) >= 13
    assert [v for v in verbs if not re.search(f"`{v}[` ]", text)] == []
