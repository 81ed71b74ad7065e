"""scripts/prepare_data.py: copy + validate, idempotence, every bad-input case, the Hub path, atomic writes."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hrm_codegen.datasets import cache
from hrm_codegen.datasets.mbpp import FIELDS, MBPPFormatError, load_mbpp, read_mbpp_jsonl

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "prepare_data.py"
ORIGINAL = b"original target content\n"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("prepare_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def good_lines(mbpp_path: Path) -> list[bytes]:
    return mbpp_path.read_bytes().split(b"\n")[:3]


def _run(script, *argv: str) -> tuple[int, str]:
    """Run main() and return (exit status, the one-line error message or '')."""
    try:
        script.main(list(argv))
    except SystemExit as stop:
        return (1 if isinstance(stop.code, str) else int(stop.code or 0)), str(stop.code)
    return 0, ""


def _line(good: bytes, **changes) -> bytes:
    row = json.loads(good)
    for key, value in changes.items():
        if value is KeyError:
            del row[key]
        else:
            row[key] = value
    return json.dumps(row).encode()


def test_copies_a_valid_file_byte_for_byte_then_is_up_to_date(
    script, mbpp_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "data" / "mbpp" / "mbpp.jsonl"
    assert _run(script, "--source", str(mbpp_path), "--output", str(output)) == (0, "")
    assert output.read_bytes() == mbpp_path.read_bytes()
    assert "wrote" in capsys.readouterr().out
    before = output.stat().st_mtime_ns
    assert _run(script, "--source", str(mbpp_path), "--output", str(output)) == (0, "")
    second = capsys.readouterr().out
    assert "up to date" in second and "974 MBPP tasks" in second
    assert output.stat().st_mtime_ns == before and output.read_bytes() == mbpp_path.read_bytes()
    assert sorted(p.name for p in output.parent.iterdir()) == ["mbpp.jsonl"]


BAD_CASES = {
    "malformed_json": (lambda g: [g[0], g[1][:40], g[2]], 2, "not valid JSON"),
    "missing_field": (
        lambda g: [g[0], g[1], _line(g[2], test_list=KeyError)],
        3,
        "missing field 'test_list'",
    ),
    "task_id_str": (
        lambda g: [_line(g[0], task_id="1"), g[1], g[2]],
        1,
        "field 'task_id' must be int, got str",
    ),
    "task_id_bool": (lambda g: [g[0], _line(g[1], task_id=True), g[2]], 2, "field 'task_id' must be int"),
    "code_not_str": (
        lambda g: [g[0], _line(g[1], code=["x"]), g[2]],
        2,
        "field 'code' must be str, got list",
    ),
    "test_item_int": (lambda g: [g[0], g[1], _line(g[2], test_list=["assert 1", 2])], 3, "must be list[str]"),
    "challenge_str": (
        lambda g: [_line(g[0], challenge_test_list="x")],
        1,
        "'challenge_test_list' must be list[str]",
    ),
    "setup_null": (lambda g: [g[0], _line(g[1], test_setup_code=None)], 2, "'test_setup_code' must be str"),
    "not_object": (lambda g: [g[0], b"[1, 2]"], 2, "expected a JSON object"),
    "blank_line": (lambda g: [g[0], b"", g[1]], 2, "blank line"),
    "duplicate_id": (lambda g: [g[0], g[1], g[0]], 3, "duplicate task_id 1 (first on line 1)"),
    "non_utf8": (
        lambda g: [g[0], g[1][:20] + b"\xff" + g[1][20:], g[2]],
        2,
        "not valid UTF-8 (byte 0xff at column 21)",
    ),
    "empty_file": (lambda g: [], 1, "file is empty"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_names_file_line_and_problem_and_leaves_target(
    script, good_lines: list[bytes], tmp_path: Path, case: str
) -> None:
    make, line, problem = BAD_CASES[case]
    source = tmp_path / "bad.jsonl"
    lines = make(good_lines)
    source.write_bytes(b"".join(line + b"\n" for line in lines))
    target_dir = tmp_path / "out"
    target_dir.mkdir()
    target = target_dir / "mbpp.jsonl"
    target.write_bytes(ORIGINAL)
    status, message = _run(script, "--source", str(source), "--output", str(target))
    assert status == 1
    assert message.startswith(f"error: {source}:{line}: ") and problem in message and "\n" not in message
    assert target.read_bytes() == ORIGINAL
    assert [p.name for p in target_dir.iterdir()] == ["mbpp.jsonl"]
    with pytest.raises(MBPPFormatError):
        read_mbpp_jsonl(source)


def test_missing_source_file(script, tmp_path: Path) -> None:
    status, message = _run(
        script, "--source", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o.jsonl")
    )
    assert status == 1 and "nope.jsonl does not exist" in message
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_exits_non_zero_with_one_line_and_no_traceback(good_lines: list[bytes], tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_bytes(good_lines[0] + b"\n" + _line(good_lines[1], text=3) + b"\n")
    target = tmp_path / "mbpp.jsonl"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--source", str(source), "--output", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {source}:2: field 'text' must be str, got int: 3"
    assert not target.exists()


def test_hub_unreachable_is_one_clear_error(tmp_path: Path) -> None:
    offline = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    target = tmp_path / "mbpp.jsonl"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--source", "hub", "--output", str(target)],
        capture_output=True,
        text=True,
        env=offline,
        timeout=120,
    )
    assert result.returncode == 1
    assert (
        "could not load MBPP from the Hugging Face Hub" in result.stderr and "Traceback" not in result.stderr
    )
    assert not target.exists()


def test_hub_source_writes_canonical_jsonl(
    script, mbpp_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import datasets

    rows = load_mbpp(mbpp_path)
    ranges = {"train": (601, 974), "test": (11, 510), "validation": (511, 600), "prompt": (1, 10)}
    hub = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_list([r for r in rows if first <= r["task_id"] <= last])
            for split, (first, last) in ranges.items()
        }
    )
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: calls.append(args) or hub)
    output = tmp_path / "mbpp.jsonl"
    assert _run(script, "--source", "hub", "--output", str(output)) == (0, "")
    assert calls == [("google-research-datasets/mbpp", "full")]
    written = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert written == sorted(rows, key=lambda r: r["task_id"])
    assert all(list(row) == list(FIELDS) for row in written)
    first_bytes = output.read_bytes()
    capsys.readouterr()
    assert _run(script, "--source", "hub", "--output", str(output)) == (0, "")
    assert "up to date" in capsys.readouterr().out and output.read_bytes() == first_bytes


def test_failed_write_leaves_target_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "mbpp.jsonl"
    target.write_bytes(ORIGINAL)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cache.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        cache.atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == ORIGINAL
    assert [p.name for p in tmp_path.iterdir()] == ["mbpp.jsonl"]


def test_output_that_is_a_directory(script, mbpp_path: Path, tmp_path: Path) -> None:
    status, message = _run(script, "--source", str(mbpp_path), "--output", str(tmp_path))
    assert status == 1 and message == f"error: {tmp_path} is a directory; expected a file path"
    assert list(tmp_path.iterdir()) == []
