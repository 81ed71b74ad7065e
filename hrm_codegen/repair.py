"""Self-repair at inference (LiveCodeBench's self-repair scenario): a completion that fails the asserts its
prompt shows gets feedback (the failing assert, or the error's last line) in the prompt format in use, and the
model writes it again, up to `rounds` times.

- The visible check (`feedback_program`) runs the completion's code, then the prompt's own asserts
  (`FormattedProblem.visible_tests`) one by one, in the sandbox; it reports which assert failed, with the
  value its left side had (for `assert X == Y`) or the error's last line, on its captured output.
- The repair prompt (`repair_prompt`) is the original prompt, the failed code (truncated: `shown_attempt`)
  and the feedback, one function per prompt format; each round shows only the latest attempt.
- `SelfRepair` wraps a completion source (`hrm_codegen.evaluation.CompletionSource`): round 0 is the source's
  completion; one that fails its visible check is generated again from its repair prompt, batched through the
  same source, until it passes or `rounds` repairs were made. The last attempt is the sample's completion,
  judged by the evaluator as usual; earlier attempts are judged here, so pass@1 is known after every round.
  Per sample, `last_records` holds the generated tokens of all rounds (`num_tokens`), the repairs made
  (`repair_rounds`) and every attempt (`repair_attempts`); `summary_extra` adds `self_repair` to the summary.

The judge is the dataset's: on MBPP the prompt's asserts are part of it, so a repaired score there saw the
judge's own feedback and is labelled feedback-assisted; on MBPP+ the judge stays the hidden inputs.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

from hrm_codegen.datasets.problems import Problem
from hrm_codegen.datasets.protocols import EVALPLUS_RESPONSE_PREFIX, FormattedProblem
from hrm_codegen.evaluation import CompletionSource
from hrm_codegen.execution import ExecResult, Sandbox, SandboxLimits
from hrm_codegen.passk import mean_pass_at_k

FEEDBACK_MARK = "@@hrm-codegen-feedback@@ "  # starts the visible check's report lines in its output
FEEDBACK_JUDGED = ("mbpp",)  # datasets whose judge runs the asserts the feedback comes from
MAX_SHOWN_LINES = 40  # of a failed attempt in a repair prompt
MAX_SHOWN_CHARS = 2000
MAX_FEEDBACK_CHARS = 300  # per feedback line (an assert, an error, a value)

# Runs in the sandbox: the solution and the asserts under exec, the program's own output discarded (so the
# report survives the output limit), one JSON report line per step on the real stdout; a failure is raised
# again, so the sandbox's verdict stays that of the asserts.
_CHECK_TEMPLATE = """\
import json as _json
import sys as _sys
import traceback as _traceback

_MARK, _LIMIT = {mark!r}, {limit!r}
_SOLUTION, _SETUP, _TESTS = {solution!r}, {setup!r}, {tests!r}


class _Discard:
    def write(self, text):
        return len(text)

    def flush(self):
        pass


def _say(**fields):
    _out.write(_MARK + _json.dumps(fields) + "\\n")
    _out.flush()


def _last_line(error):
    return " ".join(_traceback.format_exception_only(type(error), error)[-1].split())[:_LIMIT]


def _shown(value):
    try:
        return repr(value)[:_LIMIT]
    except BaseException:
        return "<a value whose repr fails>"


_out = _sys.stdout
_sys.stdout = _sys.stderr = _Discard()
_namespace = {{"__name__": "__main__"}}
_say(running=None)
try:
    exec(compile(_SOLUTION, "<solution>", "exec"), _namespace)
    exec(compile(_SETUP, "<setup>", "exec"), _namespace)
except BaseException as _error:
    _say(test=None, error=_last_line(_error))
    raise
for _index, (_test, _left, _right) in enumerate(_TESTS):
    _say(running=_index)
    _mismatch = False
    try:
        if _left is None:
            exec(compile(_test, "<test>", "exec"), _namespace)
        else:
            _got = eval(compile(_left, "<test>", "eval"), _namespace)
            if not _got == eval(compile(_right, "<test>", "eval"), _namespace):
                _mismatch = True
                raise AssertionError
    except BaseException as _error:
        _say(test=_index, error=_last_line(_error), got=_shown(_got) if _mismatch else None)
        raise
"""


@dataclass(frozen=True)
class Feedback:
    """Why a completion failed its visible check: the failing assert (None when the code failed before the
    asserts ran) and a one-line message (the error's last line, the value of the assert's left side, ...)."""

    test: str | None
    message: str

    def text(self, subject: str = "The code above") -> str:
        """The feedback as the repair prompts show it, e.g. 'The code above fails this test:', the assert, the
        message."""
        if self.test is None:
            return f"{subject} fails to run:\n{self.message}"
        return f"{subject} fails this test:\n{self.test}\n{self.message}"


def _clip(text: str) -> str:
    """One line of feedback, at most MAX_FEEDBACK_CHARS characters."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_FEEDBACK_CHARS else text[: MAX_FEEDBACK_CHARS - 3] + "..."


def _compared_sides(test: str) -> tuple[str, str] | None:
    """(left, right) source of an `assert LEFT == RIGHT` without a message, else None."""
    try:
        tree = ast.parse(test)
    except (SyntaxError, ValueError):
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert) or tree.body[0].msg is not None:
        return None
    compare = tree.body[0].test
    if not (
        isinstance(compare, ast.Compare) and len(compare.ops) == 1 and isinstance(compare.ops[0], ast.Eq)
    ):
        return None
    left = ast.get_source_segment(test, compare.left)
    right = ast.get_source_segment(test, compare.comparators[0])
    return (left, right) if left and right else None


def visible_tests(problem: Problem) -> tuple[str, ...]:
    """The asserts `problem`'s prompt shows; ValueError when it shows none (no feedback to give)."""
    tests = tuple(getattr(problem, "visible_tests", ()))
    if not tests:
        raise ValueError(
            f"task {problem.task_id}: its prompt shows no asserts, so self-repair has no feedback to give "
            "(--repair-rounds works on MBPP and MBPP+)"
        )
    return tests


def feedback_program(problem: Problem, completion: str) -> str:
    """The visible check of `completion`: its code as the judge's program runs it (setup, the prompt where the
    format includes it), the asserts' setup, then each visible assert; the first that fails is reported."""
    tests = []
    for test in visible_tests(problem):
        sides = _compared_sides(test)
        tests.append((test, f"({sides[0]})", f"({sides[1]})") if sides else (test, None, None))
    # the program without its tests; for a problem whose test program runs the solution from a string (MBPP+
    # judged as EvalPlus does), that string, which `syntax_source` gives
    solution = replace(problem, test_program="").syntax_source(completion)
    return _CHECK_TEMPLATE.format(
        mark=FEEDBACK_MARK,
        limit=MAX_FEEDBACK_CHARS,
        solution=solution,
        setup=getattr(problem, "visible_setup", ""),
        tests=tests,
    )


def _reports(output: str) -> list[dict]:
    """The visible check's report lines in a program's output (lines that do not parse are skipped)."""
    reports = []
    for line in output.splitlines():
        if line.startswith(FEEDBACK_MARK):
            try:
                report = json.loads(line[len(FEEDBACK_MARK) :])
            except json.JSONDecodeError:
                continue
            if isinstance(report, dict):
                reports.append(report)
    return reports


def parse_feedback(problem: Problem, result: ExecResult) -> Feedback | None:
    """The feedback of a visible check's result (None when it passed): the failing assert and the error's
    last line, or which assert was running when a limit stopped the program."""
    if result.passed:
        return None
    tests = visible_tests(problem)

    def test_at(index: Any) -> str | None:
        return _clip(tests[index]) if isinstance(index, int) and 0 <= index < len(tests) else None

    reports = _reports(result.output)
    failure = next((r for r in reversed(reports) if "error" in r), None)
    if failure is not None:
        test = test_at(failure.get("test"))
        sides = _compared_sides(tests[failure["test"]]) if test is not None else None
        got = failure.get("got")
        if sides is not None and isinstance(got, str):
            return Feedback(test, _clip(f"{sides[0]} evaluates to {got}"))
        return Feedback(test, _clip(str(failure["error"])))
    running = next((r["running"] for r in reversed(reports) if "running" in r), None)
    if result.status == "timeout":
        return Feedback(test_at(running), "It did not finish within the time limit.")
    what = f"{result.status} ({result.detail})" if result.detail else result.status
    return Feedback(test_at(running), _clip(f"It was stopped: {what}."))


def shown_attempt(code: str) -> str:
    """A failed attempt as a repair prompt shows it: its first MAX_SHOWN_LINES lines, at most MAX_SHOWN_CHARS
    characters, cut at a line end (a completion that hit the token cap usually repeats itself), then a
    comment saying that the rest is not shown; '# (no code)' for an empty one. Ends with a newline."""
    lines = code.rstrip().splitlines()
    if not lines:
        return "# (no code)\n"
    kept: list[str] = []
    size = 0
    for line in lines[:MAX_SHOWN_LINES]:
        if size + len(line) + 1 > MAX_SHOWN_CHARS:
            break
        kept.append(line)
        size += len(line) + 1
    if not kept:
        kept = [lines[0][:MAX_SHOWN_CHARS]]
    shown = "\n".join(kept) + "\n"
    return shown if kept == lines else shown + "# ... (the rest of this code is not shown)\n"


def _docstring_repair(problem: FormattedProblem, code: str, feedback: Feedback, tokenizer: Any) -> str:
    """native and bigcode (prompts that are docstrings, code after them): the prompt, the failed code, then
    a docstring holding the feedback, after which the model writes the code again, as after the task's."""
    note = f"{feedback.text('The code above')}\nWrite the corrected code.".replace('"""', "'''")
    return f'{problem.prompt}{code}"""\n{note}\n"""\n'


def _lm_eval_repair(problem: FormattedProblem, code: str, feedback: Feedback, tokenizer: Any) -> str:
    """lm-eval: the shots and the task, the failed code closed by `[DONE]` as the shots' code is, then the
    feedback as a new request whose answer opens with `[BEGIN]`."""
    note = f"{feedback.text('The code above')}\nWrite the corrected code."
    return f"{problem.prompt}{code}[DONE]\n\n{note}\n[BEGIN]\n"


_CODE_MARK = "\x00hrm-codegen: the failed code\x00"
_NEXT_MARK = "\x00hrm-codegen: the repaired code starts here\x00"


def _chat_repair(problem: FormattedProblem, code: str, feedback: Feedback, tokenizer: Any) -> str:
    """chat: the conversation goes on in the tokenizer's chat template: the assistant's turn closes after the
    failed code, a user turn gives the feedback, and the next assistant turn is prefilled as the first was
    (EvalPlus's response prefix and an opened python block)."""
    hf = getattr(tokenizer, "hf", tokenizer)
    if tokenizer is None or not getattr(hf, "chat_template", None):
        raise ValueError("self-repair in prompt format 'chat' needs the tokenizer with its chat template")
    request = (
        f"{feedback.text('Your code')}\n"
        "Please fix it and give the whole corrected script in a markdown code block."
    )
    messages = [
        {"role": "user", "content": "task"},
        {"role": "assistant", "content": f"{EVALPLUS_RESPONSE_PREFIX}\n```python\n{_CODE_MARK}\n```"},
        {"role": "user", "content": request},
        {"role": "assistant", "content": f"{EVALPLUS_RESPONSE_PREFIX}\n```python\n{_NEXT_MARK}\n```\n"},
    ]
    rendered = hf.apply_chat_template(messages, tokenize=False)
    if not isinstance(rendered, str) or _CODE_MARK not in rendered or _NEXT_MARK not in rendered:
        raise ValueError(
            "the tokenizer's chat template does not render the assistant messages' content, so a repair turn "
            "cannot follow the failed code; self-repair cannot use this template"
        )
    between = rendered.split(_CODE_MARK, 1)[1].split(_NEXT_MARK, 1)[0]
    return problem.prompt + code.rstrip("\n") + between


_REPAIR_PROMPTS = {
    "native": _docstring_repair,
    "bigcode": _docstring_repair,
    "lm-eval": _lm_eval_repair,
    "chat": _chat_repair,
}


def repair_prompt(problem: Problem, completion: str, feedback: Feedback, tokenizer: Any = None) -> str:
    """The prompt asking for a corrected completion, in the problem's prompt format: the original prompt, the
    failed attempt (as the protocol post-processes it, then `shown_attempt`) and the feedback. `tokenizer`:
    the chat format's (its chat template)."""
    if not isinstance(problem, FormattedProblem) or problem.fmt not in _REPAIR_PROMPTS:
        raise ValueError(
            f"task {problem.task_id}: self-repair needs a problem in one of {', '.join(_REPAIR_PROMPTS)}"
        )
    code = shown_attempt(problem.code(completion))
    return _REPAIR_PROMPTS[problem.fmt](problem, code, feedback, tokenizer)


@dataclass
class _Attempt:
    """One completion of a sample: the source's record (tokens, finish reason), its visible check and
    feedback, and, when a repair followed it, its judge's verdict."""

    completion: str
    info: Mapping[str, Any]
    visible: ExecResult | None = None
    feedback: Feedback | None = None
    judged: Future[ExecResult] | None = None

    def record(self) -> dict[str, Any]:
        """The attempt in samples.jsonl (`passed`: None for the last, judged in the sample's own record)."""
        return {
            "completion": self.completion,
            **self.info,
            "visible_passed": self.visible is not None and self.visible.passed,
            "feedback": self.feedback.text() if self.feedback is not None else None,
            "passed": self.judged.result().passed if self.judged is not None else None,
        }


@dataclass
class _Sample:
    problem: Problem
    index: int
    attempts: list[_Attempt] = field(default_factory=list)


class SelfRepair:
    """A completion source that repairs another's completions with the feedback of their visible asserts.

    Use it as a context manager: it owns a sandbox for the visible checks (aborted on an exception). `rounds`:
    repairs per sample at most; `tokenizer`: for the chat format's template. `last_records` per sample:
    `num_tokens` (all rounds' generated tokens, when the source reports them), `finish_reason` (the last
    attempt's), `repair_rounds` (repairs made) and `repair_attempts` (each attempt: completion, its tokens and
    finish reason, `visible_passed`, `feedback`, `passed`).
    """

    def __init__(
        self,
        source: CompletionSource,
        rounds: int,
        *,
        limits: SandboxLimits | None = None,
        workers: int | None = None,
        tokenizer: Any = None,
    ) -> None:
        if rounds < 1:
            raise ValueError(f"self-repair needs rounds >= 1, got {rounds}")
        self.source, self.rounds, self.tokenizer = source, rounds, tokenizer
        self.sandbox = Sandbox(limits, workers)
        self.prompt_length = getattr(source, "prompt_length", None)  # the evaluator batches by it
        self.last_records: list[list[dict[str, Any]]] = []

    def __enter__(self) -> SelfRepair:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.sandbox.close(abort=exc_type is not None)

    def _generate(self, problems: list[Problem], indices: list[list[int]]) -> list[list[_Attempt]]:
        """The source's completions with its records, as attempts."""
        texts = self.source(problems, indices)
        records = getattr(self.source, "last_records", None) or [[{}] * len(w) for w in indices]
        return [
            [_Attempt(text, dict(info)) for text, info in zip(row, infos, strict=True)]
            for row, infos in zip(texts, records, strict=True)
        ]

    def __call__(self, problems: list[Problem], indices: list[list[int]]) -> list[list[str]]:
        """One completion per requested sample index of each problem, repaired up to `rounds` times."""
        for problem in problems:
            visible_tests(problem)
        samples: list[list[_Sample]] = []
        for problem, wanted, attempts in zip(
            problems, indices, self._generate(problems, indices), strict=True
        ):
            samples.append([_Sample(problem, i, [a]) for i, a in zip(wanted, attempts, strict=True)])
        pending = [sample for row in samples for sample in row]
        for round_ in range(self.rounds + 1):
            checks = [
                self.sandbox.submit(feedback_program(s.problem, s.attempts[-1].completion)) for s in pending
            ]
            failing: list[tuple[_Sample, Feedback]] = []
            for sample, check in zip(pending, checks, strict=True):
                attempt = sample.attempts[-1]
                attempt.visible = check.result()
                attempt.feedback = parse_feedback(sample.problem, attempt.visible)
                if attempt.feedback is not None:
                    failing.append((sample, attempt.feedback))
            if round_ == self.rounds or not failing:
                break
            prompts: list[Problem] = []
            for sample, feedback in failing:
                attempt = sample.attempts[-1]
                attempt.judged = self.sandbox.submit(sample.problem.program(attempt.completion))
                text = repair_prompt(sample.problem, attempt.completion, feedback, self.tokenizer)
                prompts.append(replace(sample.problem, prompt=text))
            pending = [sample for sample, _ in failing]
            repaired = self._generate(prompts, [[sample.index] for sample in pending])
            for sample, (attempt,) in zip(pending, repaired, strict=True):
                sample.attempts.append(attempt)
        self.last_records = [[self._record(sample) for sample in row] for row in samples]
        return [[sample.attempts[-1].completion for sample in row] for row in samples]

    @staticmethod
    def _record(sample: _Sample) -> dict[str, Any]:
        """A sample's record: generated tokens of all rounds, the last finish reason, the attempts."""
        attempts = [attempt.record() for attempt in sample.attempts]
        record: dict[str, Any] = {}
        if all(isinstance(a.get("num_tokens"), int) for a in attempts):
            record["num_tokens"] = sum(a["num_tokens"] for a in attempts)
        if "finish_reason" in attempts[-1]:
            record["finish_reason"] = attempts[-1]["finish_reason"]
        return {**record, "repair_rounds": len(attempts) - 1, "repair_attempts": attempts}

    def summary_extra(
        self, problems: Sequence[Problem], wanted: Mapping[str, int], results: Mapping[tuple[str, int], dict]
    ) -> dict[str, Any]:
        """summary.json's `self_repair` (see `repair_summary`)."""
        return {"self_repair": repair_summary(problems, wanted, results, self.rounds)}


def _attempts(record: dict, key: tuple[str, int], rounds: int) -> list[dict]:
    """A samples.jsonl record's repair attempts; ValueError naming the sample when it has none or too many."""
    attempts = record.get("repair_attempts")
    if not isinstance(attempts, list) or not attempts:
        raise ValueError(
            f"samples.jsonl: sample {key[0]}/{key[1]} has no repair_attempts (not made with self-repair)"
        )
    if len(attempts) > rounds + 1:
        raise ValueError(
            f"samples.jsonl: sample {key[0]}/{key[1]} has {len(attempts)} attempts, more than "
            f"{rounds} repair rounds make"
        )
    return attempts


def repair_summary(
    problems: Sequence[Problem],
    wanted: Mapping[str, int],
    results: Mapping[tuple[str, int], dict],
    rounds: int,
) -> dict[str, Any]:
    """Self-repair in numbers: pass@1 after each round (round 0: no repair; a sample that stopped earlier
    keeps its last attempt), generated tokens per round and in all, samples repaired and fixed, and whether
    the judge ran the feedback's own asserts (MBPP: `feedback_assisted`)."""
    keys = [(p.task_id, i) for p in problems for i in range(wanted[p.task_id]) if (p.task_id, i) in results]
    history = {key: _attempts(results[key], key, rounds) for key in keys}

    def passed(key: tuple[str, int], round_: int) -> bool:
        attempts = history[key]
        return (
            bool(attempts[round_]["passed"]) if round_ < len(attempts) - 1 else bool(results[key]["passed"])
        )

    per_problem: dict[str, list[tuple[str, int]]] = {p.task_id: [] for p in problems}
    for key in keys:
        per_problem[key[0]].append(key)
    by_round = []
    for round_ in range(rounds + 1):
        counts = [(len(mine), sum(passed(key, round_) for key in mine)) for mine in per_problem.values()]
        by_round.append(mean_pass_at_k(counts, [1])[1])
    tokens: list[int] | None = [0] * (rounds + 1)
    for attempts in history.values():
        for round_, attempt in enumerate(attempts):
            if tokens is None or not isinstance(attempt.get("num_tokens"), int):
                tokens = None
                break
            tokens[round_] += attempt["num_tokens"]
    assisted = any(getattr(p, "dataset", "") in FEEDBACK_JUDGED for p in problems)
    staged = any(getattr(p, "judged", False) for p in problems)  # MBPP+ judged by EvalPlus: base, then plus
    if assisted:
        judge = "the prompt's asserts, the feedback's source (feedback-assisted)"
    elif staged:
        judge = "hidden inputs (plus); the base inputs are the shown asserts' (base: feedback-assisted)"
    else:
        judge = "hidden tests"
    return {
        "rounds": rounds,
        "feedback_assisted": assisted,
        **({"base_feedback_assisted": True} if staged else {}),
        "judge": judge,
        "pass_at_1_by_round": by_round,
        "samples_repaired": sum(len(a) > 1 for a in history.values()),
        "samples_fixed": sum(passed(key, rounds) and not passed(key, 0) for key in keys),
        "generated_tokens": sum(tokens) if tokens is not None else None,
        "generated_tokens_by_round": tokens,
        "generated_tokens_per_sample": round(sum(tokens) / len(keys), 2)
        if tokens is not None and keys
        else None,
    }
