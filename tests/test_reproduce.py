"""scripts/reproduce.py: the rows' recipes are consistent, and the results tables group and annotate rows."""

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

from hrm_codegen.train_config import compose_config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce.py"


@pytest.fixture(scope="module")
def reproduce():
    """The script imported as a module."""
    spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _arch(overrides: tuple[str, ...]) -> list[str]:
    return [o for o in overrides if o.startswith("arch=")]


def test_every_row_composes_and_later_stages_start_from_the_previous_run_with_the_same_model(reproduce):
    for name, row in reproduce.ROWS.items():
        configs = [compose_config([*stage.overrides, f"run_name={stage.run_name}"]) for stage in row.stages]
        for stage, cfg in zip(row.stages, configs, strict=True):
            assert (cfg.data.name == "corpus") == stage.corpus, (name, stage.run_name)
        for before, after, cfg in zip(row.stages, row.stages[1:], configs[1:], strict=False):
            assert Path(str(cfg.train.init_from)) == Path("checkpoints") / before.run_name, name
            assert _arch(before.overrides) == _arch(after.overrides), name
            assert configs[0].arch.name == cfg.arch.name
        assert row.group in reproduce.GROUPS


def test_gpu_rows_share_one_token_budget_and_run_in_bf16(reproduce):
    gpu = [row for row in reproduce.ROWS.values() if row.group == "gpu"]
    assert len(gpu) == 3
    budgets = set()
    for row in gpu:
        for stage in row.stages:
            cfg = compose_config(list(stage.overrides))
            assert cfg.train.mixed_precision == "bf16"
            budgets.add((stage.corpus, cfg.train.max_steps, cfg.train.epochs, cfg.train.global_batch_size))
    assert len(budgets) == 2  # one pre-training budget and one fine-tuning budget for every model


def _record(row: str, label: str, group: str, notes: list[str] | None = None) -> dict:
    evaluation = {"num_problems": 500, "pass_at_k": {"1": 0.004}, "syntax_valid_rate": 0.5}
    evaluation["empty_completion_rate"] = 0.25
    record = {
        "row": row,
        "label": label,
        "group": group,
        "parameters": 1234,
        "training_tokens": 5678,
        "hardware": "hw",
        "date": "2026-11-22",
        "train_wall_s": 90.0,
        "val_loss": 1.5,
        "greedy": evaluation,
        "sampled": None,
        "reproduce": f"python scripts/reproduce.py {row}",
        "commands": [f"python scripts/train_codegen.py run_name={row}"],
    }
    if notes:
        record["notes"] = notes
    return record


def test_table_renders_rows_notes_and_commands(reproduce):
    lines = reproduce.table([_record("a", "Model A", "gpu", ["2 samples lost"])], "gpu")
    text = "\n".join(lines)
    assert text.startswith("## MBPP results on one GPU")
    assert "| Model A | 1,234 | 5,678 | hw, 2026-11-22 | 1.5 min | 0.4% (of 500) | not run |" in text
    assert "| 50.0% / not run | 25.0% / not run | 1.500 |" in text
    assert "- Model A: 2 samples lost" in text
    assert "python scripts/train_codegen.py run_name=a" in text
    assert "mbpp_gpu.png" in text
    assert "Notes on the measurements" not in "\n".join(reproduce.table([_record("b", "B", "cpu")], "cpu"))


def test_an_epoch_based_stage_counts_as_finished_and_is_not_rerun(
    reproduce, tmp_path, monkeypatch, gpt2_dir, mbpp_path
):
    """Running a row's stage twice leaves metrics.jsonl and wall_time.json as the first run wrote them."""
    (tmp_path / "scripts").symlink_to(SCRIPT.parent)
    monkeypatch.setattr(reproduce, "REPO", tmp_path)
    stage = reproduce.Stage(
        "epochs_stage",
        (
            "arch=tiny",
            "arch.hidden_size=32",
            "arch.seq_len=128",
            "train.max_steps=null",
            "train.epochs=1",
            "data.train_limit=8",
            "train.global_batch_size=4",
            "train.eval_every=0",
            "train.num_threads=1",
        ),
    )
    row = reproduce.Row("epochs", (stage,))
    args = argparse.Namespace(mbpp=str(mbpp_path), tokenizer=str(gpt2_dir), corpus=None)
    first = reproduce.train_stage(stage, row, args, [])
    run_dir = tmp_path / "checkpoints" / "epochs_stage"
    assert first["steps"] == 2  # 8 examples / 4 per step, one epoch
    metrics, wall = (run_dir / "metrics.jsonl").read_bytes(), (run_dir / "wall_time.json").read_bytes()
    second = reproduce.train_stage(stage, row, args, [])
    assert second["steps"] == 2 and second["train_wall_s"] == first["train_wall_s"]
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics
    assert (run_dir / "wall_time.json").read_bytes() == wall
