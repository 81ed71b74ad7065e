"""MBPP: reading and validating the jsonl, canonical splits, the one prompt format, datasets and packing."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from hrm_codegen.datasets.cache import atomic_write_bytes, load_or_build
from hrm_codegen.datasets.problems import Problem

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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MBPP file {path} does not exist (or is not a file)")
    raw = path.read_bytes()
    if not raw.strip():
        raise MBPPFormatError(f"{path}:1: file is empty; expected one JSON object per line")
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    rows: list[dict] = []
    first_line: dict[int, int] = {}
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise MBPPFormatError(
                f"{where}: not valid UTF-8 (byte 0x{line[err.start]:02x} at column {err.start + 1})"
            ) from None
        if not text.strip():
            raise MBPPFormatError(f"{where}: blank line; expected one JSON object per line")
        try:
            row = validate_task(json.loads(text), where)
        except json.JSONDecodeError as err:
            raise MBPPFormatError(f"{where}: not valid JSON at column {err.colno}: {err.msg}") from None
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


def encode_prompt(tokenizer: CodeTokenizer, prompt: str) -> list[int]:
    """Token ids `[BOS] prompt`: what a model is given at generation time."""
    return [tokenizer.bos_id, *tokenizer.encode(prompt)]


def encode_example(tokenizer: CodeTokenizer, prompt: str, target: str) -> tuple[list[int], int]:
    """Token ids `[BOS] prompt target [EOS]` and the prompt length (BOS included).

    Prompt and target are encoded separately, as at generation time, where the prompt is encoded alone.
    """
    prompt_ids = encode_prompt(tokenizer, prompt)
    return [*prompt_ids, *tokenizer.encode(target), tokenizer.eos_id], len(prompt_ids)


def shifted_labels(input_ids: Sequence[int], prompt_length: int) -> list[int]:
    """Next-token labels: labels[i] = input_ids[i+1] when that token is target or EOS, else -100."""
    return [-100] * (prompt_length - 1) + list(input_ids[prompt_length:]) + [-100]


class EncodedDataset(Dataset):
    """Encoded prompt/target examples; item i is `{input_ids, labels}` (1-D LongTensors, equal length).

    The dataset does the shifting: `labels[i] == input_ids[i+1]` on target and EOS positions and -100
    elsewhere (every prompt target and the last position), so the loss compares logits[i] with labels[i].
    """

    def __init__(self, input_ids: list[list[int]], prompt_lengths: list[int], num_dropped: int = 0) -> None:
        self.input_ids = input_ids
        self.prompt_lengths = prompt_lengths
        self.num_dropped = num_dropped

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.input_ids[index]
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(shifted_labels(ids, self.prompt_lengths[index]), dtype=torch.long),
        }


def encode_pairs(
    tokenizer: CodeTokenizer, pairs: Sequence[tuple[str, str]], seq_len: int, desc: str = "encoding"
) -> dict[str, list]:
    """Encode (prompt, target) pairs, dropping (never cutting) those longer than `seq_len` tokens.

    Returns plain lists: `input_ids`, `prompt_lengths`, `kept` and `dropped` (indices into `pairs`).
    """
    encoded: dict[str, list] = {"input_ids": [], "prompt_lengths": [], "kept": [], "dropped": []}
    for index, (prompt, target) in enumerate(tqdm(pairs, desc=desc, leave=False)):
        ids, prompt_length = encode_example(tokenizer, prompt, target)
        if len(ids) > seq_len:
            encoded["dropped"].append(index)
            continue
        encoded["input_ids"].append(ids)
        encoded["prompt_lengths"].append(prompt_length)
        encoded["kept"].append(index)
    return encoded


def rows_sha256(rows: Iterable[dict]) -> str:
    """Sha256 hex digest of the tasks' content (used as the data key when no file hash is given)."""
    return hashlib.sha256(mbpp_jsonl_bytes(rows)).hexdigest()


class MBPPDataset(EncodedDataset):
    """One MBPP split for next-token training: `[BOS] build_prompt(task) normalize_code(code) [EOS]`.

    Tasks longer than `seq_len` tokens are dropped and reported (`num_dropped`, `dropped_task_ids`, a
    warning). With `cache_dir`, the encoding is cached under (tokenizer fingerprint, data hash, prompt
    format, seq_len, split, few_shot); `data_hash` is the data file's sha256 (`file_sha256(path)`), by
    default a hash of the rows' content.
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
    ) -> None:
        tasks = split_tasks(rows, split)
        shots = few_shot_tasks(rows, few_shot)
        pairs = [(build_prompt(task, shots), normalize_code(task["code"])) for task in tasks]

        def build() -> dict[str, list]:
            return encode_pairs(tokenizer, pairs, seq_len, desc=f"encoding MBPP {split}")

        if cache_dir is None:
            encoded = build()
        else:
            key = {
                "kind": "mbpp",
                "tokenizer": tokenizer.fingerprint,
                "data": data_hash or rows_sha256(rows),
                "prompt_format": PROMPT_FORMAT,
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


_PAD_VALUES = {"labels": -100, "attention_mask": 0, "position_ids": 0, "segment_ids": -1}


def collate_batch(items: Sequence[dict], pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad items into LongTensors `input_ids`, `attention_mask`, `labels` (-100 on padding).

    `position_ids` and `segment_ids` (from pack_examples) are padded too when the items carry them.
    """
    length = max(len(item["input_ids"]) for item in items)
    if pad_to is not None:
        if pad_to < length:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest item ({length} tokens)")
        length = pad_to
    keys = ["input_ids", "attention_mask", "labels"]
    keys += [key for key in ("position_ids", "segment_ids") if key in items[0]]
    batch = {
        key: torch.full(
            (len(items), length), pad_id if key == "input_ids" else _PAD_VALUES[key], dtype=torch.long
        )
        for key in keys
    }
    for row, item in enumerate(items):
        size = len(item["input_ids"])
        for key in keys:
            value = (
                item.get(key, torch.ones(size, dtype=torch.long)) if key == "attention_mask" else item[key]
            )
            batch[key][row, :size] = torch.as_tensor(value, dtype=torch.long)
    return batch


def _pack_block(items: Sequence[dict], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Concatenate items into one block of `seq_len` tokens with per-example positions and segments."""
    block = {
        "input_ids": torch.full((seq_len,), pad_id, dtype=torch.long),
        **{key: torch.full((seq_len,), value, dtype=torch.long) for key, value in _PAD_VALUES.items()},
    }
    start = 0
    for segment, item in enumerate(items):
        size = len(item["input_ids"])
        end = start + size
        block["input_ids"][start:end] = torch.as_tensor(item["input_ids"], dtype=torch.long)
        block["labels"][start:end] = torch.as_tensor(item["labels"], dtype=torch.long)
        block["attention_mask"][start:end] = 1
        block["position_ids"][start:end] = torch.arange(size)
        block["segment_ids"][start:end] = segment
        start = end
    return block


def pack_examples(items: Iterable[dict], seq_len: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """Pack items in order into `seq_len` blocks (a new block when the next item does not fit).

    Each block has `input_ids`, `labels`, `attention_mask`, `position_ids` (restarting at 0 per example)
    and `segment_ids` (example index within the block, -1 on padding). An example's last label is -100,
    so no example predicts the next one's BOS.
    """
    blocks: list[dict[str, torch.Tensor]] = []
    current: list[dict] = []
    used = 0
    for item in items:
        size = len(item["input_ids"])
        if size > seq_len:
            raise ValueError(f"an example of {size} tokens does not fit in seq_len={seq_len}")
        if used + size > seq_len:
            blocks.append(_pack_block(current, seq_len, pad_id))
            current, used = [], 0
        current.append(item)
        used += size
    if current:
        blocks.append(_pack_block(current, seq_len, pad_id))
    return blocks


class PackedDataset(Dataset):
    """A training dataset's examples packed in order into `seq_len` blocks (`pack_examples`); item i is block i.

    Every block holds `input_ids`, `labels`, `attention_mask`, `position_ids` and `segment_ids`, which the HRM
    uses to keep the examples of a block apart. The packing is fixed (dataset order, next fit), so the data
    order can shuffle blocks by step count alone.
    """

    def __init__(self, examples: Dataset, seq_len: int, pad_id: int) -> None:
        self.num_examples = len(examples)  # type: ignore[arg-type]
        self.blocks = pack_examples((examples[i] for i in range(self.num_examples)), seq_len, pad_id)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.blocks[index]
