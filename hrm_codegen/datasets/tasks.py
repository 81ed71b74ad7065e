"""Execution task sets: problems a sandbox judges by their asserts, in a model's prompt format, for learning
from execution (GSPO/GRPO in `hrm_codegen.rl`; any sampler that keeps what passes).

A task set is a list of `FormattedProblem`s: the prompt rendered exactly as evaluation renders it in that format
(`protocols.build_problems`), and the program that runs a completion against the task's asserts. Sources
(`TASK_SOURCES`):

- `mbpp`: a split of MBPP (by default train, tasks 601-974), with the few-shot count a native run trained with;
- `pairs`: the verified mined pairs of a pairs.jsonl (`scripts/build_pairs.py`) as MBPP-style tasks, their text
  and asserts in the prompt as `data=pairs` trains on them (`protocols.mbpp_task_problem`); an unverified pair's
  asserts were never seen to pass its own code, so those are left out.

`judged_uncut` gives the problem a reward judges completions of a generator that does not stop at the format's
stop strings with (TRL's generation stops at EOS or the length limit only): the completion is cut there first,
as evaluation's generation would have stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hrm_codegen.datasets.mbpp import load_mbpp, normalize_code
from hrm_codegen.datasets.pairs import load_pairs
from hrm_codegen.datasets.protocols import FormattedProblem, build_problems, mbpp_task_problem

TASK_SOURCES = ("mbpp", "pairs")


def mbpp_task_set(
    rows: Sequence[dict], fmt: str = "native", split: str = "train", tokenizer: Any = None, few_shot: int = 0
) -> list[FormattedProblem]:
    """The MBPP tasks of `split` in prompt format `fmt` (`few_shot` solved examples first, native format only)."""
    return build_problems("mbpp", rows, fmt, split=split, tokenizer=tokenizer, few_shot=few_shot or None)


def pair_task_set(rows: Sequence[dict], fmt: str = "native", tokenizer: Any = None) -> list[FormattedProblem]:
    """The verified pairs of `rows` (pairs.jsonl records) as tasks in prompt format `fmt`, keyed by their task_id."""
    tasks = []
    for row in rows:
        if not row["verified"]:
            continue
        problem = mbpp_task_problem(row["text"], row["test_list"], fmt, tokenizer)
        tasks.append(
            dataclasses.replace(problem, task_id=str(row["task_id"]), reference=normalize_code(row["code"]))
        )
    return tasks


def build_task_set(
    sources: Sequence[str],
    fmt: str = "native",
    *,
    mbpp_path: str | Path | None = None,
    split: str = "train",
    few_shot: int = 0,
    pairs_path: str | Path | None = None,
    tokenizer: Any = None,
    limit: int | None = None,
) -> list[FormattedProblem]:
    """The tasks of `sources` (some of TASK_SOURCES, in that order) in prompt format `fmt`; the first `limit`.

    `mbpp_path`: MBPP's jsonl (or "hub") for `mbpp`; `pairs_path`: a pairs.jsonl for `pairs`. A ValueError names
    an unknown source, a missing path, a task id two sources share, or an empty set.
    """
    unknown = [source for source in sources if source not in TASK_SOURCES]
    if unknown or not sources:
        raise ValueError(f"task sources {list(sources)}: expected some of {list(TASK_SOURCES)}")
    tasks: list[FormattedProblem] = []
    for source in dict.fromkeys(sources):
        if source == "mbpp":
            if mbpp_path is None:
                raise ValueError("task source mbpp needs the MBPP file (data.path)")
            tasks += mbpp_task_set(load_mbpp(mbpp_path), fmt, split, tokenizer, few_shot)
        else:
            if pairs_path is None:
                raise ValueError(
                    "task source pairs needs a pairs.jsonl (data.pairs_path; build it with scripts/build_pairs.py)"
                )
            tasks += pair_task_set(load_pairs(pairs_path, verified=True), fmt, tokenizer)
    seen: set[str] = set()
    for task in tasks:
        if task.task_id in seen:
            raise ValueError(f"task sources {list(sources)}: task id {task.task_id!r} occurs twice")
        seen.add(task.task_id)
    tasks = tasks[:limit] if limit is not None else tasks
    if not tasks:
        raise ValueError(f"task sources {list(sources)} hold no tasks")
    return tasks


def judged_uncut(problem: FormattedProblem) -> FormattedProblem:
    """`problem` judging completions cut at its first stop string first (for a generator that ran past it)."""
    return dataclasses.replace(problem, cut_at_stops=True)
