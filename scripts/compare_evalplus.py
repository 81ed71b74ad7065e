"""Check the project's MBPP+ verdicts against the `evalplus` package's on the same completions.

    pip install -e ".[evalplus]"         # evalplus==0.3.1 (not part of `make test`)
    python scripts/compare_evalplus.py --data-file ../shared/data/evalplus/MbppPlus.jsonl

For every task of an MBPP+ source file (EvalPlus's `MbppPlus.jsonl`) it writes completions of several kinds:
`canonical` (the canonical solution), `none` (returns None), `off_by_one` (the canonical output made wrong:
numbers + 1, strings + "x", sequences one item short), `near` (the canonical output with every float scaled by
1 + 1e-9: EvalPlus's float tolerance decides) and `hardcoded` (returns EvalPlus's expected output for exactly the
shown base inputs, None otherwise). Each is judged by the package (MBPP_OVERRIDE_PATH = the file; its
`get_groundtruth` and `check_correctness`, as `evalplus.evaluate` calls them) and by the project (`scripts/
evaluate.py --samples`'s path: `evaluate_file` on the source file's problems). It prints, per kind, how many base
and plus verdicts agree and how many tasks pass by each, then each disagreement, checked again by both one
completion at a time (a verdict that changes is a matter of timing, not of the rules), and exits with status 1
when a disagreement remains. The project's outputs go to OUTPUT/<kind>/ (samples.jsonl, summary.json); the package's verdicts are
kept in OUTPUT/evalplus_verdicts.json and reused for the same file, completions and memory setting.

The package's verdicts depend on its machine in two ways the project's do not share: its time limits (max(1 s,
4 x the canonical solution's time measured once) per input) are missed under load, and its 4 GiB address-space
limit is set in a process that has inherited its parent's ground truth of every task (Mbpp/255's canonical solution
fails there); `EVALPLUS_MAX_MEMORY_BYTES=12884901888 python scripts/compare_evalplus.py ...` raises that limit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

KINDS = ("canonical", "none", "off_by_one", "near", "hardcoded")

# Appended after the canonical solution: the entry point's output, made wrong (off_by_one) or nudged (near).
_WRAP = """
def _hrm_perturb(value, near):
    if isinstance(value, bool):
        return value if near else not value
    if isinstance(value, float):
        return value * (1 + 1e-9) if near else value + 1.0
    if near:
        if isinstance(value, (list, tuple)):
            return type(value)(_hrm_perturb(item, True) for item in value)
        return value
    if isinstance(value, (int, complex)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, (list, tuple)):
        return value[:-1] if value else type(value)([0])
    if isinstance(value, dict):
        return {{**value, "_hrm_extra": 0}}
    if isinstance(value, (set, frozenset)):
        return type(value)(value | {{"_hrm_extra"}})
    return 0 if value is None else None


_hrm_canonical = {entry}


def {entry}(*args):
    return _hrm_perturb(_hrm_canonical(*args), {near})
"""


def completion(kind: str, task: dict, shown: list) -> str:
    """A completion of `kind` for an EvalPlus task; `shown`: (base input, EvalPlus's expected output) pairs.
    Each starts with a newline, as the canonical solutions do: EvalPlus runs prompt + completion, and its
    prompts end in a docstring's closing quotes."""
    entry = task["entry_point"]
    if kind == "canonical":
        return task["canonical_solution"]
    if kind == "none":
        return f"\ndef {entry}(*args, **kwargs):\n    return None\n"
    if kind in ("off_by_one", "near"):
        return task["canonical_solution"] + _WRAP.format(entry=entry, near=kind == "near")
    table = pickle.dumps([(tuple(args), output) for args, output in shown]).hex()
    return (
        "\nimport copy as _hrm_copy\nimport pickle as _hrm_pickle\n\n"
        f"_HRM_SHOWN = _hrm_pickle.loads(bytes.fromhex({table!r}))\n\n\n"
        f"def {entry}(*args):\n    for inputs, output in _HRM_SHOWN:\n        if inputs == args:\n"
        "            return _hrm_copy.deepcopy(output)\n    return None\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-file", required=True, help="an MBPP+ file in EvalPlus's source format")
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help=f"completion kinds (default {','.join(KINDS)})"
    )
    parser.add_argument("--limit", type=int, help="only the first N tasks")
    parser.add_argument(
        "--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="parallel checks"
    )
    parser.add_argument(
        "--output", default="outputs/compare_evalplus", help="the project's evaluation outputs"
    )
    parser.add_argument("--cache-dir", default="data/cache", help="the project's ground-truth cache")
    args = parser.parse_args(argv)
    args.kinds = args.kinds.split(",")
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown kind(s) {unknown}; expected some of {', '.join(KINDS)}")
    if not Path(args.data_file).is_file():
        parser.error(f"--data-file {args.data_file} does not exist")
    return args


class EvalPlusJudge:
    """The evalplus package on MBPP+ from `data_file`: its problems, ground truth and `check_correctness`."""

    def __init__(self, data_file: Path) -> None:
        os.environ["MBPP_OVERRIDE_PATH"] = str(
            data_file.resolve()
        )  # read when evalplus.data.mbpp is imported
        try:
            from evalplus.data import get_mbpp_plus, get_mbpp_plus_hash
            from evalplus.eval import PASS
            from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS
            from evalplus.evaluate import check_correctness, get_groundtruth
        except ImportError as err:
            sys.exit(
                f"compare_evalplus.py: error: the evalplus package is needed ({err}): pip install -e '.[evalplus]'"
            )
        self.problems = get_mbpp_plus()
        self.expected = get_groundtruth(self.problems, get_mbpp_plus_hash(), MBPP_OUTPUT_NOT_NONE_TASKS)
        self.check, self.passed = check_correctness, PASS

    def completions(self, kinds: list[str], limit: int | None) -> dict[str, dict[str, str]]:
        """{task_id: {kind: completion}} for the first `limit` tasks."""
        return {
            task_id: {
                kind: completion(
                    kind, task, list(zip(task["base_input"], self.expected[task_id]["base"], strict=True))
                )
                for kind in kinds
            }
            for task_id, task in list(self.problems.items())[:limit]
        }

    def _arguments(self, task_id: str, code: str) -> tuple:
        problem = self.problems[
            task_id
        ]  # the solution is prompt + completion, as evalplus.evaluate builds it
        return ("mbpp", 0, problem, problem["prompt"] + code, self.expected[task_id])

    def _verdict(self, result: dict) -> tuple[bool, bool]:
        base = result["base"][0] == self.passed
        return base, base and result["plus"][0] == self.passed

    def verdict(self, task_id: str, code: str) -> tuple[bool, bool]:
        """(base, plus) of one completion, checked now."""
        return self._verdict(self.check(*self._arguments(task_id, code)))

    def verdicts(
        self, completions: dict, workers: int, stored: Path
    ) -> dict[tuple[str, str], tuple[bool, bool]]:
        """{(kind, task_id): (base, plus)}, checked in parallel as `evalplus.evaluate` checks, or read from `stored`
        when it holds the verdicts of the same file, completions and memory setting."""
        memory = os.environ.get("EVALPLUS_MAX_MEMORY_BYTES")  # the package's memory limit (4 GiB when unset)
        key = hashlib.sha256(
            (
                hashlib.sha256(Path(os.environ["MBPP_OVERRIDE_PATH"]).read_bytes()).hexdigest()
                + json.dumps(completions, sort_keys=True)
                + (f"memory={memory}" if memory else "")
            ).encode()
        ).hexdigest()
        if stored.is_file() and json.loads(stored.read_text())["key"] == key:
            print(f"evalplus verdicts of these completions: {stored}", file=sys.stderr)
            return {(k, t): (b, p) for k, t, b, p in json.loads(stored.read_text())["verdicts"]}
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {
                (kind, task_id): pool.submit(self.check, *self._arguments(task_id, code))
                for task_id, by_kind in completions.items()
                for kind, code in by_kind.items()
            }
            verdicts = {case: self._verdict(future.result()) for case, future in futures.items()}
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_text(json.dumps({"key": key, "verdicts": [[*k, *v] for k, v in verdicts.items()]}))
        return verdicts


class ProjectJudge:
    """The project on MBPP+ from `data_file`: its judged problems (native format) in the sandbox."""

    def __init__(self, data_file: Path, cache_dir: str) -> None:
        from hrm_codegen.datasets.evalplus_source import (
            JUDGE_MEMORY_MB,
            JUDGE_TIMEOUT_S,
            load_mbppplus_source,
        )
        from hrm_codegen.datasets.protocols import build_problems
        from hrm_codegen.execution import SandboxLimits

        rows = load_mbppplus_source(data_file, cache_dir=cache_dir)
        self.problems = {p.task_id: p for p in build_problems("mbppplus", rows, "native")}
        self.limits = SandboxLimits(timeout_s=JUDGE_TIMEOUT_S, memory_mb=JUDGE_MEMORY_MB)

    def verdict(self, task_id: str, code: str) -> tuple[tuple[bool, bool], dict]:
        """((base, plus), its record) of one completion, run now."""
        from hrm_codegen.datasets.evalplus_judge import base_passed
        from hrm_codegen.execution import run_program

        result = run_program(self.problems[task_id.split("/")[1]].program(code), self.limits)
        record = {
            "passed": result.passed,
            "result": result.status,
            "detail": result.detail,
            "seconds": result.seconds,
        }
        return (base_passed(record), result.passed), record

    def verdicts(self, completions: dict, output: Path, workers: int) -> tuple[dict, dict]:
        """({(kind, task_id): (base, plus)}, {(kind, task_id): samples.jsonl record}) through `evaluate_file`,
        the path of `scripts/evaluate.py --samples` (OUTPUT/<kind>/ holds its files)."""
        from hrm_codegen.datasets.evalplus_judge import base_passed
        from hrm_codegen.evaluation import SAMPLES_FILE, evaluate_file

        verdicts, records = {}, {}
        kinds = next(iter(completions.values())).keys()
        for kind in kinds:
            directory = output / kind
            directory.mkdir(parents=True, exist_ok=True)
            (directory / SAMPLES_FILE).unlink(missing_ok=True)  # judge every completion again
            samples = directory / "completions.jsonl"
            samples.write_text(
                "".join(
                    json.dumps({"task_id": task_id.split("/")[1], "completion": by_kind[kind]}) + "\n"
                    for task_id, by_kind in completions.items()
                )
            )
            evaluate_file(
                list(self.problems.values()),
                samples,
                ks=[1],
                output_dir=directory,
                limits=self.limits,
                workers=workers,
            )
            for line in (directory / SAMPLES_FILE).read_text().splitlines():
                record = json.loads(line)
                case = (kind, f"Mbpp/{record['task_id']}")
                verdicts[case], records[case] = (base_passed(record), record["passed"]), record
        return verdicts, records


def table(kinds: list[str], theirs: dict, ours: dict) -> list[str]:
    """Per kind: tasks, verdicts that agree (base, plus), passes by each."""
    lines = [
        "| kind | tasks | base agree | plus agree | base passes (evalplus / project) | plus passes (evalplus / project) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind in kinds:
        keys = [key for key in theirs if key[0] == kind]
        lines.append(
            f"| {kind} | {len(keys)} | {sum(theirs[k][0] == ours[k][0] for k in keys)} | "
            f"{sum(theirs[k][1] == ours[k][1] for k in keys)} | {sum(theirs[k][0] for k in keys)} / "
            f"{sum(ours[k][0] for k in keys)} | {sum(theirs[k][1] for k in keys)} / {sum(ours[k][1] for k in keys)} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data_file, output = Path(args.data_file), Path(args.output)
    started = time.perf_counter()
    package = EvalPlusJudge(data_file)
    completions = package.completions(args.kinds, args.limit)
    theirs = package.verdicts(completions, args.workers, output / "evalplus_verdicts.json")
    evalplus_seconds = time.perf_counter() - started
    project = ProjectJudge(data_file, args.cache_dir)
    ours, records = project.verdicts(completions, output, args.workers)
    missing = sorted(set(theirs) - set(ours))
    if missing:
        sys.exit(f"compare_evalplus.py: error: the project judged no completion for {missing[:5]}")
    print("\n".join(table(args.kinds, theirs, ours)))
    print(
        f"\nevalplus {evalplus_seconds:.0f} s, project {time.perf_counter() - started - evalplus_seconds:.0f} s; "
        f"{sum(theirs[k] != ours[k] for k in theirs)} disagreement(s) in {len(theirs)} completions"
    )
    remaining = 0
    for case in (
        k for k in theirs if theirs[k] != ours[k]
    ):  # checked again, one at a time: timing or a rule?
        kind, task_id = case
        again, record = project.verdict(task_id, completions[task_id][kind])
        package_again = package.verdict(task_id, completions[task_id][kind])
        remaining += package_again != again
        print(
            f"{kind} {task_id}: evalplus base/plus {theirs[case]}, project {ours[case]} ({records[case]['result']} "
            f"{records[case]['detail']}, {records[case]['seconds']:.1f} s); checked again alone: evalplus "
            f"{package_again}, project {again} ({record['seconds']:.1f} s)"
        )
    if remaining or any(theirs[k] != ours[k] for k in theirs):
        print(f"{remaining} disagreement(s) remain when checked again one at a time")
    sys.exit(1 if remaining else 0)


if __name__ == "__main__":
    main()
