"""The text form of benchmark results (`csdemu bench` without --json, and
the BENCHMARKS.md tables)."""
from csdemu.bench import report


def test_text_aligns_figures_and_tables():
    res = {"stream_bytes_per_s": 35421438447.262, "kernel_threads": 2,
           "targets": {"kernel_vs_numpy": 5.0},
           "contexts": [{"context": 1024, "kernel_s": 0.0019166},
                        {"context": 16384, "kernel_s": 0.028838, "torch_s": 0.28}]}
    lines = report.text(res).splitlines()
    assert lines[0] == "stream_bytes_per_s  3.542e+10"
    assert lines[1] == "kernel_threads      2"
    assert lines[2] == 'targets             {"kernel_vs_numpy": 5.0}'
    assert lines[3:5] == ["", "contexts:"]
    head, first, last = lines[5:8]
    assert head.split() == ["context", "kernel_s", "torch_s"]      # every row's columns
    assert first.split() == ["1024", "0.001917"]
    assert last.split() == ["16384", "0.02884", "0.28"]
    assert len(head) == len(first) == len(last)                   # right-aligned columns


def test_split_keeps_lists_of_numbers_as_figures():
    figures, tables = report.split({"a": [1, 2], "b": [], "t": [{"x": 1}]})
    assert figures == {"a": [1, 2], "b": []} and tables == {"t": [{"x": 1}]}
