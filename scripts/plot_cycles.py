"""pass@1 against test-time cycles: one line per trained model, from the evaluate.py runs at each cycle count, into
a PNG and a markdown table (issue 26's question: does the HRM get better when it thinks longer?).

    python scripts/plot_cycles.py --out docs/results/recurrence_cycles.png \
        --series "SFT, curriculum 1 -> 2=1:outputs/eval/L1,2:outputs/eval/L2,3:outputs/eval/L3" \
        --series "random L cycles 1-3=1:outputs/eval/rc_L1,2:outputs/eval/rc_L2"

A series is LABEL=CYCLES:DIR,CYCLES:DIR,... (an evaluate.py output directory, or its summary.json, per cycle
count, e.g. from `--arch-override L_cycles=N`); the cycle counts a model was trained at may be marked with
--trained LABEL=LOW-HIGH. The table (stdout, and --table FILE) gives pass@1 with the passes and problems. --unit
names what is counted ("L cycle" by default; "segment" for `--arch-override halt_max_steps=N`). With --metric
plus-test-split the directories are MBPP+ evaluations (`--dataset mbppplus`) and the value is plus pass@1 on the
tasks of MBPP's test split (from the directory's samples.jsonl or samples.jsonl.gz, or such a file named
directly, e.g. a row's mbppplus.samples.jsonl.gz), as the results tables give it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

Series = dict[int, tuple[float, int]]  # cycles -> (pass@1, problems)
METRICS = ("pass@1", "plus-test-split")


def read_pass_at_1(path: Path, metric: str = "pass@1") -> tuple[float, int]:
    """(pass@1, number of problems) of an evaluate.py output directory or summary.json; with metric
    plus-test-split, MBPP+ plus pass@1 on the test-split tasks of the directory's samples."""
    if metric == "plus-test-split":
        from hrm_codegen.reproduction import test_split_passes

        names = ("samples.jsonl", "samples.jsonl.gz")
        found = [path] if path.is_file() else [path / name for name in names if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{path} has no samples.jsonl(.gz); expected an MBPP+ evaluate.py output")
        split = test_split_passes(found[0])
        if not split["num_problems"]:
            raise ValueError(f"{found[0]}: no MBPP+ task of MBPP's test split (task ids 11-510)")
        return float(split["pass_at_1"]), int(split["num_problems"])
    path = path / "summary.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected an evaluate.py summary.json")
    summary = json.loads(path.read_text(encoding="utf-8"))
    value = summary.get("pass_at_k", {}).get("1")
    if not isinstance(value, int | float):
        raise ValueError(f"{path}: no pass_at_k['1']")
    return float(value), int(summary["num_problems"])


def parse_series(spec: str) -> tuple[str, dict[int, Path]]:
    """LABEL=CYCLES:DIR,... as (label, {cycles: dir}); a ValueError naming the spec when it is malformed."""
    label, sep, points = spec.rpartition("=")
    if not sep or not label or not points:
        raise ValueError(f"--series {spec!r}: expected LABEL=CYCLES:DIR,CYCLES:DIR,...")
    parsed: dict[int, Path] = {}
    for point in points.split(","):
        cycles, colon, directory = point.partition(":")
        if not colon or not cycles.strip().isdigit() or not directory:
            raise ValueError(f"--series {label!r}: {point!r} is not CYCLES:DIR (e.g. 3:outputs/eval/L3)")
        if int(cycles) in parsed:
            raise ValueError(f"--series {label!r}: {cycles} cycles are given twice")
        parsed[int(cycles)] = Path(directory)
    return label, parsed


def markdown(series: dict[str, Series], trained: dict[str, str], unit: str = "L cycle") -> str:
    """One row per series, one column per cycle count: pass@1 (passes/problems); trained counts in bold."""
    counts = sorted({c for points in series.values() for c in points})
    lines = [
        "| model | " + " | ".join(f"{c} {unit}{'s' if c > 1 else ''}" for c in counts) + " |",
        "|---|" + "---:|" * len(counts),
    ]
    for label, points in series.items():
        low, _, high = trained.get(label, "").partition("-")
        cells = []
        for c in counts:
            if c not in points:
                cells.append("-")
                continue
            value, problems = points[c]
            cell = f"{100 * value:.1f}% ({round(value * problems)}/{problems})"
            inside = low and int(low) <= c <= int(high or low)
            cells.append(f"**{cell}**" if inside else cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if trained:
        lines += ["", f"Bold: the {unit} counts the model was trained at."]
    return "\n".join(lines)


def plot(
    series: dict[str, Series], out: Path, title: str | None, unit: str = "L cycle", ylabel: str = "pass@1 (%)"
) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, points in series.items():
        counts = sorted(points)
        ax.plot(counts, [100 * points[c][0] for c in counts], marker="o", label=label)
    ax.set(
        xlabel=f"{unit}s at test time",
        ylabel=ylabel,
        title=title or f"pass@1 against test-time {unit}s",
    )
    ax.set_xticks(sorted({c for points in series.values() for c in points}))
    ax.set_ylim(bottom=0)  # from zero: a problem or two of difference looks like one
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--series", action="append", required=True, help="LABEL=CYCLES:DIR,CYCLES:DIR,...")
    p.add_argument("--trained", action="append", default=[], help="LABEL=LOW-HIGH: the cycles trained at")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--table", type=Path, help="also write the markdown table here")
    p.add_argument("--title")
    p.add_argument("--unit", default="L cycle", help='what the counts count (e.g. "segment")')
    p.add_argument(
        "--metric",
        choices=METRICS,
        default="pass@1",
        help="the summary's pass@1, or MBPP+ plus pass@1 on the test-split tasks (default: pass@1)",
    )
    args = p.parse_args(argv)
    try:
        series: dict[str, Series] = {}
        for spec in args.series:
            label, points = parse_series(spec)
            series[label] = {c: read_pass_at_1(d, args.metric) for c, d in points.items()}
        trained = dict(item.rpartition("=")[::2] for item in args.trained)
        unknown = [label for label in trained if label not in series]
        if unknown:
            raise ValueError(f"--trained {unknown[0]!r} names no --series")
        text = markdown(series, trained, args.unit)
        ylabel = (
            "MBPP+ plus pass@1, test-split tasks (%)" if args.metric == "plus-test-split" else "pass@1 (%)"
        )
        plot(series, args.out, args.title, args.unit, ylabel)
    except (OSError, ValueError) as err:
        sys.exit(f"plot_cycles.py: error: {err}")
    print(text)
    if args.table:
        args.table.write_text(text + "\n")


if __name__ == "__main__":
    main()
