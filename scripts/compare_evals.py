"""Print evaluation summaries side by side: one row per output directory of scripts/evaluate.py.

python scripts/compare_evals.py "retrofitted HRM=outputs/eval/demo_hrm" "source=outputs/eval/demo_source"
python scripts/compare_evals.py --show-passing "retrofitted HRM=outputs/eval/demo_hrm" "source=..."   # and a program

--show-passing prints one program the first entry wrote that passed its tests, preferring a problem that the other
entries failed: the task as the model saw it (its prompt) and the code.
"""

from __future__ import annotations

import argparse
import ast
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


def _records(directory: Path, name: str) -> list[dict]:
    path = directory / name
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _constants(node: ast.AST) -> set[str]:
    return {repr(n.value) for n in ast.walk(node) if isinstance(n, ast.Constant)}


def fitted_to_asserts(completion: str, prompt: str) -> bool:
    """Whether a completion compares against a literal argument of the asserts its prompt shows (`if n == 383:`
    for `assert f(383) == True`): a program fitted to the visible tests rather than a solution. A heuristic."""
    shown: set[str] = set()
    for line in prompt.splitlines():
        if not line.lstrip().startswith("assert "):
            continue
        try:
            tree = ast.parse(line.strip())
        except SyntaxError:
            continue
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            for arg in call.args:
                shown |= _constants(arg)
    try:
        code = ast.parse(completion)
    except SyntaxError:
        return False
    compared = set()
    for node in ast.walk(code):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                compared |= _constants(side)
    return bool(shown & compared)


def passing_program(directory: Path, others: list[Path]) -> str | None:
    """One passing program of an evaluation, as its prompt then its completion: a problem the `others` failed
    and a program not fitted to the shown asserts first. None when nothing passed."""
    passed = [r for r in _records(directory, "samples.jsonl") if r.get("passed")]
    if not passed:
        return None
    solved_elsewhere = {r["task_id"] for d in others for r in _records(d, "samples.jsonl") if r.get("passed")}
    prompts = {p["task_id"]: p["prompt"] for p in _records(directory, "prompts.jsonl")}

    fitted = [fitted_to_asserts(r["completion"], prompts.get(r["task_id"], "")) for r in passed]
    best = min(range(len(passed)), key=lambda i: (fitted[i], passed[i]["task_id"] in solved_elsewhere))
    record = passed[best]
    alone = " (the others failed it)" if record["task_id"] not in solved_elsewhere and others else ""
    if fitted[best]:
        alone += " (it answers the shown asserts' inputs literally: fitted, not solved)"
    prompt = prompts.get(record["task_id"], "").rstrip("\n")
    return f"task {record['task_id']}{alone}:\n{prompt}\n{record['completion'].rstrip()}"


def main(argv: list[str] | None = None) -> None:
    """Print a markdown table of LABEL=DIR summaries; a missing summary is a one-line error."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("entries", nargs="+", help="LABEL=DIR (an evaluate.py --output directory)")
    parser.add_argument(
        "--show-passing", action="store_true", help="also print one program the first entry wrote that passed"
    )
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
    if args.show_passing:
        directories = [Path(entry.partition("=")[2]) for entry in args.entries]
        program = passing_program(directories[0], directories[1:])
        label = args.entries[0].partition("=")[0]
        print(f"\nA program {label} wrote that passed, " + (program or "none: no problem passed"))


if __name__ == "__main__":
    main()
