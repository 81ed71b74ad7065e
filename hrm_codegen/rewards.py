"""Execution reward: a completion earns 1.0 when its program runs to the end in the sandbox, else 0.0.

A completion is judged as the evaluator judges it: the problem's own program assembly (`Problem.program`:
setup code, the prompt where the format includes it, the completion cut and post-processed as the prompt
format does, then the task's asserts), run in a confined sandbox process with a wall-clock limit. The
programs of one call run in parallel. A program that fails, raises, times out or is killed scores 0.0;
so does every completion of a call in which the sandbox itself fails (the sandbox is restarted for the
next call): a reward never crashes a training run.

`ExecutionReward` is a TRL reward function (`GRPOTrainer(reward_funcs=...)`): TRL calls it with the
completions and each dataset column as a keyword list, and this one reads the `task_id` column; given TRL's
`log_metric` it also logs each call's `batch_metrics` (pass, solved, timeout and sandbox-error rates). The same
object scores the samples of rejection-sampling fine-tuning (`results`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from hrm_codegen.datasets.problems import Problem
from hrm_codegen.execution import ExecResult, Sandbox, SandboxLimits

logger = logging.getLogger(__name__)


class ExecutionReward:
    """Scores completions of known problems by running them; see the module docstring.

    `problems`: the problems completions are judged against (keyed by `task_id`). `limits`: the sandbox's
    per-program limits (default: 10 s wall clock). `workers`: programs run at once.
    After each call, `last_results` holds each completion's ExecResult (None where the sandbox failed) and
    `statuses` counts every status seen so far ("sandbox_error" for the sandbox's own failures).
    """

    __name__ = "execution_reward"  # TRL logs each reward function's mean under its name

    def __init__(
        self,
        problems: Sequence[Problem] | Mapping[str, Problem],
        limits: SandboxLimits | None = None,
        workers: int | None = None,
    ) -> None:
        items = problems.values() if isinstance(problems, Mapping) else problems
        self.problems: dict[str, Problem] = {}
        for problem in items:
            if problem.task_id in self.problems:
                raise ValueError(f"ExecutionReward: duplicate task_id {problem.task_id!r}")
            self.problems[problem.task_id] = problem
        self.limits = limits or SandboxLimits()
        self.workers = workers
        self.last_results: list[ExecResult | None] = []
        self.statuses: Counter[str] = Counter()
        self._sandbox: Sandbox | None = None

    def _problem(self, task_id: Any) -> Problem:
        key = str(task_id)
        if key not in self.problems:
            raise KeyError(
                f"ExecutionReward: no problem with task_id {key!r} (it knows {len(self.problems)})"
            )
        return self.problems[key]

    def results(self, task_ids: Sequence[Any], completions: Sequence[str]) -> list[ExecResult | None]:
        """Each completion's ExecResult against its task's problem, in order; None for every completion of a
        call in which the sandbox failed."""
        if len(task_ids) != len(completions):
            raise ValueError(f"ExecutionReward: {len(task_ids)} task ids for {len(completions)} completions")
        programs = [self._problem(t).program(c) for t, c in zip(task_ids, completions, strict=True)]
        if self._sandbox is None:
            self._sandbox = Sandbox(self.limits, self.workers)
        try:
            futures = [self._sandbox.submit(program) for program in programs]
            results: list[ExecResult | None] = [future.result() for future in futures]
        except Exception as err:  # the sandbox's own failure (not a program's): score 0, restart it
            logger.warning(
                "execution reward: the sandbox failed (%s); %d completions score 0", err, len(programs)
            )
            self.close(abort=True)
            results = [None] * len(programs)
        self.statuses.update("sandbox_error" if r is None else r.status for r in results)
        self.last_results = results
        return results

    def __call__(
        self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **columns: Any
    ) -> list[float]:
        """1.0 per completion whose program passes, else 0.0 (TRL's reward-function signature; the dataset
        must have a `task_id` column). Conversational completions (lists of messages) are scored by the text
        of their last message."""
        if "task_id" not in columns:
            raise KeyError("ExecutionReward needs the dataset's 'task_id' column among the keyword arguments")
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        results = self.results(columns["task_id"], texts)
        log_metric = columns.get("log_metric")  # TRL's: scalars averaged over each logging window
        if callable(log_metric):
            for name, value in batch_metrics(columns["task_id"], results).items():
                log_metric(name, value)
        return [float(r is not None and r.passed) for r in results]

    def close(self, abort: bool = False) -> None:
        """Stop the sandbox's runners (a later call starts new ones)."""
        if self._sandbox is not None:
            sandbox, self._sandbox = self._sandbox, None
            try:
                sandbox.close(abort=abort)
            except Exception as err:  # closing a broken sandbox must not raise into training
                logger.warning("execution reward: closing the sandbox failed: %s", err)

    def __del__(self) -> None:
        self.close(abort=True)


def batch_metrics(task_ids: Sequence[Any], results: Sequence[ExecResult | None]) -> dict[str, float]:
    """What one call's verdicts say, as fractions: `execution/pass_rate` (completions that pass),
    `execution/solved_rate` (tasks with a passing completion), `execution/timeout_rate` and
    `execution/sandbox_error_rate` (completions the sandbox itself failed on)."""
    count = max(len(results), 1)
    solved = {str(t) for t, r in zip(task_ids, results, strict=True) if r is not None and r.passed}
    return {
        "execution/pass_rate": sum(r is not None and r.passed for r in results) / count,
        "execution/solved_rate": len(solved) / max(len({str(t) for t in task_ids}), 1),
        "execution/timeout_rate": sum(r is not None and r.status == "timeout" for r in results) / count,
        "execution/sandbox_error_rate": sum(r is None for r in results) / count,
    }
