"""Evaluation batches problems of similar prompt lengths: the same greedy completions and records as batches in
problem order, and samples.jsonl in problem order."""

import json

import torch

from hrm_codegen.completions import ModelCompletions, SamplingConfig
from hrm_codegen.datasets.mbpp import load_mbpp, mbpp_problems
from hrm_codegen.evaluation import evaluate
from hrm_codegen.families.hrm import HRM
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1
from hrm_codegen.tokenization import load_tokenizer

TIMINGS = ("seconds", "generation_seconds")


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bucketed_batches_give_the_records_of_ordered_batches(tmp_path, gpt2_dir, mbpp_path, tiny_hrm_config):
    tokenizer = load_tokenizer(gpt2_dir)
    problems = mbpp_problems(load_mbpp(mbpp_path), "test")[:7]
    torch.manual_seed(0)
    model = HierarchicalReasoningModel_ACTV1(
        {**tiny_hrm_config, "vocab_size": tokenizer.vocab_size, "seq_len": 1024}
    ).eval()
    sampling = SamplingConfig(max_new_tokens=8, batch_size=3, stop_strings=("\n\n",))
    source = ModelCompletions(model, tokenizer, sampling, progress=False, family=HRM)
    lengths = [source.prompt_length(p) for p in problems]
    assert lengths != sorted(lengths, reverse=True), "the test needs prompts out of length order"

    def in_problem_order(
        chunk, indices
    ):  # the same source without prompt lengths: batches follow problem order
        result = source(chunk, indices)
        in_problem_order.last_records = source.last_records
        return result

    calls = []

    def bucketed(chunk, indices):
        calls.append([source.prompt_length(p) for p in chunk])
        result = source(chunk, indices)
        bucketed.last_records = source.last_records
        return result

    bucketed.prompt_length = source.prompt_length  # type: ignore[attr-defined]
    common = {"num_samples": 1, "ks": [1], "progress": False, "batch_size": 3, "workers": 2}
    ordered_summary = evaluate(problems, in_problem_order, output_dir=tmp_path / "ordered", **common)
    bucketed_summary = evaluate(problems, bucketed, output_dir=tmp_path / "bucketed", **common)

    # batches run longest prompts first, each batch holding neighbours in length
    flat = [n for call in calls for n in call]
    assert flat == sorted(lengths, reverse=True)
    ordered, buckets = (
        _records(tmp_path / "ordered/samples.jsonl"),
        _records(tmp_path / "bucketed/samples.jsonl"),
    )
    assert [r["task_id"] for r in buckets] == [p.task_id for p in problems]  # problem order in the file
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]  # noqa: E731
    assert strip(buckets) == strip(ordered)
    assert any(r["completion"] for r in buckets)
    assert bucketed_summary["pass_at_k"] == ordered_summary["pass_at_k"]
    assert bucketed_summary["results"] == ordered_summary["results"]


def test_a_long_prompt_does_not_pad_a_whole_batch(gpt2_dir, tiny_hrm_config):
    tokenizer = load_tokenizer(gpt2_dir)
    torch.manual_seed(0)
    model = HierarchicalReasoningModel_ACTV1(
        {**tiny_hrm_config, "vocab_size": tokenizer.vocab_size, "seq_len": 1024}
    ).eval()
    source = ModelCompletions(
        model, tokenizer, SamplingConfig(batch_size=4, batch_tokens=100), progress=False, family=HRM
    )
    lengths = [5, 6, 10, 20, 24, 25, 30, 90]  # sorted, as __call__ sorts them
    chunks = source._chunks(lengths, list(range(len(lengths))))
    assert chunks == [[0, 1, 2, 3], [4, 5, 6], [7]]  # at most 4 rows, at most 100 padded prompt tokens
    for chunk in chunks[:-1]:
        assert len(chunk) * max(lengths[i] for i in chunk) <= 100
