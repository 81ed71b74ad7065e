"""MBPP+ from EvalPlus's source file (`MbppPlus.jsonl`): inputs without outputs, judged as EvalPlus judges.

A row of the source format has `task_id` ("Mbpp/N"), `prompt` (the task text in a ''' docstring),
`entry_point`, `canonical_solution`, `base_input` and `plus_input` (lists of argument lists, in JSON),
`atol`, `assertion` (MBPP's shown asserts) and `contract`. As EvalPlus does (`evalplus/data/mbpp.py`
`mbpp_deserialize_inputs`, `evalplus/evaluate.py` `get_groundtruth`):

- the inputs of some tasks are converted after reading (lists to tuples, sets, complex numbers; `_convert`);
- the expected outputs are the canonical solution's outputs on each input, computed once in the sandbox and
  cached under `cache_dir` by the file's sha256 (a second load runs nothing), with each call's time, from
  which each input's time limit comes (max(1 s, 4 x that time));
- a completion is judged by `evalplus_judge`: the base inputs (MBPP's shown tests) first, then the plus
  inputs; pass@k over base is "base", pass@k over base and plus (the sample's `passed`) is "plus".

The rows are MBPP-style tasks (`task_id` int, `text`, `test_list` = the shown asserts, `code`, `test` = the
judging program, `judged` = True) that `protocols.build_problems("mbppplus", rows, fmt)` renders in every prompt
format. MBPP+ keeps tasks of MBPP's train split (601-974): see `evalplus.exclude_train_overlap`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hrm_codegen.datasets import evalplus_judge as judge
from hrm_codegen.datasets.cache import atomic_write_bytes, file_sha256
from hrm_codegen.datasets.evalplus import EvalPlusFormatError
from hrm_codegen.datasets.protocols import SOLUTION_NAME
from hrm_codegen.execution import Sandbox, SandboxLimits
from hrm_codegen.jsonl import read_jsonl

DEFAULT_CACHE_DIR = Path("data/cache")
# Bump when the encoding or the ground-truth program changes: caches of another version are rebuilt.
GROUND_TRUTH_VERSION = 1
JUDGE_SOURCE = Path(judge.__file__).read_text(encoding="utf-8")
# The sandbox's limits for judging programs: EvalPlus's 4 GiB address space, and a wall clock past the judge's
# own budgets (two stages of at most 60 + 2 s, and the grace before a stage that will not stop is ended).
JUDGE_MEMORY_MB = 4096
JUDGE_TIMEOUT_S = 2 * (judge.STAGE_CAP_S + judge.STAGE_SLACK_S + judge.HUNG_GRACE_S) + 6
# Ground truth runs trusted code on every input: generous time, memory and output (the encoded outputs).
GROUND_TRUTH_LIMITS = SandboxLimits(
    timeout_s=900, memory_mb=16384, file_size_mb=120, max_output_bytes=120 << 20
)
FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "task_id": (str, "a string 'Mbpp/<number>'"),
    "prompt": (str, "a string"),
    "entry_point": (str, "a string"),
    "canonical_solution": (str, "a string"),
    "base_input": ((list, dict), "a list of argument lists"),
    "plus_input": ((list, dict), "a list of argument lists"),
    "atol": ((int, float), "a number >= 0"),
    "assertion": (str, "a string"),
}
_TASK_ID = re.compile(r"Mbpp/(\d+)")


def _all_tuples(value: Any) -> Any:
    """Every list inside `value`, and `value` itself, as a tuple."""
    return tuple(_all_tuples(item) for item in value) if isinstance(value, list) else value


def _numbers(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split())


# How EvalPlus converts the JSON inputs of some tasks (`mbpp_deserialize_inputs`), by MBPP number: each rule
# maps one input (its argument list) to the arguments the function is called with.
_RULES: dict[str, tuple[tuple[int, ...], Callable[[list], Sequence]]] = {
    "each argument a tuple": (
        _numbers("2 116 132 143 222 261 273 394 399 421 424 429 470 560 579 596 616 630 726 740 744 809"),
        lambda args: [tuple(arg) for arg in args],
    ),
    "each argument a list of tuples": (
        _numbers("63 64 70 94 120 237 272 299 400 409 417 438 473 614 780"),
        lambda args: [[tuple(item) for item in arg] for arg in args],
    ),
    "a list of tuples and the second argument": (
        _numbers("75 413 444 753"),
        lambda args: [[tuple(item) for item in args[0]], args[1]],
    ),
    "the first argument and a tuple": (_numbers("106 750"), lambda args: [args[0], tuple(args[1])]),
    "a list of sets (an empty one: {})": (
        _numbers("115"),
        lambda args: [[set(item) if isinstance(item, list) and len(item) else {} for item in args[0]]],
    ),
    "a float and a complex number": (_numbers("124"), lambda args: (float(args[0]), complex(args[1]))),
    "a tuple and the second argument": (
        _numbers("250 405 446 617 720 763 808"),
        lambda args: [tuple(args[0]), args[1]],
    ),
    "each argument a tuple of tuples": (
        _numbers("259 401 445"),
        lambda args: [tuple(tuple(item) for item in arg) for arg in args],
    ),
    "a tuple of its items, lists as tuples": (
        _numbers("278"),
        lambda args: [tuple(tuple(item) if isinstance(item, list) else item for item in args[0])],
    ),
    "a tuple and the next two arguments": (_numbers("307"), lambda args: [tuple(args[0]), args[1], args[2]]),
    "a dict of tuples and the rest": (
        _numbers("722"),
        lambda args: [{key: tuple(value) for key, value in args[0].items()}, *args[1:]],
    ),
    "a complex number": (_numbers("252"), lambda args: [complex(args[0])]),
    "every list a tuple": (_numbers("580 615 791"), _all_tuples),
}
_RULE_OF = {number: (name, convert) for name, (numbers, convert) in _RULES.items() for number in numbers}


@dataclass(frozen=True)
class SourceTask:
    """One validated row of the source file, its inputs converted as EvalPlus converts them."""

    where: str  # file:line
    task_id: str  # "Mbpp/N"
    number: int
    prompt: str
    entry_point: str
    canonical_solution: str
    base_input: list
    plus_input: list
    atol: int | float
    assertion: str

    @property
    def solution(self) -> str:
        """The program EvalPlus runs for the canonical solution: prompt + canonical_solution."""
        return self.prompt + self.canonical_solution


def is_source_file(path: str | Path) -> bool:
    """True when the first row of a .jsonl file has EvalPlus's source fields (`base_input`, `plus_input`)."""
    path = Path(path)
    if path.suffix != ".jsonl" or not path.is_file():
        return False
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError:
                    return False
                return isinstance(row, dict) and "base_input" in row and "plus_input" in row
    return False


def _convert(task_id: str, number: int, inputs: list, field: str, where: str) -> list:
    """The inputs as EvalPlus calls the function with them; EvalPlusFormatError naming `where` otherwise."""
    for index, args in enumerate(inputs):
        if not isinstance(args, list):
            raise EvalPlusFormatError(
                f"{where}: {field}[{index}] must be a list of arguments, got {type(args).__name__}"
            )
    if number not in _RULE_OF:
        return inputs
    name, convert = _RULE_OF[number]
    converted = []
    for index, args in enumerate(inputs):
        try:
            converted.append(convert(args))
        except (TypeError, ValueError, IndexError, AttributeError) as err:
            raise EvalPlusFormatError(
                f"{where}: {field}[{index}] of {task_id} does not fit EvalPlus's conversion for this task "
                f"({name}): {type(err).__name__}: {err}"
            ) from None
    return converted


def _task(row: dict, where: str) -> SourceTask:
    """One row checked field by field and its inputs converted."""
    for field, (kind, expected) in FIELDS.items():
        if field not in row:
            raise EvalPlusFormatError(f"{where}: missing field {field!r} (the MBPP+ source format)")
        value = row[field]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise EvalPlusFormatError(
                f"{where}: field {field!r} must be {expected}, got {type(value).__name__}: {value!r:.60}"
            )
    match = _TASK_ID.fullmatch(row["task_id"])
    if match is None:
        raise EvalPlusFormatError(
            f"{where}: field 'task_id' must be 'Mbpp/<number>', got {row['task_id']!r:.60}"
        )
    if not row["entry_point"].isidentifier():
        raise EvalPlusFormatError(
            f"{where}: field 'entry_point' must be a function name, got {row['entry_point']!r:.60}"
        )
    if not (math.isfinite(row["atol"]) and row["atol"] >= 0):
        raise EvalPlusFormatError(f"{where}: field 'atol' must be a number >= 0, got {row['atol']!r}")
    number = int(match.group(1))
    for field in ("base_input", "plus_input"):
        if row[field] == {}:  # Mbpp/793's plus_input: EvalPlus iterates it as no inputs at all
            row = {**row, field: []}
        elif not isinstance(row[field], list):
            raise EvalPlusFormatError(
                f"{where}: field {field!r} must be a list of argument lists, got a dict"
            )
    return SourceTask(
        where=where,
        task_id=row["task_id"],
        number=number,
        prompt=row["prompt"],
        entry_point=row["entry_point"],
        canonical_solution=row["canonical_solution"],
        base_input=_convert(row["task_id"], number, row["base_input"], "base_input", where),
        plus_input=_convert(row["task_id"], number, row["plus_input"], "plus_input", where),
        atol=row["atol"],
        assertion=row["assertion"],
    )


def read_source(path: str | Path) -> list[SourceTask]:
    """The tasks of a source-format file, every row checked; EvalPlusFormatError names file:line."""
    tasks: list[SourceTask] = []
    seen: dict[str, str] = {}
    for number, row in read_jsonl(path, error=EvalPlusFormatError, what="MBPP+ file"):
        task = _task(row, f"{path}:{number}")
        if task.task_id in seen:
            raise EvalPlusFormatError(f"{task.where}: task_id {task.task_id!r} repeats {seen[task.task_id]}")
        seen[task.task_id] = task.where
        tasks.append(task)
    if not tasks:
        raise EvalPlusFormatError(f"{path}: no rows")
    return tasks


def _encoded_inputs(inputs: list) -> list[str]:
    """Each argument list in the judge's encoding."""
    return [judge.encode(args) for args in inputs]


def _ground_truth_program(task: SourceTask) -> str:
    inputs = "[" + ",".join(_encoded_inputs(task.base_input + task.plus_input)) + "]"
    arguments = f"{task.solution!r}, {task.entry_point!r}, {inputs!r}, {len(task.base_input)}, {task.atol!r}"
    return f"{JUDGE_SOURCE}\nground_truth({arguments})\n"


def _parse_ground_truth(task: SourceTask, result: Any) -> dict:
    """The outputs and seconds a ground-truth program printed; EvalPlusFormatError when it did not finish."""
    tail = result.output[-400:].strip()
    if not result.passed:
        raise EvalPlusFormatError(
            f"{task.where}: the canonical solution of {task.task_id} did not run to the end in the sandbox "
            f"({result.status}: {result.detail}){': ' + tail if tail else ''}"
        )
    start = result.output.rfind(judge.RESULT_MARK)
    try:
        printed = json.loads(result.output[start + len(judge.RESULT_MARK) :].split("\n", 1)[0])
    except ValueError:
        printed = None
    count = len(task.base_input) + len(task.plus_input)
    if start < 0 or not isinstance(printed, dict) or len(printed.get("outputs", ())) != count:
        raise EvalPlusFormatError(
            f"{task.where}: the ground-truth program of {task.task_id} printed no complete result "
            f"(output of {len(result.output)} characters)"
        )
    base = len(task.base_input)
    return {
        "base": printed["outputs"][:base],
        "plus": printed["outputs"][base:],
        "base_seconds": printed["seconds"][:base],
        "plus_seconds": printed["seconds"][base:],
    }


def compute_ground_truth(
    tasks: Sequence[SourceTask], workers: int | None = None, progress: bool = True
) -> dict[str, dict]:
    """Run every canonical solution on its inputs in the sandbox: {task_id: {"base", "plus" (encoded outputs),
    "base_seconds", "plus_seconds"}}."""
    truth: dict[str, dict] = {}
    with Sandbox(GROUND_TRUTH_LIMITS, workers) as sandbox:
        for index, result in sandbox.run([_ground_truth_program(t) for t in tasks], progress):
            truth[tasks[index].task_id] = _parse_ground_truth(tasks[index], result)
    return truth


def ground_truth(
    path: str | Path,
    tasks: Sequence[SourceTask],
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """The expected outputs and times of `tasks` (read from `path`), from the cache or computed and cached."""
    digest = file_sha256(path)
    key = {"kind": "mbppplus-ground-truth", "file_sha256": digest, "version": GROUND_TRUTH_VERSION}
    cache = Path(cache_dir) / f"mbppplus-ground-truth-{digest[:20]}.json"
    if cache.is_file():
        try:
            stored = json.loads(cache.read_text(encoding="utf-8"))
        except ValueError:
            stored = None
        if isinstance(stored, dict) and stored.get("key") == key:
            return stored["tasks"]
    truth = compute_ground_truth(tasks, workers, progress)
    atomic_write_bytes(cache, json.dumps({"key": key, "tasks": truth}).encode("utf-8"))
    return truth


def _stage(inputs: list, outputs: list[str], seconds: list[float]) -> str:
    """One stage of the judge's spec: [inputs, expected outputs, per-input limits, budget] as JSON text."""
    limits = judge.time_limits(seconds)
    return (
        "[[" + ",".join(_encoded_inputs(inputs)) + "],[" + ",".join(outputs) + "],"
        f"{json.dumps(limits)},{json.dumps(judge.stage_budget(limits))}]"
    )


def judge_test(task: SourceTask, truth: dict) -> str:
    """The judging program that follows `SOLUTION = <the solution's source>` (`protocols.FormattedProblem`)."""
    spec = (
        f"[{json.dumps(task.entry_point)},{json.dumps(task.atol)},"
        f"{_stage(task.base_input, truth['base'], truth['base_seconds'])},"
        f"{_stage(task.plus_input, truth['plus'], truth['plus_seconds'])}]"
    )
    return f"{JUDGE_SOURCE}\njudge({SOLUTION_NAME}, {spec!r})\n"


def task_text(prompt: str) -> str:
    """The task text inside the prompt's ''' docstring (the prompt itself when it is not one)."""
    text = prompt.strip()
    for quote in ("'''", '"""'):
        if len(text) >= 6 and text.startswith(quote) and text.endswith(quote):
            return text[3:-3].strip()
    return text


def mbpp_row(task: SourceTask, truth: dict) -> dict:
    """A source task as an MBPP-style row the prompt formats take; `test` is the judging program."""
    lines = [line for line in task.assertion.splitlines() if line.strip()]
    return {
        "task_id": task.number,
        "text": task_text(task.prompt),
        "prompt": task_text(task.prompt),
        "code": task.canonical_solution,
        "entry_point": task.entry_point,
        "test_list": [line for line in lines if line.startswith("assert")],
        "test_imports": [line for line in lines if not line.startswith("assert")],
        "test": judge_test(task, truth),
        "judged": True,
        "base_inputs": len(task.base_input),
        "plus_inputs": len(task.plus_input),
    }


def load_mbppplus_source(
    path: str | Path,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    workers: int | None = None,
    progress: bool = True,
) -> list[dict]:
    """MBPP+ rows from a source-format file, with the judging programs (ground truth computed or cached)."""
    tasks = read_source(path)
    truth = ground_truth(path, tasks, cache_dir, workers, progress)
    return [mbpp_row(t, truth[t.task_id]) for t in tasks]
