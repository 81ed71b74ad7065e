"""scripts/plot_runs.py: loss curves and pass@k bars into one PNG, tolerant of missing metric keys."""

import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from hrm_codegen.logging_utils import read_metrics

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "plot_runs.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def plot_runs():
    """The script imported as a module."""
    spec = importlib.util.spec_from_file_location("plot_runs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return struct.unpack(">II", data[16:24])


def _fake_runs(root: Path) -> list[Path]:
    hrm = root / "hrm"
    _write_jsonl(
        hrm / "metrics.jsonl",
        [{"step": s, "train/loss": 5.0 / s, "tokens": 1000 * s} for s in range(1, 40)]
        + [{"step": s, "val/loss": 6.0 / s} for s in (10, 20, 30)]
        + [{"step": 39, "event": "done"}],
    )
    llama = root / "llama"  # the training loop's own key names, and a record without a step
    _write_jsonl(
        llama / "metrics.jsonl",
        [{"step": s, "loss": 4.0 / s} for s in range(1, 30)]
        + [{"val_loss": 1.0}, {"step": 29, "val_loss": 0.5}],
    )
    return [hrm, llama]


def _fake_evals(root: Path) -> list[Path]:
    evals = []
    for name, table in (
        ("eval_hrm", {"1": 0.02, "10": 0.11, "100": None}),
        ("eval_llama", {"1": 0.05, "10": 0.2, "100": None}),
    ):
        (root / name).mkdir(parents=True)
        (root / name / "summary.json").write_text(json.dumps({"num_problems": 500, "pass_at_k": table}))
        evals.append(root / name)
    legacy = root / "eval_other" / "summary.json"
    legacy.parent.mkdir()
    legacy.write_text(json.dumps({"pass@k": {"1": 0.0, "10": None}}))
    return [*evals, legacy]


def test_script_writes_a_png_with_loss_and_pass_at_k_panels(tmp_path):
    runs, evals = _fake_runs(tmp_path / "runs"), _fake_evals(tmp_path / "evals")
    out = tmp_path / "plots" / "all.png"
    command = [
        sys.executable,
        str(SCRIPT),
        "--out",
        str(out),
        "--runs",
        *map(str, runs),
        "--evals",
        *map(str, evals),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    width, height = _png_size(out)
    assert out.stat().st_size > 20_000
    assert width > 2.5 * height  # three panels side by side

    losses_only = tmp_path / "losses.png"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(losses_only), "--runs", *map(str, runs)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert _png_size(losses_only)[0] < width


def test_loss_curves_read_either_key_and_skip_records_without_one(plot_runs, tmp_path):
    hrm, llama = (read_metrics(run) for run in _fake_runs(tmp_path))
    steps, values = plot_runs.loss_curve(hrm, plot_runs.VAL_KEYS)
    assert steps == [10, 20, 30] and values == pytest.approx([0.6, 0.3, 0.2])
    assert plot_runs.loss_curve(llama, plot_runs.VAL_KEYS) == ([29], [0.5])
    assert len(plot_runs.loss_curve(llama, plot_runs.TRAIN_KEYS)[0]) == 29


def test_pass_at_k_reads_both_key_spellings_and_keeps_nulls(plot_runs, tmp_path):
    hrm, _, legacy = _fake_evals(tmp_path)
    assert plot_runs.read_pass_at_k(hrm) == {1: 0.02, 10: 0.11, 100: None}
    assert plot_runs.read_pass_at_k(legacy) == {1: 0.0, 10: None}


def test_a_bad_metrics_line_is_one_message_naming_file_and_line(tmp_path):
    run = tmp_path / "broken"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": \n')
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.png"), "--runs", str(run)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert f"{run / 'metrics.jsonl'}:2: not valid JSON" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("tables", "highest"),
    [
        ({"hrm": {1: 0.0, 10: 0.0}, "llama": {1: 0.0, 10: 0.0, 100: None}}, 0.0),
        ({"hrm": {1: 0.02, 10: 0.11}, "llama": {1: 0.0, 10: 0.3}}, 30.0),
    ],
)
def test_pass_at_k_bars_start_at_zero_even_when_every_rate_is_zero(plot_runs, tables, highest):
    fig, ax = plot_runs.plt.subplots()  # the script's pyplot, with its Agg backend
    try:
        plot_runs._plot_pass_at_k(ax, tables)
        bottom, top = ax.get_ylim()
    finally:
        plot_runs.plt.close(fig)
    assert bottom == 0.0
    assert top >= max(highest, 1.0)
