"""MBPP: reading and validating the jsonl, canonical splits, the one prompt format, the MBPP dataset and problems."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hrm_codegen.datasets.batching import EncodedDataset, encode_pairs
from hrm_codegen.datasets.cache import atomic_write_bytes, load_or_build
from hrm_codegen.datasets.problems import Problem
from hrm_codegen.jsonl import read_jsonl

if TYPE_CHECKING:
    from hrm_codegen.tokenization import CodeTokenizer

logger = logging.getLogger(__name__)

HUB_DATASET = ("google-research-datasets/mbpp", "full")
DEFAULT_PATH = Path("data/mbpp/mbpp.jsonl")

# Canonical MBPP splits by task_id (inclusive ranges): 10 / 500 / 90 / 374 tasks.
SPLITS: dict[str, tuple[int, int]] = {
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
}

# Version of build_prompt's output; part of the dataset cache key. Bump it whenever build_prompt changes.
PROMPT_FORMAT = "mbpp-docstring-v1"

# Version of the chat-format training examples (`protocols.mbpp_chat_example`), part of the cache key.
CHAT_FORMAT = "evalplus-chat-v1"

# Generation stops at any of these after the code (the prompt is a docstring block followed by code).
MBPP_STOP_STRINGS = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```")

# Few-shot examples come from the prompt split in this order: tasks 2, 3, 4 (the three Austin et al. 2021
# prompt with) first; task 1 last because its solution relies on module-level constants.
FEW_SHOT_ORDER = (2, 3, 4, 5, 6, 7, 8, 9, 10, 1)

FIELDS: dict[str, str] = {
    "text": "str",
    "code": "str",
    "task_id": "int",
    "test_setup_code": "str",
    "test_list": "list[str]",
    "challenge_test_list": "list[str]",
}


class MBPPFormatError(ValueError):
    """An MBPP file or record does not have the expected format; the message starts with file:line."""


def _has_type(value: Any, kind: str) -> bool:
    """True when a JSON value matches one of the FIELDS type names."""
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "list[str]":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return isinstance(value, str)


def validate_task(row: Any, where: str) -> dict:
    """Check one MBPP record for the six fields and their types; return it with the fields in canonical order."""
    if not isinstance(row, dict):
        raise MBPPFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for field, kind in FIELDS.items():
        if field not in row:
            raise MBPPFormatError(f"{where}: missing field {field!r}")
        if not _has_type(row[field], kind):
            raise MBPPFormatError(
                f"{where}: field {field!r} must be {kind}, got {type(row[field]).__name__}: {row[field]!r:.60}"
            )
    return {field: row[field] for field in FIELDS}


def read_mbpp_jsonl(path: str | Path) -> list[dict]:
    """Read and validate an MBPP jsonl file (one task per line); raise MBPPFormatError naming file:line."""
    rows: list[dict] = []
    first_line: dict[int, int] = {}
    for number, raw in read_jsonl(path, error=MBPPFormatError, blank_lines=False, what="MBPP file"):
        where = f"{path}:{number}"
        row = validate_task(raw, where)
        if row["task_id"] in first_line:
            raise MBPPFormatError(
                f"{where}: duplicate task_id {row['task_id']} (first on line {first_line[row['task_id']]})"
            )
        first_line[row["task_id"]] = number
        rows.append(row)
    return rows


def _load_hub() -> list[dict]:
    """All MBPP tasks from the Hugging Face Hub (every split of the 'full' config), sorted by task_id."""
    import datasets

    name, config = HUB_DATASET
    try:
        parts = datasets.load_dataset(name, config)
    except Exception as err:  # any failure here means the Hub copy is unavailable
        raise ConnectionError(
            f"could not load MBPP from the Hugging Face Hub ({name}, {config}): {err}"
        ) from err
    rows = [
        validate_task(dict(row), f"hub {name}[{split}] row {index}")
        for split, part in parts.items()
        for index, row in enumerate(part)
    ]
    return sorted(rows, key=lambda row: row["task_id"])


def load_mbpp(source: str | Path = DEFAULT_PATH) -> list[dict]:
    """All MBPP tasks from `"hub"` (the Hugging Face dataset) or from a local jsonl path."""
    if isinstance(source, str) and source == "hub":
        return _load_hub()
    return read_mbpp_jsonl(source)


def mbpp_jsonl_bytes(rows: Iterable[dict]) -> bytes:
    """Serialise tasks as jsonl, one task per line with the fields in canonical order."""
    lines = (json.dumps({field: row[field] for field in FIELDS}, ensure_ascii=False) + "\n" for row in rows)
    return "".join(lines).encode("utf-8")


def prepare_mbpp(source: str | Path, output: str | Path = DEFAULT_PATH) -> tuple[int, bool]:
    """Validate MBPP from `"hub"` or a local file and write it to `output` atomically.

    Returns (number of tasks, whether `output` changed); a file source is copied byte for byte.
    """
    rows = load_mbpp(source)
    data = mbpp_jsonl_bytes(rows) if source == "hub" else Path(source).read_bytes()
    output = Path(output)
    if output.is_file() and output.read_bytes() == data:
        return len(rows), False
    atomic_write_bytes(output, data)
    return len(rows), True


def split_tasks(rows: Iterable[dict], split: str) -> list[dict]:
    """The tasks of a canonical split (see SPLITS), sorted by task_id."""
    if split not in SPLITS:
        raise ValueError(f"unknown MBPP split {split!r}; expected one of {', '.join(SPLITS)}")
    first, last = SPLITS[split]
    return sorted((row for row in rows if first <= row["task_id"] <= last), key=lambda row: row["task_id"])


def few_shot_tasks(rows: Iterable[dict], count: int) -> list[dict]:
    """The first `count` few-shot example tasks from the prompt split, in FEW_SHOT_ORDER."""
    if not 0 <= count <= len(FEW_SHOT_ORDER):
        raise ValueError(f"few_shot must be between 0 and {len(FEW_SHOT_ORDER)}, got {count}")
    by_id = {row["task_id"]: row for row in split_tasks(rows, "prompt")}
    missing = [task_id for task_id in FEW_SHOT_ORDER[:count] if task_id not in by_id]
    if missing:
        raise ValueError(f"few-shot tasks {missing} are missing from the MBPP rows")
    return [by_id[task_id] for task_id in FEW_SHOT_ORDER[:count]]


def normalize_code(code: str) -> str:
    """Code with `\\r\\n` (and stray `\\r`) line endings as `\\n`, no leading blank lines, one final newline.

    Tabs and the whitespace inside lines are kept as they are.
    """
    code = code.replace("\r\n", "\n").replace("\r", "\n")
    return code.lstrip("\n").rstrip() + "\n"


def _task_block(task: dict) -> str:
    """A task as a docstring block: its text and its test asserts."""
    lines = [task["text"].strip(), *task["test_list"]]
    return '"""\n' + "\n".join(lines) + '\n"""\n'


def build_prompt(task: dict, few_shot_tasks: Sequence[dict] = ()) -> str:
    """THE MBPP prompt (training and evaluation): few-shot blocks with their code, then the task's block.

    Each block is a docstring holding the task text and its asserts; the model continues with code,
    so MBPP_STOP_STRINGS (a new docstring, assert, class, ...) end a completion.
    """
    shots = "".join(_task_block(shot) + normalize_code(shot["code"]) + "\n" for shot in few_shot_tasks)
    return shots + _task_block(task)


def mbpp_problems(rows: Sequence[dict], split: str, few_shot: int = 0) -> list[Problem]:
    """Evaluation problems of a split; the completion is the whole program, the asserts judge it.

    MBPP's test_setup_code is placed in the test program (after the completion, before the asserts):
    the two tasks that have one (367, 927) build objects from classes their solutions define.
    """
    shots = few_shot_tasks(rows, few_shot)
    problems = []
    for task in split_tasks(rows, split):
        setup = normalize_code(task["test_setup_code"]) if task["test_setup_code"].strip() else ""
        problems.append(
            Problem(
                task_id=str(task["task_id"]),
                prompt=build_prompt(task, shots),
                test_program=setup + "\n".join(task["test_list"]),
                reference=normalize_code(task["code"]),
                include_prompt=False,
            )
        )
    return problems


def rows_sha256(rows: Iterable[dict]) -> str:
    """Sha256 hex digest of the tasks' content (used as the data key when no file hash is given)."""
    return hashlib.sha256(mbpp_jsonl_bytes(rows)).hexdigest()


class MBPPDataset(EncodedDataset):
    """One MBPP split for next-token training: `[BOS] build_prompt(task) normalize_code(code) [EOS]`.

    Items carry `input_ids`, shifted `labels` and `token_type_ids` (1 on BOS and the prompt, 0 on the code
    and EOS: the PrefixLM split of `arch.prefix_lm` and of transformers' HrmText).

    Tasks longer than `seq_len` tokens are dropped and reported (`num_dropped`, `dropped_task_ids`, a
    warning). With `cache_dir`, the encoding is cached under (tokenizer fingerprint, data hash, prompt
    format, seq_len, split, few_shot); `data_hash` is the data file's sha256 (`file_sha256(path)`), by
    default a hash of the rows' content.

    `chat`: train in an instruct model's chat format instead (`data.prompt_format=chat`): a task's
    (prompt, target) from `chat(task)` (`protocols.mbpp_chat_example`: EvalPlus's instruct prompt in the
    tokenizer's chat template, as `scripts/evaluate.py --prompt-format chat` renders it, then the code and
    the closing fence), the prompt encoded with the tokenizer's own special tokens, as that format does.
    """

    def __init__(
        self,
        rows: Sequence[dict],
        split: str,
        tokenizer: CodeTokenizer,
        seq_len: int,
        few_shot: int = 0,
        cache_dir: str | Path | None = None,
        data_hash: str | None = None,
        chat: Callable[[dict], tuple[str, str]] | None = None,
    ) -> None:
        tasks = split_tasks(rows, split)
        if chat is not None and few_shot:
            raise ValueError(
                f"data.few_shot={few_shot}: the chat format trains zero-shot; set data.few_shot=0"
            )
        shots = few_shot_tasks(rows, few_shot)
        if chat is None:
            pairs = [(build_prompt(task, shots), normalize_code(task["code"])) for task in tasks]
        else:
            pairs = [chat(task) for task in tasks]

        def build() -> dict[str, list]:
            return encode_pairs(
                tokenizer, pairs, seq_len, f"encoding MBPP {split}", own_special_tokens=bool(chat)
            )

        if cache_dir is None:
            encoded = build()
        else:
            key = {
                "kind": "mbpp",
                "tokenizer": tokenizer.fingerprint,
                "data": data_hash or rows_sha256(rows),
                "prompt_format": CHAT_FORMAT if chat else PROMPT_FORMAT,
                "seq_len": seq_len,
                "split": split,
                "few_shot": few_shot,
            }
            encoded = load_or_build(cache_dir, key, build)
        super().__init__(encoded["input_ids"], encoded["prompt_lengths"], len(encoded["dropped"]))
        self.split = split
        self.task_ids = [tasks[index]["task_id"] for index in encoded["kept"]]
        self.dropped_task_ids = [tasks[index]["task_id"] for index in encoded["dropped"]]
        if self.num_dropped:
            shown = ", ".join(map(str, self.dropped_task_ids[:10])) + (
                ", ..." if self.num_dropped > 10 else ""
            )
            logger.warning(
                "MBPP %s: dropped %d of %d tasks longer than seq_len=%d tokens (task ids %s)",
                split,
                self.num_dropped,
                len(tasks),
                seq_len,
                shown,
            )
