"""Plot training and validation loss of runs side by side, and pass@k bars per evaluated model, into one PNG.

    python scripts/plot_runs.py --runs checkpoints/hrm checkpoints/llama --evals outputs/eval_hrm outputs/eval_llama \
        --out runs.png

A run directory holds `metrics.jsonl` (one JSON object a line with `step` and `train/loss` or `loss`,
`val/loss` or `val_loss`; records without them are skipped). An evaluation directory (or file) is a
`summary.json` with `pass_at_k` (or `pass@k`): {"1": 0.12, "10": null}; null values are not drawn.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from hrm_codegen.logging_utils import read_metrics  # noqa: E402

TRAIN_KEYS = ("train/loss", "loss", "train_loss")
VAL_KEYS = ("val/loss", "val_loss")
PASS_KEYS = ("pass_at_k", "pass@k")


def loss_curve(records: list[dict[str, Any]], keys: tuple[str, ...]) -> tuple[list[float], list[float]]:
    """(steps, values) of the first of `keys` present in each record that has a `step`."""
    steps, values = [], []
    for record in records:
        key = next((k for k in keys if isinstance(record.get(k), int | float)), None)
        if key is not None and isinstance(record.get("step"), int | float):
            steps.append(record["step"])
            values.append(record[key])
    return steps, values


def read_pass_at_k(path: Path) -> dict[int, float | None]:
    """pass@k by k from an evaluation directory's summary.json (or the file itself)."""
    path = path / "summary.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected an evaluation summary.json")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    table = next((summary[k] for k in PASS_KEYS if isinstance(summary, dict) and k in summary), None)
    if not isinstance(table, dict):
        raise ValueError(f"{path}: no {' or '.join(PASS_KEYS)} mapping of k to pass rate")
    return {int(k): v for k, v in sorted(table.items(), key=lambda item: int(item[0]))}


def _plot_losses(ax, runs: dict[str, list[dict[str, Any]]], keys: tuple[str, ...], title: str) -> None:
    drawn = False
    for label, records in runs.items():
        steps, values = loss_curve(records, keys)
        if steps:
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
            drawn = True
    ax.set(title=title, xlabel="step", ylabel="loss")
    if drawn:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)


def _plot_pass_at_k(ax, models: dict[str, dict[int, float | None]]) -> None:
    ks = sorted({k for table in models.values() for k, value in table.items() if value is not None})
    width = 0.8 / max(len(models), 1)
    for index, (label, table) in enumerate(models.items()):
        positions = [
            i + (index - (len(models) - 1) / 2) * width for i, k in enumerate(ks) if table.get(k) is not None
        ]
        heights = [100 * table[k] for k in ks if table.get(k) is not None]  # type: ignore[operator]
        bars = ax.bar(positions, heights, width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(ks)), [f"pass@{k}" for k in ks])
    # Bars start at 0; when every rate is 0 the autoscaled range would be centred on 0 (going negative).
    ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1.0))
    ax.set(title="pass@k", ylabel="% of problems")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")


def labels(paths: list[Path]) -> list[str]:
    """Legend labels: directory names (a summary file is named by its directory), full paths when they clash."""
    names = [path.name if path.is_dir() or path.suffix != ".json" else path.parent.name for path in paths]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, paths, strict=True)]


def plot(runs: list[Path], evals: list[Path], out: Path, title: str | None = None) -> Path:
    """Draw the loss panels (when runs are given) and the pass@k panel (when evaluations are given) into `out`."""
    run_records = {}
    for label, run in zip(labels(runs), runs, strict=True):
        metrics = run / "metrics.jsonl"
        if not metrics.is_file():
            raise FileNotFoundError(f"{metrics} does not exist; expected a run directory with metrics.jsonl")
        run_records[label] = read_metrics(run)
    models = {label: read_pass_at_k(path) for label, path in zip(labels(evals), evals, strict=True)}
    panels = (2 if runs else 0) + (1 if evals else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    axes = list(axes[0])
    if runs:
        _plot_losses(axes.pop(0), run_records, TRAIN_KEYS, "training loss")
        _plot_losses(axes.pop(0), run_records, VAL_KEYS, "validation loss")
    if evals:
        _plot_pass_at_k(axes.pop(0), models)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and write the PNG; expected mistakes exit with a one-line message."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", type=Path, default=[], metavar="RUN_DIR")
    p.add_argument("--evals", nargs="+", type=Path, default=[], metavar="EVAL_DIR")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    if not args.runs and not args.evals:
        p.error("give --runs and/or --evals")
    try:
        out = plot(args.runs, args.evals, args.out, args.title)
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
