"""Rejection-sampling fine-tuning (hrm_codegen/rejection_sampling.py, scripts/rejection_sample.py) on tiny runs.

A tiny random model passes no MBPP task, so the rounds here run on three MBPP-format train tasks of our own, and
the sampling step of the full rounds gets a fixed completion source (right, whitespace-duplicate, wrong and empty
completions): the sandbox verdicts, the filtering, the pairs, the fine-tuning through the launcher and the scoring
with scripts/evaluate.py are the real ones. The zero-pass test samples from the model itself.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from hrm_codegen.datasets.mbpp import load_mbpp, split_tasks
from hrm_codegen.datasets.pairs import validate_pair
from hrm_codegen.datasets.protocols import build_problems
from hrm_codegen.inference import load_checkpoint
from hrm_codegen.rejection_sampling import (
    NothingToTrainError,
    RejectionSamplingConfig,
    dedup_key,
    distinct_passing,
    pair_rows,
    run_rounds,
)
from hrm_codegen.runs import resolve_checkpoint
from hrm_codegen.train_config import compose_config
from hrm_codegen.training import run as train

REPO = Path(__file__).resolve().parents[1]


def task(task_id: int, name: str, body: str, tests: list[str]) -> dict:
    return {
        "task_id": task_id,
        "text": f"Write a function {name}.",
        "code": f"def {name}(x, y=1):\n    return {body}\n",
        "test_setup_code": "",
        "test_list": tests,
        "challenge_test_list": [],
    }


TASKS = [
    task(511, "halve", "x / 2", ["assert halve(4) == 2"]),  # validation split (the fine-tune's val loss)
    task(512, "square", "x * x", ["assert square(3) == 9"]),
    task(601, "add", "x + y", ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]),  # train split
    task(602, "double", "2 * x", ["assert double(2) == 4"]),
    task(603, "negate", "-x", ["assert negate(3) == -3"]),
]
RIGHT_ADD = "def add(x, y=1):\n    return x + y\n"
# per train task, the completion of each sample index
COMPLETIONS = {
    "601": [
        RIGHT_ADD,
        "def add(x,  y=1):\n\n    return x + y   \n",
        "def add(x, y=1):\n    return x - y\n",
        "def add(x, y=1):\n    return y + x\n",
    ],
    "602": [
        "def double(x):\n    return x\n",
        "def double(x):\n    return (\n",
        "",
        "def double(x): return x",
    ],
    "603": ["def negate(x):\n    return -x\n", "", "", ""],
}
# 601: samples 0, 1 (0's whitespace duplicate) and 3 pass; 602: none; 603: sample 0
SMALL_TRAIN = [
    "train.max_steps=2",
    "train.global_batch_size=1",
    "train.warmup_steps=1",
    "train.lr=1e-2",
    "train.eval_every=0",
    "train.log_every=1",
    "train.num_threads=1",
]


class FixedCompletions:
    """The sampling step's stand-in: COMPLETIONS by task and sample index, with token counts like a model's."""

    def __init__(self) -> None:
        self.calls: list[Path] = []
        self.last_records: list[list[dict]] = []

    def factory(self, checkpoint: Path, sampling) -> "FixedCompletions":
        """The round's source factory: records which checkpoint the round samples from."""
        self.calls.append(checkpoint)
        return self

    def __call__(self, problems, indices):
        texts = [
            [COMPLETIONS[p.task_id][i] for i in wanted] for p, wanted in zip(problems, indices, strict=True)
        ]
        self.last_records = [[{"num_tokens": len(t.split()) + 1} for t in row] for row in texts]
        return texts


def refuse_sampling(checkpoint, sampling):
    raise AssertionError(f"a finished round sampled again (from {checkpoint})")


@pytest.fixture(scope="module")
def mbpp_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mbpp") / "mbpp.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in TASKS))
    return path


def initial_run(root: Path, mbpp_file: Path, gpt2_dir: Path, arch: str) -> Path:
    """A tiny run of the launcher on the tasks above (two steps): what round 1 samples from."""
    cfg = compose_config(
        [
            f"arch={arch}",
            "arch.seq_len=128",
            f"data.path={mbpp_file}",
            f"tokenizer.name_or_path={gpt2_dir}",
            *SMALL_TRAIN,
        ]
    )
    train(cfg, root / arch)
    return root / arch


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mbpp_file, gpt2_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    return {
        arch: initial_run(root, mbpp_file, gpt2_dir, arch) for arch in ("tiny", "transformer_tiny_params")
    }


def settings(init: Path, out: Path, mbpp_file: Path, **changes) -> RejectionSamplingConfig:
    values = dict(
        init=str(init),
        output_dir=str(out),
        num_samples=4,
        temperature=1.0,
        max_new_tokens=8,
        mbpp_path=str(mbpp_file),
        workers=2,
        batch_size=4,
        train_overrides=tuple(SMALL_TRAIN),
        progress=False,
    )
    return RejectionSamplingConfig(**{**values, **changes})


def weights(step: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(step).model.state_dict()


def evaluate_cli():
    spec = importlib.util.spec_from_file_location("evaluate_cli", REPO / "scripts" / "evaluate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_distinct_passing_drops_failures_duplicates_and_what_is_over_the_cap():
    assert (
        dedup_key("def f(a,  b):\r\n\n\tif a :  \n\t\treturn  b\n") == "def f(a, b):\n\tif a :\n\t\treturn b"
    )
    assert dedup_key("def f():\n  return 1\n") != dedup_key("def f():\n    return 1\n")  # indentation counts
    records = [
        {"task_id": "7", "sample_index": i, "completion": c, "passed": ok}
        for i, (c, ok) in enumerate(
            [
                ("x = 1\n", True),
                ("x =  1 \n\n", True),
                ("x = 2\n", False),
                ("x = 3\n", True),
                ("x = 4\n", True),
            ]
        )
    ]
    kept, counts = distinct_passing(records)
    assert [r["sample_index"] for r in kept] == [0, 3, 4]
    assert counts == {"passing": 4, "duplicates": 1, "over_cap": 0}
    kept, counts = distinct_passing(records, references={"7": "x=3\nx  =  3"}, max_per_task=1)
    assert [r["sample_index"] for r in kept] == [0]
    assert counts == {"passing": 4, "duplicates": 1, "over_cap": 2}
    kept, _ = distinct_passing(records, references={"7": "x = 1"})  # the reference itself is a duplicate
    assert [r["sample_index"] for r in kept] == [3, 4]


def test_pairs_are_in_mbpp_format_after_the_mbpp_solutions(mbpp_file):
    rows = load_mbpp(mbpp_file)
    problems = {p.task_id: p for p in build_problems("mbpp", rows, "native", split="train")}
    kept = [{"task_id": "603", "sample_index": 2, "completion": COMPLETIONS["603"][0], "passed": True}]
    pairs = pair_rows(kept, split_tasks(rows, "train"), problems, 3, mix_reference=True)
    assert [p["task_id"] for p in pairs] == [
        "601/reference",
        "602/reference",
        "603/reference",
        "603/round_3/2",
    ]
    assert [p["source"] for p in pairs] == ["mbpp/train"] * 3 + ["rejection_sampling/round_3"]
    assert [p["code"] for p in pairs[2:]] == [TASKS[4]["code"], COMPLETIONS["603"][0]]
    by_id = {str(t["task_id"]): t for t in TASKS}
    for number, pair in enumerate(pairs):
        assert validate_pair(pair, f"pair {number}") == pair
        task = by_id[pair["task_id"].split("/")[0]]
        assert (pair["text"], pair["test_list"]) == (task["text"], task["test_list"])


def test_settings_are_checked_before_any_work(tmp_path, mbpp_file):
    with pytest.raises(ValueError, match="train.init_from is set by each round itself"):
        settings(tmp_path, tmp_path / "out", mbpp_file, train_overrides=("train.init_from=elsewhere",))
    with pytest.raises(ValueError, match="temperature 0 .greedy. are identical"):
        settings(tmp_path, tmp_path / "out", mbpp_file, temperature=0.0)
    with pytest.raises(ValueError, match="max_per_task must be >= 1"):
        settings(tmp_path, tmp_path / "out", mbpp_file, max_per_task=0)
    with pytest.raises(ValueError, match="quantize must be one of .*got 'fp8'"):
        settings(tmp_path, tmp_path / "out", mbpp_file, quantize="fp8")


@pytest.mark.parametrize("arch", ["tiny", "transformer_tiny_params"])
def test_a_round_fine_tunes_on_the_distinct_passing_samples(arch, runs, mbpp_file, tmp_path, capsys):
    init, out = runs[arch], tmp_path / "rs"
    fixed = FixedCompletions()
    overall = run_rounds(settings(init, out, mbpp_file), fixed.factory)
    round_dir = out / "round_1"
    manifest = json.loads((round_dir / "manifest.json").read_text())
    assert manifest["status"] == "done" and overall["rounds"] == [manifest]
    assert fixed.calls == [resolve_checkpoint(init)]
    counts = {
        k: manifest[k] for k in ("tasks", "samples", "passing", "tasks_solved", "duplicates", "kept", "pairs")
    }
    assert counts == {
        "tasks": 3,
        "samples": 12,
        "passing": 4,
        "tasks_solved": 2,
        "duplicates": 1,
        "kept": 3,
        "pairs": 3,
    }
    assert manifest["recheck_failed"] == 0 and manifest["over_cap"] == 0
    assert manifest["pass_at_k"]["1"] == pytest.approx((3 / 4 + 0 + 1 / 4) / 3)
    assert manifest["sampled_tokens"] == sum(len(t.split()) + 1 for row in COMPLETIONS.values() for t in row)
    assert manifest["prompt_tokens"] is None  # the fixed source reads no prompt
    pairs = read_jsonl(round_dir / "pairs.jsonl")
    assert [p["task_id"] for p in pairs] == ["601/round_1/0", "601/round_1/3", "603/round_1/0"]
    assert pairs[0] == {
        "text": "Write a function add.",
        "test_list": TASKS[2]["test_list"],
        "verified": True,
        "task_id": "601/round_1/0",
        "code": RIGHT_ADD,
        "source": "rejection_sampling/round_1",
    }
    # fine-tuned through the launcher from the sampled run: its config, 2 steps, other weights
    step = Path(manifest["checkpoint"])
    assert step == resolve_checkpoint(round_dir / "run") and manifest["training_steps"] == 2
    config = (step / "config.yaml").read_text()
    assert f"init_from: {resolve_checkpoint(init)}" in config and str(round_dir / "pairs.jsonl") in config
    # in retrofit_mbpp's 512-token blocks, not the arch's context (8192 for SmolLM2: a round in a few blocks)
    assert yaml.safe_load(config)["data"]["seq_len"] == 512
    assert manifest["training_tokens"] > 0 and set(manifest["wall_s"]) == {
        "sampling",
        "filtering",
        "training",
    }
    before, after = weights(resolve_checkpoint(init)), weights(step)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert overall["final_run"] == str(round_dir / "run")
    assert overall["totals"]["training_tokens"] == manifest["training_tokens"]
    # scripts/evaluate.py scores the result
    evaluation = tmp_path / "eval"
    evaluate_cli().main(
        [
            "--ckpt",
            overall["final_run"],
            "--mbpp",
            str(mbpp_file),
            "--split",
            "train",
            "--limit",
            "2",
            "--max-new-tokens",
            "8",
            "--workers",
            "2",
            "--threads",
            "1",
            "--no-progress",
            "--output",
            str(evaluation),
        ]
    )
    summary = json.loads((evaluation / "summary.json").read_text())
    assert summary["num_problems"] == 2 and summary["num_samples"] == 2
    assert summary["config"]["source"].endswith(str(step)) and "pass@1" in capsys.readouterr().out
    # the same command again: the finished round is neither sampled nor trained again
    again = run_rounds(settings(init, out, mbpp_file), refuse_sampling)
    assert again["rounds"] == [manifest] and resolve_checkpoint(round_dir / "run") == step
    with pytest.raises(ValueError, match="temperature=1.0, this run has temperature=0.5"):
        run_rounds(settings(init, out, mbpp_file, temperature=0.5), refuse_sampling)
    if arch != "tiny":
        return
    # a second round: round 1 is skipped, round 2 samples from and fine-tunes round 1's run
    overall = run_rounds(settings(init, out, mbpp_file, rounds=2), fixed.factory)
    assert fixed.calls == [resolve_checkpoint(init), step]
    second = overall["rounds"][1]
    assert overall["rounds"][0] == manifest and second["sampled_from"] == str(step)
    assert f"init_from: {step}" in (Path(second["checkpoint"]) / "config.yaml").read_text()
    assert overall["final_run"] == str(out / "round_2" / "run")
    assert overall["totals"]["training_tokens"] == manifest["training_tokens"] + second["training_tokens"]


def test_no_passing_sample_ends_with_one_message_and_no_run(runs, mbpp_file, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "rejection_sample", REPO / "scripts" / "rejection_sample.py"
    )
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "rs"
    argv = [
        "--init",
        str(runs["tiny"]),
        "--out",
        str(out),
        "--mbpp",
        str(mbpp_file),
        "--num-samples",
        "2",
        "--temperature",
        "1.0",
        "--max-new-tokens",
        "6",
        "--limit",
        "2",
        "--workers",
        "2",
        "--threads",
        "1",
        "--batch-size",
        "4",
        "--quantize",
        "fp16",  # sampling from fp16 weights, recorded with the settings
        "--no-progress",
        *SMALL_TRAIN,
    ]
    with pytest.raises(SystemExit) as stop:  # the tiny random model itself samples: nothing passes
        cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2
    assert len(err) == 1 and "round 1: nothing to fine-tune on: 0 of the 4 samples" in err[0], err
    round_dir = out / "round_1"
    assert not (round_dir / "run").exists() and not (round_dir / "pairs.jsonl").exists()
    assert not (out / "manifest.json").exists()
    manifest = json.loads((round_dir / "manifest.json").read_text())
    assert manifest["status"] == "sampled" and manifest["passing"] == 0 and manifest["samples"] == 4
    assert manifest["sampled_tokens"] > 0 and manifest["prompt_tokens"] > 0  # the model's own records
    assert json.loads((out / "rs_config.json").read_text())["quantize"] == "fp16"
    resumed = dict(num_samples=2, max_new_tokens=6, limit=2)
    with pytest.raises(NothingToTrainError):  # resuming reads the kept samples and says the same
        run_rounds(settings(runs["tiny"], out, mbpp_file, quantize="fp16", **resumed), refuse_sampling)
    with pytest.raises(ValueError, match="quantize"):  # samples from other weights are not mixed in
        run_rounds(settings(runs["tiny"], out, mbpp_file, **resumed), refuse_sampling)
