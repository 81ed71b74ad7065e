"""MBPP+ and HumanEval+ (EvalPlus): loading, validation, evaluation problems, and MBPP train-split overlap.

Sources: the Hugging Face Hub datasets `evalplus/mbppplus` and `evalplus/humanevalplus` (split "test"),
or a local `.jsonl` / `.parquet` file with the same fields:

- MBPP+: `task_id` (the original MBPP id), `prompt` (the task text), `code`, `test_list` (the asserts shown
  in prompts), `test` (the ready-to-run extended tests, which call the function by name) and optionally
  `test_imports`.
- HumanEval+: `task_id`, `prompt`, `entry_point`, `canonical_solution`, `test` (defines `check(candidate)`).

Problems are built by `protocols.build_problems` in any prompt format; their test program is the extended
`test` code (HumanEval+: followed by `check(entry_point)`). The extended tests run many inputs, so programs
get a longer sandbox timeout (`EVALPLUS_TIMEOUT_S`). MBPP+ keeps tasks whose ids fall in MBPP's train split
(601-974): `train_overlap` lists them and `exclude_train_overlap` drops them for a model trained on MBPP.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hrm_codegen.datasets.mbpp import SPLITS
from hrm_codegen.datasets.problems import Problem
from hrm_codegen.datasets.protocols import PLUS_TIMEOUT_S, FormattedProblem, build_problems

HUB_DATASETS = {"mbppplus": "evalplus/mbppplus", "humanevalplus": "evalplus/humanevalplus"}
EVALPLUS_TIMEOUT_S = PLUS_TIMEOUT_S

_MBPPPLUS_FIELDS = {"task_id": "id", "prompt": "str", "code": "str", "test_list": "list[str]", "test": "str"}
_HUMANEVALPLUS_FIELDS = {
    "task_id": "str",
    "prompt": "str",
    "entry_point": "str",
    "canonical_solution": "str",
    "test": "str",
}


class EvalPlusFormatError(ValueError):
    """An MBPP+ / HumanEval+ file or row lacks a field or has a wrong type; the message names where."""


def _is(value: Any, kind: str) -> bool:
    """True when a value matches a field kind: 'str', 'list[str]', or 'id' (int or digit-ending string)."""
    if kind == "list[str]":
        return isinstance(value, list | tuple) and all(isinstance(item, str) for item in value)
    if kind == "id":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value.rsplit("/", 1)[-1].isdigit()
        )
    return isinstance(value, str)


def _validate(row: Any, fields: dict[str, str], where: str) -> dict:
    """The row as a dict with the fields checked; EvalPlusFormatError naming `where` otherwise."""
    if not isinstance(row, dict):
        raise EvalPlusFormatError(f"{where}: expected an object, got {type(row).__name__}")
    for field, kind in fields.items():
        if field not in row:
            raise EvalPlusFormatError(f"{where}: missing field {field!r}")
        if not _is(row[field], kind):
            raise EvalPlusFormatError(
                f"{where}: field {field!r} must be {'an int or MBPP id' if kind == 'id' else kind}, "
                f"got {type(row[field]).__name__}: {row[field]!r:.60}"
            )
    return row


def _read_file(path: Path) -> list[tuple[str, Any]]:
    """(where, row) for each row of a .jsonl or .parquet file."""
    if not path.is_file():
        raise FileNotFoundError(f"EvalPlus file {path} does not exist (or is not a file)")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises several types for a file that is not parquet
            raise EvalPlusFormatError(f"{path}: not a readable parquet file ({err})") from None
        return [(f"{path} row {index}", row) for index, row in enumerate(table.to_pylist())]
    if path.suffix != ".jsonl":
        raise EvalPlusFormatError(f"{path}: expected a .jsonl or .parquet file")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"{path}:{number}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise EvalPlusFormatError(
                f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})"
            ) from None
    if not rows:
        raise EvalPlusFormatError(f"{path}: no rows")
    return rows


def _read_hub(name: str) -> list[tuple[str, Any]]:
    """(where, row) for each row of a Hub dataset's test split."""
    import datasets

    try:
        part = datasets.load_dataset(name, split="test")
    except Exception as err:  # any failure here means the Hub copy is unavailable
        raise ConnectionError(f"could not load {name} from the Hugging Face Hub: {err}") from err
    return [(f"hub {name}[test] row {index}", dict(row)) for index, row in enumerate(part)]


def _read(dataset: str, source: str | Path) -> list[tuple[str, Any]]:
    if isinstance(source, str) and source == "hub":
        return _read_hub(HUB_DATASETS[dataset])
    return _read_file(Path(source))


def _unique(rows: list[dict], source: str | Path) -> list[dict]:
    """The rows, refusing a repeated task_id."""
    seen: set[Any] = set()
    for row in rows:
        if row["task_id"] in seen:
            raise EvalPlusFormatError(f"{source}: duplicate task_id {row['task_id']!r}")
        seen.add(row["task_id"])
    return rows


def load_mbppplus(source: str | Path = "hub") -> list[dict]:
    """MBPP+ rows from "hub" or a local file, as MBPP-style tasks the prompt formats take.

    Each row: `task_id` (int), `text` (= `prompt`, the task text), `prompt`, `code`, `test_list`, `test`,
    `test_imports` (list, empty when absent). (EvalPlus's source format, `MbppPlus.jsonl` with inputs and no
    outputs, is `evalplus_source.load_mbppplus_source`'s; `sources.load_rows` tells them apart.)
    """
    rows = []
    for where, raw in _read("mbppplus", source):
        row = _validate(raw, _MBPPPLUS_FIELDS, where)
        imports = row.get("test_imports") or []
        if not _is(imports, "list[str]"):
            raise EvalPlusFormatError(f"{where}: field 'test_imports' must be list[str], got {imports!r:.60}")
        task_id = (
            row["task_id"] if isinstance(row["task_id"], int) else int(row["task_id"].rsplit("/", 1)[-1])
        )
        rows.append(
            {
                "task_id": task_id,
                "text": row["prompt"],
                "prompt": row["prompt"],
                "code": row["code"],
                "test_list": list(row["test_list"]),
                "test": row["test"],
                "test_imports": list(imports),
            }
        )
    return _unique(rows, source)


def load_humanevalplus(source: str | Path = "hub") -> list[dict]:
    """HumanEval+ rows from "hub" or a local file: `task_id`, `prompt`, `entry_point`, `canonical_solution`,
    `test`."""
    rows = [
        {field: _validate(raw, _HUMANEVALPLUS_FIELDS, where)[field] for field in _HUMANEVALPLUS_FIELDS}
        for where, raw in _read("humanevalplus", source)
    ]
    return _unique(rows, source)


def mbppplus_problems(
    rows: Sequence[dict],
    fmt: str = "native",
    *,
    tokenizer: Any = None,
    shot_rows: Sequence[dict] | None = None,
) -> list[FormattedProblem]:
    """MBPP+ problems in a prompt format; the program runs the completion (after the prompt where the format
    puts it there) then the extended tests. `shot_rows`: MBPP rows for `lm-eval`'s three shots."""
    return build_problems("mbppplus", rows, fmt, tokenizer=tokenizer, shot_rows=shot_rows)


def humanevalplus_problems(
    rows: Sequence[dict], fmt: str = "native", *, tokenizer: Any = None
) -> list[FormattedProblem]:
    """HumanEval+ problems in a prompt format; the program ends with the extended test and `check(entry_point)`."""
    return build_problems("humanevalplus", rows, fmt, tokenizer=tokenizer)


def _mbpp_id(task_id: str) -> int | None:
    """The MBPP number of a task id ("602" or "Mbpp/602"), None for another kind of id."""
    tail = task_id.rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else None


def train_overlap(problems: Iterable[Problem], train_task_ids: Iterable[int] | None = None) -> list[str]:
    """Task ids of the problems whose MBPP id is a training task (default: MBPP's train split, 601-974)."""
    if train_task_ids is None:
        first, last = SPLITS["train"]
        train_task_ids = range(first, last + 1)
    train = set(train_task_ids)
    return [p.task_id for p in problems if _mbpp_id(p.task_id) in train]


def exclude_train_overlap(
    problems: Sequence[Problem], train_task_ids: Iterable[int] | None = None
) -> list[Problem]:
    """The problems without those `train_overlap` lists."""
    overlap = set(train_overlap(problems, train_task_ids))
    return [p for p in problems if p.task_id not in overlap]
