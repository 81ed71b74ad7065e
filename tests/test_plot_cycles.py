"""scripts/plot_cycles.py: pass@1 against test-time cycles as a table and a PNG; malformed series are one-line errors."""

import gzip
import json
from pathlib import Path

import pytest
from conftest import load_script


def summary(root: Path, name: str, value: float, problems: int = 500) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "summary.json").write_text(json.dumps({"pass_at_k": {"1": value}, "num_problems": problems}))
    return directory


def test_table_and_png(tmp_path, capsys):
    a1, a2 = summary(tmp_path, "a1", 0.084), summary(tmp_path, "a2", 0.092)
    b2, b4 = summary(tmp_path, "b2", 0.09), summary(tmp_path, "b4", 0.1)
    out, table = tmp_path / "plot.png", tmp_path / "table.md"
    load_script("plot_cycles").main(
        [
            "--series", f"SFT=1:{a1},2:{a2}", "--series", f"random 1-3=2:{b2},4:{b4}",
            "--trained", "SFT=2-2", "--out", str(out), "--table", str(table),
        ]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert "| model | 1 L cycle | 2 L cycles | 4 L cycles |" in text
    assert "| SFT | 8.4% (42/500) | **9.2% (46/500)** | - |" in text
    assert "| random 1-3 | - | 9.0% (45/500) | 10.0% (50/500) |" in text
    assert table.read_text() == text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    load_script("plot_cycles").main(
        ["--series", f"deep=1:{a1},2:{a2}", "--unit", "segment", "--trained", "deep=2", "--out", str(out)]
    )
    text = capsys.readouterr().out
    assert (
        "| model | 1 segment | 2 segments |" in text
        and "| deep | 8.4% (42/500) | **9.2% (46/500)** |" in text
    )


@pytest.mark.parametrize(
    ("series", "message"),
    [
        ("no-equals", "expected LABEL=CYCLES:DIR"),
        ("x=two:dir", "'two:dir' is not CYCLES:DIR"),
        ("x=1:a,1:b", "1 cycles are given twice"),
        ("x=1:missing", "does not exist"),
    ],
)
def test_malformed_series_is_one_line(tmp_path, series, message):
    with pytest.raises(SystemExit) as stop:
        load_script("plot_cycles").main(
            [
                "--series",
                series.replace("missing", str(tmp_path / "missing")),
                "--out",
                str(tmp_path / "p.png"),
            ]
        )
    assert message in str(stop.value) and "\n" not in str(stop.value)


def mbppplus_samples(root: Path, name: str, passed: dict[int, bool]) -> Path:
    """An MBPP+ evaluation directory holding only compressed samples (as docs/results records keep them)."""
    directory = root / name
    directory.mkdir(parents=True)
    lines = [
        json.dumps(
            {
                "task_id": str(t),
                "sample_index": 0,
                "passed": ok,
                "result": "passed" if ok else "failed",
                "detail": "",
                "completion": "",
            }
        )
        for t, ok in passed.items()
    ]
    (directory / "samples.jsonl.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    return directory


def test_plus_test_split_metric_counts_only_mbpp_test_tasks(tmp_path, capsys):
    # tasks 11-510 are MBPP's test split; 2 and 602 are outside it and must not count
    one = mbppplus_samples(tmp_path, "L1", {2: True, 11: True, 12: False, 510: False, 602: True})
    two = mbppplus_samples(tmp_path, "L2", {2: False, 11: True, 12: True, 510: True, 602: False})
    load_script("plot_cycles").main(  # a directory, or its samples file named directly
        [
            "--series", f"m=1:{one},2:{two / 'samples.jsonl.gz'}",
            "--metric", "plus-test-split", "--out", str(tmp_path / "p.png"),
        ]
    )  # fmt: skip
    assert "| m | 33.3% (1/3) | 100.0% (3/3) |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        load_script("plot_cycles").main(
            ["--series", f"m=1:{summary(tmp_path, 'bare', 0.1)}", "--metric", "plus-test-split",
             "--out", str(tmp_path / "p.png")]
        )  # fmt: skip
    assert "has no samples.jsonl(.gz)" in str(stop.value)
