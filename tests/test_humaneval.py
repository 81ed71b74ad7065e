"""HumanEval problems (count, program assembly, reference solutions) and the HumanEval training items."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hrm_codegen.datasets.humaneval import HumanEvalDataset, humaneval_problems
from hrm_codegen.tokenization import CodeTokenizer, load_tokenizer


@pytest.fixture(scope="module")
def problems():
    return humaneval_problems()


def test_164_problems_with_check_call(problems) -> None:
    assert len(problems) == 164
    assert len({p.task_id for p in problems}) == 164
    first = problems[0]
    assert first.task_id == "HumanEval/0" and first.include_prompt
    assert first.test_program.rstrip().endswith("check(has_close_elements)")
    assert "def check(candidate)" in first.test_program
    assert first.reference.startswith("    ") and first.prompt.startswith("from typing import List")


def test_reference_solutions_pass_and_wrong_ones_fail(problems) -> None:
    for problem in problems[::20]:
        passing = subprocess.run([sys.executable, "-c", problem.program(problem.reference)], timeout=10)
        assert passing.returncode == 0, problem.task_id
    failing = subprocess.run(
        [sys.executable, "-c", problems[0].program("    return None\n")], timeout=10, capture_output=True
    )
    assert failing.returncode != 0


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="HumanEval file"):
        humaneval_problems(tmp_path / "HumanEval.jsonl.gz")


def test_dataset_masks_prompt_and_targets_solution(gpt2_dir: Path, problems) -> None:
    tok: CodeTokenizer = load_tokenizer(gpt2_dir)
    dataset = HumanEvalDataset(tok, seq_len=1024)
    assert len(dataset) + dataset.num_dropped == 164 and len(dataset) > 150
    by_id = {p.task_id: p for p in problems}
    for index in range(0, len(dataset), 7):
        item = dataset[index]
        ids, labels = item["input_ids"], item["labels"]
        problem = by_id[dataset.task_ids[index]]
        prompt_length = 1 + len(tok.encode(problem.prompt))
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        assert (labels[: prompt_length - 1] == -100).all() and labels[-1] == -100
        assert torch.equal(labels[prompt_length - 1 : -1], ids[prompt_length:])
        assert tok.decode(ids[prompt_length:]) == problem.reference
    short = HumanEvalDataset(tok, seq_len=200, problems=problems[:20])
    assert short.num_dropped > 0 and len(short) + short.num_dropped == 20
    assert all(len(ids) <= 200 for ids in short.input_ids)
