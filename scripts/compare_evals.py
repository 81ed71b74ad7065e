"""Print evaluation summaries side by side: one row per output directory of scripts/evaluate.py.

python scripts/compare_evals.py "retrofitted HRM=outputs/eval/demo_hrm" "source=outputs/eval/demo_source"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def row(label: str, directory: Path) -> list[str]:
    """label, problems, pass@k values, syntax-valid rate and generation time of one summary.json."""
    summary_file = directory / "summary.json"
    if not summary_file.is_file():
        raise FileNotFoundError(
            f"{summary_file} does not exist: run scripts/evaluate.py --output {directory}"
        )
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    problems = summary["num_problems"]
    passes = ", ".join(
        f"pass@{k} {100 * v:.1f}% ({round(v * problems)}/{problems})"
        if k == "1"
        else f"pass@{k} {100 * v:.1f}%"
        for k, v in summary["pass_at_k"].items()
    )
    valid = summary.get("syntax_valid_rate")
    generation = summary.get("generation_seconds")
    return [
        label,
        passes,
        "-" if valid is None else f"{100 * valid:.0f}%",
        "-" if generation is None else f"{generation:.0f} s",
    ]


def main(argv: list[str] | None = None) -> None:
    """Print a markdown table of LABEL=DIR summaries; a missing summary is a one-line error."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("entries", nargs="+", help="LABEL=DIR (an evaluate.py --output directory)")
    args = parser.parse_args(argv)
    rows = [["model", "pass@k", "syntax valid", "generation"]]
    try:
        for entry in args.entries:
            label, sep, directory = entry.partition("=")
            if not sep:
                raise ValueError(f"{entry!r}: expected LABEL=DIR")
            rows.append(row(label, Path(directory)))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, cells in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


if __name__ == "__main__":
    main()
