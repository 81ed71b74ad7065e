"""The model-family seam: every family trained by the launcher evaluates through `evaluate.py --ckpt`, and a
new family registers from a test file alone (build, train, checkpoint, load, generate) without touching the
Trainer, the checkpoint code or the evaluator."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from hrm_codegen.families import (
    FAMILIES,
    Generated,
    GenerationRequest,
    ModelFamily,
    get_family,
    register_family,
)
from hrm_codegen.inference import load_checkpoint
from hrm_codegen.train_config import compose_config
from hrm_codegen.training import run

REPO = Path(__file__).resolve().parents[1]
EVALUATE = REPO / "scripts" / "evaluate.py"
FAST = [
    "train.global_batch_size=4",
    "train.max_steps=2",
    "train.warmup_steps=1",
    "train.eval_every=0",
    "train.num_threads=1",
    "data.eval_limit=4",
    "data.train_limit=8",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def paths(gpt2_dir, mbpp_path, tmp_path):
    return [
        f"data.path={mbpp_path}",
        f"tokenizer.name_or_path={gpt2_dir}",
        f"checkpoint_root={tmp_path / 'ck'}",
    ]


def _evaluate_ckpt(run_dir: Path, mbpp_path: Path, output: Path) -> dict:
    """scripts/evaluate.py --ckpt RUN on 2 MBPP test problems, in a subprocess."""
    command = [
        sys.executable,
        str(EVALUATE),
        "--ckpt",
        str(run_dir),
        "--mbpp",
        str(mbpp_path),
        "--limit",
        "2",
    ]
    command += ["--max-new-tokens", "8", "--workers", "2", "--no-progress", "--output", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads((output / "summary.json").read_text())


@pytest.mark.parametrize(
    ("arch", "family"),
    [
        (["arch=tiny", "arch.hidden_size=32", "arch.seq_len=128"], "hrm"),
        (["arch=transformer_tiny_params", "arch.hidden_size=32", "arch.seq_len=128"], "transformer"),
    ],
)
def test_every_family_trained_here_evaluates_with_ckpt_alone(paths, mbpp_path, tmp_path, arch, family):
    result = run(compose_config([*arch, *FAST, *paths, f"run_name=seam_{family}"]))
    run_dir = Path(result["run_dir"])
    loaded = load_checkpoint(run_dir)
    assert loaded.family.name == family and loaded.source.startswith(family)
    summary = _evaluate_ckpt(run_dir, mbpp_path, tmp_path / "eval")
    assert summary["num_problems"] == 2
    assert summary["config"]["source"] == f"{family} {(run_dir / 'step_2').resolve()}"
    step_files = {p.name for p in (run_dir / "step_2").iterdir()}
    # weights are stored once per step, in the save_pretrained layout of hf/ (the HRM's too)
    assert "hf" in step_files and "model.safetensors" not in step_files, step_files


class _BigramLM(nn.Module):
    """A toy model: next-token logits from the current token alone."""

    def __init__(self, vocab_size: int, width: int = 8) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.table(input_ids))


class ToyFamily(ModelFamily):
    """A family defined in a test file only."""

    name = "toy_bigram"

    def build(self, config):
        unknown = set(config) - {"vocab_size", "seq_len"}
        if unknown:
            raise ValueError(f"unknown toy_bigram key(s) {sorted(unknown)}")
        return _BigramLM(config["vocab_size"])

    def lm_logits(self, model, batch):
        return model(batch["input_ids"])

    def max_length(self, model):
        return 1024

    def generate(self, model, input_ids, attention_mask, request: GenerationRequest) -> Generated:
        ids, reasons = [[] for _ in range(len(input_ids))], ["length"] * len(input_ids)
        last = input_ids[:, -1]
        for _ in range(request.max_new_tokens):
            last = model(last).argmax(-1)
            for row, token in enumerate(last.tolist()):
                if reasons[row] == "length" and len(ids[row]) < request.max_new_tokens:
                    if token == request.eos_token_id:
                        reasons[row] = "eos"
                    else:
                        ids[row].append(token)
        return Generated(ids, reasons)


def test_a_new_family_registers_from_a_test_file_alone(paths, mbpp_path, tmp_path, monkeypatch):
    monkeypatch.setitem(FAMILIES, "toy_bigram", ToyFamily())
    with pytest.raises(ValueError, match="already registered"):
        register_family(type("Other", (ToyFamily,), {})())
    cfg = compose_config([*FAST, *paths, "run_name=toy"])
    OmegaConf.set_struct(cfg, False)
    cfg.arch = OmegaConf.create({"name": "toy_bigram", "vocab_size": None, "seq_len": 64})
    cfg.data.seq_len = 512
    cfg.train.lr = 0.1
    before = run(cfg)  # build and train two steps, checkpoint
    run_dir = Path(before["run_dir"])
    loaded = load_checkpoint(run_dir)
    assert loaded.family is get_family("toy_bigram")
    torch.manual_seed(0)
    fresh = ToyFamily().build({"vocab_size": 50257})
    assert not torch.equal(
        loaded.model.head.weight, fresh.head.weight
    )  # trained weights were saved and loaded

    spec = importlib.util.spec_from_file_location("evaluate_script", EVALUATE)
    evaluate_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate_script)
    args = evaluate_script.parse_args(
        ["--ckpt", str(run_dir), "--mbpp", str(mbpp_path), "--limit", "2", "--max-new-tokens", "5"]
        + ["--workers", "1", "--no-progress", "--output", str(tmp_path / "eval")]
    )
    summary = evaluate_script.run(args)  # the unchanged evaluator generates through the family
    assert summary["num_problems"] == 2 and summary["config"]["source"].startswith("toy_bigram ")
    with pytest.raises(ValueError, match="unknown toy_bigram key"):
        cfg.arch.extra = 1
        run(cfg)
