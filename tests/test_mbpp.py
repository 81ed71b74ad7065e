"""MBPP splits, normalisation, the prompt format, label masking, dropping, collate/packing and the cache."""

import copy
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hrm_codegen.datasets import mbpp
from hrm_codegen.datasets.batching import collate_batch, pack_examples
from hrm_codegen.datasets.cache import cache_path, file_sha256, load_or_build
from hrm_codegen.datasets.mbpp import (
    MBPP_STOP_STRINGS,
    PROMPT_FORMAT,
    SPLITS,
    MBPPDataset,
    build_prompt,
    few_shot_tasks,
    load_mbpp,
    mbpp_problems,
    normalize_code,
    split_tasks,
)
from hrm_codegen.tokenization import CodeTokenizer, load_tokenizer


@pytest.fixture(scope="module")
def tok(gpt2_dir: Path) -> CodeTokenizer:
    return load_tokenizer(gpt2_dir)


@pytest.fixture(scope="module")
def rows(mbpp_path: Path) -> list[dict]:
    return load_mbpp(mbpp_path)


def _assert_shifted(input_ids: torch.Tensor, labels: torch.Tensor) -> None:
    """Every label is -100 or the next input token."""
    targets = labels[:-1] != -100
    assert torch.equal(labels[:-1][targets], input_ids[1:][targets])
    assert labels[-1] == -100


def test_split_counts_and_ranges(rows: list[dict]) -> None:
    assert len(rows) == 974
    counts = {split: len(split_tasks(rows, split)) for split in SPLITS}
    assert counts == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
    ids = {split: [task["task_id"] for task in split_tasks(rows, split)] for split in SPLITS}
    assert ids["prompt"] == list(range(1, 11))
    assert ids["test"] == list(range(11, 511))
    assert ids["validation"] == list(range(511, 601))
    assert ids["train"] == list(range(601, 975))
    with pytest.raises(ValueError, match="unknown MBPP split 'dev'"):
        split_tasks(rows, "dev")


def test_normalize_code_line_endings_and_tabs(rows: list[dict]) -> None:
    assert normalize_code("\r\ndef f():\r\n\treturn 1 \r\n\r\n") == "def f():\n\treturn 1\n"
    assert normalize_code("x = 1\r") == "x = 1\n"
    for row in rows:
        code = normalize_code(row["code"])
        assert "\r" not in code and code.endswith("\n") and not code.endswith("\n\n")
        assert code.count("\t") == row["code"].rstrip().count("\t")  # only trailing whitespace goes


def test_reference_solutions_pass_after_normalisation(rows: list[dict]) -> None:
    problems = {p.task_id: p for split in SPLITS for p in mbpp_problems(rows, split)}
    sample = rows[::33]
    sample += [r for r in rows if r["test_setup_code"].strip()]
    sample += [r for r in rows if "\r" in r["code"].replace("\r\n", "")]
    assert any("\t" in r["code"] for r in sample) and any("\r\n" in r["code"] for r in sample)
    failures = []
    for row in sample:
        problem = problems[str(row["task_id"])]
        program = problem.program(problem.reference)
        assert "\r" not in program
        result = subprocess.run([sys.executable, "-c", program], timeout=10, capture_output=True, text=True)
        if result.returncode != 0:
            failures.append((row["task_id"], result.stderr[-300:]))
    assert len(sample) >= 30 and failures == []


def test_prompt_format_is_pinned(rows: list[dict]) -> None:
    task = split_tasks(rows, "prompt")[1]
    assert PROMPT_FORMAT == "mbpp-docstring-v1"
    assert build_prompt(task) == (
        '"""\n'
        "Write a function to find the similar elements from the given two tuple lists.\n"
        "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n"
        "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\n"
        "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n"
        '"""\n'
    )


def test_few_shot_prompt_and_stop_strings(rows: list[dict]) -> None:
    shots = few_shot_tasks(rows, 3)
    assert [shot["task_id"] for shot in shots] == [2, 3, 4]
    task = split_tasks(rows, "test")[0]
    prompt = build_prompt(task, shots)
    assert prompt.endswith(build_prompt(task)) and prompt.count('"""\n') == 8
    for shot in shots:
        code = normalize_code(shot["code"])
        continuation = prompt[prompt.index(code) :]
        cut = min(i for i in (continuation.find(stop) for stop in MBPP_STOP_STRINGS) if i >= 0)
        assert continuation[:cut].rstrip("\n") == code.rstrip("\n"), "a stop string must end each shot's code"


def test_problems_reuse_the_prompt_function(rows: list[dict]) -> None:
    problems = mbpp_problems(rows, "test", few_shot=2)
    tasks = split_tasks(rows, "test")
    assert len(problems) == 500
    shots = few_shot_tasks(rows, 2)
    for problem, task in zip(problems, tasks, strict=True):
        assert problem.task_id == str(task["task_id"])
        assert problem.prompt == build_prompt(task, shots)
        assert problem.test_program.endswith("\n".join(task["test_list"]))
        assert problem.reference == normalize_code(task["code"]) and not problem.include_prompt
    node = next(p for p in mbpp_problems(rows, "test") if p.task_id == "367")
    program = node.program(node.reference)
    assert program.index("class Node") < program.index("root = Node(1)") < program.index("assert")


@pytest.mark.parametrize("split", list(SPLITS))
def test_items_are_masked_and_end_with_eos(rows: list[dict], tok: CodeTokenizer, split: str) -> None:
    dataset = MBPPDataset(rows, split, tok, seq_len=2048)
    by_id = {task["task_id"]: task for task in split_tasks(rows, split)}
    assert len(dataset) + dataset.num_dropped == len(by_id)
    for index, task_id in enumerate(dataset.task_ids):
        item = dataset[index]
        ids, labels = item["input_ids"], item["labels"]
        assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        _assert_shifted(ids, labels)
        prompt_length = 1 + len(tok.encode(build_prompt(by_id[task_id])))
        assert (labels[: prompt_length - 1] == -100).all()
        assert (labels[prompt_length - 1 : -1] != -100).all()
        assert tok.decode(ids[prompt_length:]) == normalize_code(by_id[task_id]["code"])


def test_long_tasks_are_dropped_and_reported(
    rows: list[dict], tok: CodeTokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    seq_len = 200
    tasks = split_tasks(rows, "train")
    lengths = {
        t["task_id"]: 2 + len(tok.encode(build_prompt(t))) + len(tok.encode(normalize_code(t["code"])))
        for t in tasks
    }
    too_long = sorted(task_id for task_id, n in lengths.items() if n > seq_len)
    assert 0 < len(too_long) < len(tasks)
    with caplog.at_level(logging.WARNING, logger="hrm_codegen.datasets.mbpp"):
        dataset = MBPPDataset(rows, "train", tok, seq_len=seq_len)
    assert dataset.num_dropped == len(too_long) and dataset.dropped_task_ids == too_long
    assert len(dataset) == len(tasks) - len(too_long)
    assert all(len(ids) <= seq_len for ids in dataset.input_ids)
    assert f"MBPP train: dropped {len(too_long)} of 374" in caplog.text


def test_collate_pads_right_and_masks_padding(rows: list[dict], tok: CodeTokenizer) -> None:
    dataset = MBPPDataset(rows, "prompt", tok, seq_len=1024)
    items = [dataset[i] for i in range(4)]
    batch = collate_batch(items, pad_id=tok.pad_id)
    longest = max(len(item["input_ids"]) for item in items)
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "labels",
        "token_type_ids",
    }  # prompt tokens: PrefixLM
    assert batch["input_ids"].shape == (4, longest) and batch["input_ids"].dtype == torch.long
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        assert torch.equal(batch["input_ids"][row, :n], item["input_ids"])
        assert torch.equal(batch["labels"][row, :n], item["labels"])
        assert (batch["input_ids"][row, n:] == tok.pad_id).all() and (batch["labels"][row, n:] == -100).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (longest - n)
        p = dataset.prompt_lengths[row]
        assert batch["token_type_ids"][row].tolist() == [1] * p + [0] * (longest - p)
    assert collate_batch(items, tok.pad_id, pad_to=1024)["labels"].shape == (4, 1024)
    with pytest.raises(ValueError, match="pad_to=8"):
        collate_batch(items, tok.pad_id, pad_to=8)


def test_packing_blocks_segments_and_boundaries(rows: list[dict], tok: CodeTokenizer) -> None:
    seq_len = 512
    dataset = MBPPDataset(rows, "validation", tok, seq_len=seq_len)
    items = [dataset[i] for i in range(len(dataset))]
    blocks = pack_examples(items, seq_len, tok.pad_id)
    assert len(blocks) < len(items)
    unpacked = []
    for block in blocks:
        ids, labels, segments = block["input_ids"], block["labels"], block["segment_ids"]
        assert all(value.shape == (seq_len,) for value in block.values())
        _assert_shifted(ids, labels)
        real = segments >= 0
        assert torch.equal(block["attention_mask"], real.long())
        assert (ids[~real] == tok.pad_id).all() and (labels[~real] == -100).all()
        for segment in range(int(segments.max()) + 1):
            where = (segments == segment).nonzero().flatten()
            assert torch.equal(block["position_ids"][where], torch.arange(len(where)))
            assert labels[where[-1]] == -100 and ids[where[-1]] == tok.eos_id
            unpacked.append((ids[where], labels[where]))
        crossing = (segments[:-1] != segments[1:]).nonzero().flatten()
        assert (labels[crossing] == -100).all()
    assert len(unpacked) == len(items)
    for (ids, labels), item in zip(unpacked, items, strict=True):
        assert torch.equal(ids, item["input_ids"]) and torch.equal(labels, item["labels"])
    batch = collate_batch(blocks[:3], tok.pad_id)
    assert torch.equal(batch["segment_ids"][1], blocks[1]["segment_ids"])
    assert torch.equal(batch["position_ids"][2], blocks[2]["position_ids"])
    with pytest.raises(ValueError, match="does not fit"):
        pack_examples(items, 16, tok.pad_id)


class _CountingEncoder:
    """Wraps mbpp.encode_pairs and counts how often the dataset really encodes."""

    def __init__(self) -> None:
        self.calls = 0
        self.wrapped = mbpp.encode_pairs

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.wrapped(*args, **kwargs)


def test_cache_hit_and_invalidation_per_key(
    rows: list[dict], tok: CodeTokenizer, mbpp_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = _CountingEncoder()
    monkeypatch.setattr(mbpp, "encode_pairs", encoder)
    cache = tmp_path / "cache"
    data_hash = file_sha256(mbpp_path)

    def make(tokenizer: CodeTokenizer = tok, seq_len: int = 256, digest: str = data_hash) -> MBPPDataset:
        return MBPPDataset(rows, "validation", tokenizer, seq_len, cache_dir=cache, data_hash=digest)

    first = make()
    assert encoder.calls == 1 and len(list(cache.iterdir())) == 1
    second = make()
    assert encoder.calls == 1, "a second run must reuse the cache"
    assert second.input_ids == first.input_ids and second.task_ids == first.task_ids
    assert second.num_dropped == first.num_dropped > 0

    make(seq_len=300)
    assert encoder.calls == 2
    other_tokenizer = copy.copy(tok)
    other_tokenizer.fingerprint = "0" * 64
    make(tokenizer=other_tokenizer)
    assert encoder.calls == 3
    make(digest="f" * 64)
    assert encoder.calls == 4
    monkeypatch.setattr(mbpp, "PROMPT_FORMAT", "mbpp-docstring-v2")
    make()
    assert encoder.calls == 5 and len(list(cache.iterdir())) == 5
    monkeypatch.setattr(mbpp, "PROMPT_FORMAT", PROMPT_FORMAT)
    make()
    assert encoder.calls == 5


def test_cache_key_defaults_to_row_content(rows: list[dict], tok: CodeTokenizer, tmp_path: Path) -> None:
    changed = copy.deepcopy(rows)
    task = next(t for t in changed if t["task_id"] == 10)
    task["code"] = task["code"] + "\n# edited"
    plain = MBPPDataset(rows, "prompt", tok, 1024, cache_dir=tmp_path)
    edited = MBPPDataset(changed, "prompt", tok, 1024, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2
    assert plain.input_ids[:-1] == edited.input_ids[:-1] and plain.input_ids[-1] != edited.input_ids[-1]


def test_unreadable_cache_file_is_rebuilt(tmp_path: Path) -> None:
    key = {"kind": "demo", "seq_len": 8}
    built = []

    def build() -> dict:
        built.append(1)
        return {"input_ids": [[1, 2, 3]]}

    assert load_or_build(tmp_path, key, build) == {"input_ids": [[1, 2, 3]]}
    assert load_or_build(tmp_path, key, build) == {"input_ids": [[1, 2, 3]]} and len(built) == 1
    cache_path(tmp_path, key).write_bytes(b"truncated")
    assert load_or_build(tmp_path, key, build) == {"input_ids": [[1, 2, 3]]} and len(built) == 2
    assert load_or_build(tmp_path, key, build) == {"input_ids": [[1, 2, 3]]} and len(built) == 2
    assert [p.name for p in tmp_path.iterdir()] == [cache_path(tmp_path, key).name]
