"""Prompt protocols: how a benchmark task becomes a prompt, where generation stops, and what program runs.

A protocol (`fmt`) is followed byte for byte, so scores compare with those the harnesses publish:

- `native`: this project's own prompts (`mbpp.build_prompt`, HumanEval's signature + docstring).
- `bigcode`: bigcode-evaluation-harness (commit 8fc5bae, `bigcode_eval/tasks/mbpp.py` and `humaneval.py`).
  MBPP: zero-shot, the prompt is a docstring (three double quotes) holding the text and the first assert,
  `Q\\n{text}\\n{test_list[0]}\\nQ\\n` with Q the three quotes; the program is prompt + completion
  (cut at the first stop word) + `"\\n"` + the three asserts; `test_setup_code` is not used. HumanEval:
  the prompt is stripped (`prompt.strip()`); the program is prompt + completion + `"\\n"` + `"\\n"` + test
  + `"\\n"` + `check(entry_point)`.
- `lm-eval`: lm-evaluation-harness 0.4.x (checked at v0.4.12; the MBPP prompt dates from v0.4.8),
  `lm_eval/tasks/mbpp/mbpp.yaml` and `lm_eval/tasks/humaneval/humaneval.yaml`. MBPP: the test split
  (tasks 11-510), three shots from the prompt split (tasks 2, 3, 4, in that order; `fewshot_config`
  sampler `first_n`), each rendered as the task text + its code + `"\\n[DONE]"` and followed by the few-shot
  delimiter `"\\n\\n"` (the target delimiter is `""`), then the task's text ending in `"[BEGIN]\\n"`;
  generation stops at `[DONE]`; the program is completion + `"\\n"` + the three asserts (no prompt, no
  `test_setup_code`). HumanEval: zero-shot, the prompt as it is; the program is prompt + completion +
  `"\\n"` + test + `"\\ncheck(entry_point)"`.
- `chat`: for instruct models, EvalPlus's instruct codegen (v0.3.1, `evalplus/provider/utility.py`
  `make_raw_chat_prompt`, prefixes from `evalplus/codegen.py`): the user turn is EvalPlus's instruction
  prefix and the stripped task prompt in a ``` block; the assistant turn is prefilled with its response
  prefix and an opened ```python block; both are rendered by the tokenizer's own chat template, and the
  text up to the prefill's end is the prompt. The program is the sanitized code of the completion (tabs as
  four spaces, `extract_code`, then `sanitize` to the entry point, as EvalPlus does) + the tests.

Each format (`FORMATS`, a `PromptFormat`) also carries its harness's generation set-up: whether a BOS is put
before the prompt (training's `[BOS] prompt`, or whatever the tokenizer adds, as the harnesses call it) and the
default number of new tokens.

The MBPP+ and HumanEval+ datasets (`hrm_codegen.datasets.evalplus`) use their family's prompts and stops
and their extended `test` code as the test program. MBPP+ from EvalPlus's source file (`evalplus_source`) is
`judged`: its test program is EvalPlus's judge, handed the solution's source as a string.
"""

from __future__ import annotations

import ast
import builtins
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hrm_codegen.datasets.humaneval import HUMANEVAL_STOP_STRINGS
from hrm_codegen.datasets.mbpp import (
    MBPP_STOP_STRINGS,
    build_prompt,
    few_shot_tasks,
    mbpp_problems,
    normalize_code,
    split_tasks,
)
from hrm_codegen.datasets.problems import Problem
from hrm_codegen.sanitize import extract_code, sanitize

__all__ = [
    "BOS_ALWAYS",
    "BOS_TOKENIZER",
    "DATASETS",
    "FORMATS",
    "FormattedProblem",
    "PromptFormat",
    "build_problems",
    "chat_prompt",
    "mbpp_chat_example",
    "default_timeout_s",
    "extract_code",
    "mbpp_entry_point",
    "raw_format_notice",
    "stop_sequences",
    "write_prompts",
]

BOS_ALWAYS = (
    "always"  # [BOS] prompt, as training encodes prompts (EOS stands in when the tokenizer has no BOS)
)
BOS_TOKENIZER = (
    "tokenizer"  # the tokenizer's own special tokens (add_special_tokens=True), as the harness encodes
)


@dataclass(frozen=True)
class PromptFormat:
    """A prompt protocol and how its harness generates: its BOS rule (`BOS_ALWAYS` or `BOS_TOKENIZER`) and its
    default generation length (max_new_tokens) per dataset family ("mbpp", "humaneval")."""

    name: str
    description: str
    bos: str
    max_new_tokens: Mapping[str, int]

    def default_max_new_tokens(self, dataset: str) -> int:
        """max_new_tokens for `dataset` when the command line does not set it."""
        return self.max_new_tokens[check_format(dataset, self.name)]


FORMATS: dict[str, PromptFormat] = {
    f.name: f
    for f in (
        # Training's prompt encoding (`datasets.batching.encode_prompt`); this project's default length.
        PromptFormat(
            "native",
            "this project's prompts (the MBPP docstring format, HumanEval signature + docstring)",
            BOS_ALWAYS,
            {"mbpp": 256, "humaneval": 256},
        ),
        # bigcode_eval/utils.py `TokenizedDataset` calls the tokenizer with its defaults; main.py's
        # --max_length_generation 512 bounds prompt + generation there, the generation alone here (completions
        # end at the stop words well before).
        PromptFormat(
            "bigcode",
            "bigcode-evaluation-harness mbpp / humaneval tasks (zero-shot)",
            BOS_TOKENIZER,
            {"mbpp": 512, "humaneval": 512},
        ),
        # lm_eval/models/huggingface.py at v0.4.12: add_bos_token=None, the tokenizer's defaults (since v0.4.9.2;
        # earlier releases added no BOS to causal models); max_gen_toks 256 by default (mbpp.yaml sets none),
        # 1024 in humaneval.yaml.
        PromptFormat(
            "lm-eval",
            "lm-evaluation-harness 0.4 mbpp (3-shot, [BEGIN]/[DONE]) / humaneval tasks",
            BOS_TOKENIZER,
            {"mbpp": 256, "humaneval": 1024},
        ),
        # EvalPlus v0.3.1 evalplus/provider/hf.py encodes the rendered prompt with `tokenizer.encode` (its
        # defaults); provider/base.py's max_new_tokens is 768.
        PromptFormat(
            "chat",
            "EvalPlus instruct prompt in the tokenizer's chat template; code from the fenced block",
            BOS_TOKENIZER,
            {"mbpp": 768, "humaneval": 768},
        ),
    )
}
DATASETS = ("mbpp", "humaneval", "mbppplus", "humanevalplus")
FAMILY = {"mbpp": "mbpp", "mbppplus": "mbpp", "humaneval": "humaneval", "humanevalplus": "humaneval"}

# Sandbox wall-clock limits per program: the extended (plus) tests run hundreds of inputs.
DEFAULT_TIMEOUT_S = 10.0
PLUS_TIMEOUT_S = 30.0
# A judged problem's program is `SOLUTION = <the solution's source as a string>` and its test program, which
# runs that source itself (MBPP+ from EvalPlus's source file: `hrm_codegen.datasets.evalplus_judge`).
SOLUTION_NAME = "SOLUTION"

LM_EVAL_SHOT_IDS = (2, 3, 4)
EVALPLUS_INSTRUCTION_PREFIX = "Please provide a self-contained Python script that solves the following problem in a markdown code block:"
EVALPLUS_RESPONSE_PREFIX = (
    "Below is a Python script with a self-contained function that solves the problem and passes "
    "corresponding tests:"
)
_RESPONSE_MARK = "\x00hrm-codegen: the model's response starts here\x00"

# EvalPlus's stop strings for a model with a chat template: its EOS list plus the closing fence.
_CHAT_STOPS = (
    "<|endoftext|>",
    "<|endofmask|>",
    "</s>",
    "\nif __name__",
    "\ndef main(",
    "\nprint(",
    "\n```\n",
)
_STOPS: dict[tuple[str, str], tuple[str, ...]] = {
    ("mbpp", "native"): tuple(MBPP_STOP_STRINGS),
    ("humaneval", "native"): tuple(HUMANEVAL_STOP_STRINGS),
    ("mbpp", "bigcode"): ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```"),
    ("humaneval", "bigcode"): ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```", "<file_sep>"),
    ("mbpp", "lm-eval"): ("[DONE]",),
    ("humaneval", "lm-eval"): ("\nclass", "\ndef", "\n#", "\nif", "\nprint"),
    ("mbpp", "chat"): _CHAT_STOPS,
    ("humaneval", "chat"): _CHAT_STOPS,
}


@dataclass(frozen=True)
class FormattedProblem(Problem):
    """A Problem rendered in one protocol: its stop sequences and the protocol's program assembly.

    `concat`: the program is `setup_code + (prompt if include_prompt) + code + test_program`, byte for byte
    as the harness builds it (its test program starts with the harness's separator); otherwise `Problem`'s
    newline-joined layout. `cut_at_stops`: the completion is cut at the first stop sequence (harness
    post-processing; a no-op for completions already cut). `chat_code`: EvalPlus's instruct post-processing.
    """

    dataset: str = ""
    fmt: str = "native"
    stop_sequences: tuple[str, ...] = ()
    entry_point: str = ""
    concat: bool = False
    cut_at_stops: bool = False
    chat_code: bool = False
    visible_tests: tuple[str, ...] = ()  # the asserts the prompt shows (MBPP family): self-repair's feedback
    visible_setup: str = ""  # what they need first, as the test program provides it (setup code, imports)
    judged: bool = False  # the test program gets the solution's source as SOLUTION_NAME and runs it itself

    def code(self, completion: str) -> str:
        """The completion as the protocol post-processes it before the program is assembled."""
        if self.cut_at_stops:
            cut = min(
                (i for i in map(completion.find, self.stop_sequences) if i >= 0), default=len(completion)
            )
            completion = completion[:cut]
        if self.chat_code:
            completion = sanitize(extract_code(completion.replace("\t", "    ")), self.entry_point or None)
        return completion

    def _solution(self, code: str) -> str:
        """A judged problem's solution: setup, (prompt,) the post-processed completion."""
        return self.setup_code + (self.prompt if self.include_prompt else "") + code

    def syntax_source(self, completion: str) -> str:
        """The source whose syntax the syntax-valid rate counts: the program (a judged problem: its solution)."""
        return self._solution(self.code(completion)) if self.judged else self.program(completion)

    def program(self, completion: str) -> str:
        """The full program the sandbox runs for `completion`."""
        code = self.code(completion)
        if self.judged:
            return f"{SOLUTION_NAME} = {self._solution(code)!r}\n{self.test_program}"
        if not self.concat:
            return super().program(code)
        return self.setup_code + (self.prompt if self.include_prompt else "") + code + self.test_program


@dataclass(frozen=True)
class SanitizedProblem(FormattedProblem):
    """A problem whose code is sanitized before it runs (`evaluate.py --sanitize`, EvalPlus-style): the longest
    prefix that parses, keeping the definitions the entry point needs (`hrm_codegen.sanitize.sanitize`)."""

    @classmethod
    def of(cls, problem: FormattedProblem) -> SanitizedProblem:
        return cls(**asdict(problem))

    def _plain(self, completion: str) -> tuple[FormattedProblem, str]:
        """The problem without post-processing, and the sanitized body it runs."""
        code = self.code(completion)
        body = sanitize((self.prompt if self.include_prompt else "") + code, self.entry_point or None)
        plain = FormattedProblem(
            **{**asdict(self), "include_prompt": False, "cut_at_stops": False, "chat_code": False}
        )
        return plain, body

    def program(self, completion: str) -> str:
        plain, body = self._plain(completion)
        return plain.program(body)

    def syntax_source(self, completion: str) -> str:
        plain, body = self._plain(completion)
        return plain.syntax_source(body)


def check_format(dataset: str, fmt: str) -> str:
    """The dataset's family ('mbpp' or 'humaneval'); ValueError for an unknown dataset or format."""
    if dataset not in FAMILY:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown prompt format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return FAMILY[dataset]


def stop_sequences(dataset: str, fmt: str) -> tuple[str, ...]:
    """The strings that end a completion for this dataset and prompt format."""
    return _STOPS[(check_format(dataset, fmt), fmt)]


def default_timeout_s(dataset: str) -> float:
    """The sandbox's per-program wall-clock limit for a dataset (longer for the extended plus tests)."""
    check_format(dataset, "native")
    return PLUS_TIMEOUT_S if dataset.endswith("plus") else DEFAULT_TIMEOUT_S


def _hf_tokenizer(tokenizer: Any) -> Any:
    """The Hugging Face tokenizer inside a project `CodeTokenizer` (`.hf`), or the tokenizer itself."""
    return getattr(tokenizer, "hf", tokenizer)


def raw_format_notice(tokenizer: Any, fmt: str) -> str | None:
    """A one-line notice when a tokenizer with a chat template is evaluated with a raw (non-chat) format."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown prompt format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "chat" or tokenizer is None or not getattr(_hf_tokenizer(tokenizer), "chat_template", None):
        return None
    return (
        f"note: the tokenizer has a chat template but format {fmt!r} sends raw prompts without it; "
        "an instruct model is usually evaluated with format 'chat'"
    )


def chat_prompt(task_prompt: str, tokenizer: Any) -> str:
    """EvalPlus's instruct prompt for `task_prompt`, rendered by the tokenizer's chat template.

    The assistant turn is prefilled with the response prefix and an opened ```python block; the prompt is
    the rendered conversation up to that point (the model continues inside the code block).
    """
    hf = _hf_tokenizer(tokenizer)
    if tokenizer is None or not getattr(hf, "chat_template", None):
        name = getattr(hf, "name_or_path", None) or type(hf).__name__
        raise ValueError(
            f"prompt format 'chat' needs a tokenizer with a chat template; tokenizer {name!r} has none "
            "(tokenizer.chat_template is not set): use a raw format (native, bigcode, lm-eval) or an instruct "
            "model's tokenizer"
        )
    user = f"{EVALPLUS_INSTRUCTION_PREFIX}\n```\n{task_prompt.strip()}\n```\n"
    assistant = f"{EVALPLUS_RESPONSE_PREFIX}\n```python\n{_RESPONSE_MARK}\n```\n"
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    rendered = hf.apply_chat_template(messages, tokenize=False)
    if not isinstance(rendered, str) or _RESPONSE_MARK not in rendered:
        raise ValueError(
            "the tokenizer's chat template does not render the assistant message's content, so the response "
            "cannot be prefilled as EvalPlus does; prompt format 'chat' cannot use this template"
        )
    return rendered.split(_RESPONSE_MARK)[0]


def mbpp_chat_example(task: dict, tokenizer: Any) -> tuple[str, str]:
    """A training example of an MBPP task in the `chat` format: (prompt, target).

    The prompt is the one evaluation renders (`_mbpp_problem`: EvalPlus's instruct prompt around bigcode's
    MBPP docstring, the assistant turn opened with a python block); the target is the reference code and
    the closing fence, which the chat stop strings end a completion at.
    """
    return chat_prompt(_bigcode_mbpp_prompt(task), tokenizer), normalize_code(task["code"]) + "\n```\n"


def _parse(code: str) -> ast.Module | None:
    """The syntax tree of `code`, None when it does not parse (syntax warnings silenced)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(code)
    except (SyntaxError, ValueError):
        return None


def mbpp_entry_point(task: dict) -> str:
    """The function an MBPP task's asserts test: the first function called in them that its code defines.

    Without reference code (or no match), the first called name that is not a builtin; "" when none.
    """
    calls: list[str] = []
    for tree in filter(None, map(_parse, task["test_list"])):
        calls += [
            n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        ]
    code = _parse(task.get("code", "").replace("\r\n", "\n"))
    defined = {n.name for n in code.body if isinstance(n, ast.FunctionDef | ast.ClassDef)} if code else set()
    for name in calls:
        if name in defined:
            return name
    return next((name for name in calls if not hasattr(builtins, name)), "")


def _require(row: Any, fields: Sequence[str], where: str) -> None:
    """ValueError naming `where` unless `row` is a dict with every field."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a task record (dict), got {type(row).__name__}")
    missing = [field for field in fields if field not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(map(repr, missing))}")


def _bigcode_mbpp_prompt(task: dict) -> str:
    """bigcode-evaluation-harness MBPP prompt (InCoder style): text and first assert in a docstring."""
    return f'"""\n{task["text"]}\n{task["test_list"][0]}\n"""\n'


def _lm_eval_mbpp_text(task: dict) -> str:
    """lm-evaluation-harness MBPP `doc_to_text`: the task, its three asserts, `[BEGIN]`."""
    if len(task["test_list"]) < 3:
        raise ValueError(f"MBPP task {task['task_id']}: format 'lm-eval' needs 3 asserts in test_list")
    tests = "\n".join(task["test_list"][:3])
    return (
        f"You are an expert Python programmer, and here is your task: {task['text']} "
        f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
    )


def _lm_eval_mbpp_context(task: dict, shots: Sequence[dict]) -> str:
    """The lm-eval MBPP context: each shot's text + code + `\\n[DONE]` + the few-shot delimiter, then the task."""
    return "".join(
        _lm_eval_mbpp_text(s) + s["code"] + "\n[DONE]" + "\n\n" for s in shots
    ) + _lm_eval_mbpp_text(task)


def _lm_eval_shots(rows: Sequence[dict], count: int) -> list[dict]:
    """lm-eval's MBPP shots: the first `count` of tasks 2, 3, 4 (with their code as stored, `\\r\\n` kept)."""
    if not 0 <= count <= len(LM_EVAL_SHOT_IDS):
        raise ValueError(f"format 'lm-eval' takes 0 to {len(LM_EVAL_SHOT_IDS)} MBPP shots, got {count}")
    by_id = {row["task_id"]: row for row in rows}
    missing = [i for i in LM_EVAL_SHOT_IDS[:count] if i not in by_id]
    if missing:
        raise ValueError(
            f"format 'lm-eval' takes its shots from MBPP tasks {missing}, missing from the MBPP rows"
        )
    return [by_id[i] for i in LM_EVAL_SHOT_IDS[:count]]


def _mbpp_tests(task: dict, fmt: str) -> str:
    """The test program: a plus task's extended tests; else the asserts (bigcode: all of `test_list`,
    lm-eval: its first three, as its `doc_to_target`), with `test_setup_code` first in the other formats."""
    if "test" in task:
        imports = "".join(line + "\n" for line in task.get("test_imports", []))
        return imports + task["test"]
    asserts = "\n".join(task["test_list"][:3] if fmt == "lm-eval" else task["test_list"])
    setup = task.get("test_setup_code", "")
    if fmt in ("bigcode", "lm-eval") or not setup.strip():
        return asserts
    return setup.strip("\n") + "\n" + asserts


def _mbpp_visible(task: dict, fmt: str) -> dict[str, Any]:
    """The asserts a prompt in `fmt` shows (native: all of `test_list`, lm-eval: its first three, bigcode and
    chat: the first) and their setup as `_mbpp_tests` gives it (a plus task's imports, else `test_setup_code`
    where the format runs it): `visible_tests` and `visible_setup`, what self-repair's feedback runs."""
    shown = task["test_list"] if fmt == "native" else task["test_list"][: 3 if fmt == "lm-eval" else 1]
    if "test" in task:
        setup = "".join(line + "\n" for line in task.get("test_imports", []))
    elif fmt in ("bigcode", "lm-eval") or not task.get("test_setup_code", "").strip():
        setup = ""
    else:
        setup = normalize_code(task["test_setup_code"])
    return {"visible_tests": tuple(shown), "visible_setup": setup}


def _mbpp_problem(
    task: dict, dataset: str, fmt: str, shots: Sequence[dict], tokenizer: Any
) -> FormattedProblem:
    """One MBPP-family task in a non-native format (or a plus task in any format)."""
    task_id = str(task["task_id"])
    common: dict[str, Any] = {
        "task_id": task_id,
        "reference": task.get("code", ""),
        "dataset": dataset,
        "fmt": fmt,
        "stop_sequences": stop_sequences(dataset, fmt),
        "entry_point": mbpp_entry_point(task),
        "cut_at_stops": fmt != "native",
        **_mbpp_visible(task, fmt),
        "judged": bool(task.get("judged")),
    }
    tests = _mbpp_tests(task, fmt)
    if fmt == "native":
        return FormattedProblem(prompt=build_prompt(task, shots), test_program=tests, **common)
    if fmt == "bigcode":
        prompt = _bigcode_mbpp_prompt(task)
        return FormattedProblem(
            prompt=prompt, test_program="\n" + tests, include_prompt=True, concat=True, **common
        )
    if fmt == "lm-eval":
        prompt = _lm_eval_mbpp_context(task, shots)
        return FormattedProblem(prompt=prompt, test_program="\n" + tests, concat=True, **common)
    prompt = chat_prompt(
        _bigcode_mbpp_prompt(task), tokenizer
    )  # EvalPlus's MBPP task prompt is that docstring
    return FormattedProblem(prompt=prompt, test_program=tests, chat_code=True, **common)


def mbpp_task_problem(
    text: str, tests: Sequence[str] = (), fmt: str = "native", tokenizer: Any = None
) -> FormattedProblem:
    """A task of one's own (its text and asserts) as an MBPP problem in format `fmt`: the prompt the models
    trained here expect, its stop strings, and a program that runs the asserts (scripts/generate.py)."""
    check_format("mbpp", fmt)
    task = {"task_id": "task", "text": text, "test_list": list(tests), "code": ""}
    return _mbpp_problem(task, "mbpp", fmt, [], tokenizer)


def _humaneval_problem(task: dict, dataset: str, fmt: str, tokenizer: Any) -> FormattedProblem:
    """One HumanEval-family task in a format."""
    check = f"check({task['entry_point']})"
    common: dict[str, Any] = {
        "task_id": str(task["task_id"]),
        "reference": task["canonical_solution"],
        "dataset": dataset,
        "fmt": fmt,
        "stop_sequences": stop_sequences(dataset, fmt),
        "entry_point": task["entry_point"],
        "cut_at_stops": fmt != "native",
    }
    if fmt == "native":
        return FormattedProblem(
            prompt=task["prompt"], test_program=task["test"] + "\n" + check, include_prompt=True, **common
        )
    if fmt == "bigcode":
        tests = "\n" + "\n" + task["test"] + "\n" + check
        return FormattedProblem(
            prompt=task["prompt"].strip(), test_program=tests, include_prompt=True, concat=True, **common
        )
    if fmt == "lm-eval":
        tests = "\n" + task["test"] + "\n" + check
        return FormattedProblem(
            prompt=task["prompt"], test_program=tests, include_prompt=True, concat=True, **common
        )
    prompt = chat_prompt(task["prompt"], tokenizer)
    return FormattedProblem(prompt=prompt, test_program=task["test"] + "\n" + check, chat_code=True, **common)


def build_problems(
    dataset: str,
    rows: Sequence[dict],
    fmt: str = "native",
    *,
    split: str = "test",
    tokenizer: Any = None,
    few_shot: int | None = None,
    shot_rows: Sequence[dict] | None = None,
) -> list[FormattedProblem]:
    """The evaluation problems of `dataset` rendered in prompt format `fmt`.

    `rows`: MBPP rows (`mbpp.load_mbpp`; `split` picks the canonical split), HumanEval problem dicts
    (`load_rows("humaneval")`), or MBPP+ / HumanEval+ rows (`hrm_codegen.datasets.evalplus`; all of them,
    `split` must be "test"). `few_shot`: None for the format's own count (lm-eval MBPP: 3, else 0); only
    `native` and `lm-eval` MBPP take shots. `shot_rows`: the MBPP rows the shots come from when the dataset
    is MBPP+ (default: `rows`). `tokenizer`: needed by `chat` (its chat template).
    """
    family = check_format(dataset, fmt)
    plus = dataset.endswith("plus")
    required = (
        ("task_id", "text", "test_list") if family == "mbpp" else ("task_id", "prompt", "entry_point", "test")
    )
    for index, row in enumerate(rows):
        where = f"{dataset} row {index}" + (
            " (load plus rows with hrm_codegen.datasets.evalplus)" if plus else ""
        )
        _require(row, required + (("test",) if plus and family == "mbpp" else ()), where)
    if (family == "humaneval" or plus) and split != "test":
        raise ValueError(f"dataset {dataset!r} has only the 'test' split, got split={split!r}")
    default_shots = 3 if (family == "mbpp" and fmt == "lm-eval") else 0
    shots_wanted = default_shots if few_shot is None else few_shot
    if shots_wanted and not (family == "mbpp" and fmt in ("native", "lm-eval")):
        raise ValueError(f"format {fmt!r} on {dataset!r} is zero-shot; got few_shot={shots_wanted}")
    if family == "humaneval":
        return [
            _humaneval_problem({"canonical_solution": "", **row}, dataset, fmt, tokenizer) for row in rows
        ]
    if fmt == "native" and not plus:
        return [_as_formatted(p, rows, dataset) for p in mbpp_problems(rows, split, few_shot=shots_wanted)]
    pool = rows if shot_rows is None else shot_rows
    if fmt == "native":
        shots = few_shot_tasks(pool, shots_wanted)
    else:
        shots = _lm_eval_shots(pool, shots_wanted) if fmt == "lm-eval" else []
    tasks = rows if plus else split_tasks(rows, split)
    return [_mbpp_problem(task, dataset, fmt, shots, tokenizer) for task in tasks]


def _as_formatted(problem: Problem, rows: Sequence[dict], dataset: str) -> FormattedProblem:
    """A native MBPP Problem (exactly as `mbpp_problems` builds it) with its stops and entry point."""
    task = next(row for row in rows if str(row["task_id"]) == problem.task_id)
    return FormattedProblem(
        **asdict(problem),
        dataset=dataset,
        fmt="native",
        stop_sequences=stop_sequences(dataset, "native"),
        entry_point=mbpp_entry_point(task),
        **_mbpp_visible(task, "native"),
    )


def write_prompts(path: str | Path, problems: Sequence[FormattedProblem]) -> int:
    """Write one JSON line per problem (task id, dataset, format, exact prompt, stops, test program and
    how the program is assembled); return the number written. Needs no model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for p in problems:
            record = {
                "task_id": p.task_id,
                "dataset": p.dataset,
                "format": p.fmt,
                "prompt": p.prompt,
                "stop_sequences": list(p.stop_sequences),
                "setup_code": p.setup_code,
                "test_program": p.test_program,
                "include_prompt": p.include_prompt,
                "concat": p.concat,
                "cut_at_stops": p.cut_at_stops,
                "chat_code": p.chat_code,
                "entry_point": p.entry_point,
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(problems)
