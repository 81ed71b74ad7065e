"""The Llama baseline through the training launcher, its save_pretrained export, and corpus pre-training."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from hrm_codegen.checkpoint import CheckpointError, read_meta, verify_export
from hrm_codegen.datasets.assembly import build_datasets
from hrm_codegen.datasets.corpus import (
    CorpusFilters,
    build_corpus,
    load_manifest,
    python_files,
    read_local_files,
)
from hrm_codegen.families.transformers_lm import HF_DIR
from hrm_codegen.inference import load_model_for_inference, load_pretrained
from hrm_codegen.logging_utils import read_metrics
from hrm_codegen.tokenization import CodeTokenizer, load_tokenizer
from hrm_codegen.train_config import compose_config, validate_config
from hrm_codegen.training import Trainer, run


def load_hf_model(path):
    loaded = load_pretrained(path)
    return loaded.model, loaded.tokenizer


REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "train_codegen.py"
SMALL = [
    "arch.hidden_size=32",
    "arch.seq_len=128",
    "train.global_batch_size=4",
    "train.warmup_steps=1",
    "train.lr=3e-3",
    "train.log_every=1",
    "train.num_threads=1",
    "data.eval_limit=8",
    "train.keep_last=0",
]


@pytest.fixture
def paths(gpt2_dir, mbpp_path, tmp_path):
    """Overrides that point a run at the shared data and a temporary checkpoint root."""
    return [
        f"data.path={mbpp_path}",
        f"tokenizer.name_or_path={gpt2_dir}",
        f"checkpoint_root={tmp_path / 'ck'}",
    ]


@pytest.fixture(scope="module")
def corpus_dir(gpt2_dir, tmp_path_factory):
    """A small corpus: the package's own source files, tokenised with GPT-2."""
    out = tmp_path_factory.mktemp("corpus")
    files = read_local_files(python_files([REPO / "hrm_codegen"]))
    build_corpus(files, load_tokenizer(gpt2_dir), out, CorpusFilters(), max_tokens=40_000)
    return out


def test_transformer_archs_keep_the_hrm_shape_and_check_baseline_keys():
    tiny = compose_config(["arch=tiny"]).arch
    for name, match in (("transformer_tiny_params", "params"), ("transformer_tiny_compute", "compute")):
        arch = compose_config([f"arch={name}"]).arch
        assert (arch.name, arch.match) == ("transformer", match)
        assert all(arch[key] == tiny[key] for key in tiny if key != "name")
    assert compose_config(["arch=transformer_compute"]).arch.hidden_size == 512  # matched to hrm_v1
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["arch=transformer_tiny_params", "arch.depth=3"])
    assert "Key 'depth' not in 'TransformerArchConfig'" in str(err.value) + str(err.value.__cause__)
    with pytest.raises(ValueError, match="match must be one of"):
        validate_config(compose_config(["arch=transformer_tiny_params", "arch.match=flops"]))
    with pytest.raises(ValueError, match="causal decoder"):
        validate_config(compose_config(["arch=transformer_tiny_params", "arch.causal=false"]))


@pytest.mark.slow
def test_launcher_trains_the_compute_matched_baseline_and_exports_save_pretrained(paths, tmp_path):
    """scripts/train_codegen.py trains the 6-layer baseline; <step>/hf loads with AutoModelForCausalLM."""
    args = [*SMALL, *paths, "arch=transformer_tiny_compute", "run_name=llama", "train.max_steps=6"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "train.eval_every=6"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "ck" / "llama"
    val = [r["val_loss"] for r in read_metrics(run_dir) if "val_loss" in r]
    assert len(val) == 2 and val[1] < val[0] - 0.2  # starts near ln(50257) = 10.8 and drops

    step = run_dir / "step_6"
    trained, tokenizer = load_model_for_inference(step)
    assert isinstance(trained, LlamaForCausalLM) and trained.config.num_hidden_layers == 6  # 2 * (2 * 1 + 1)
    exported = AutoModelForCausalLM.from_pretrained(step / HF_DIR)
    assert type(exported) is LlamaForCausalLM
    assert exported.generation_config.eos_token_id == tokenizer.eos_id
    assert exported.generation_config.pad_token_id == tokenizer.pad_id
    ids = torch.tensor([tokenizer.encode("def add(a, b):\n    return a + b\n")])
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, trained(ids).logits)
    hf_weights = load_file(str(step / HF_DIR / "model.safetensors"))
    assert set(hf_weights) == set(trained.state_dict())
    assert not (step / "model.safetensors").exists()  # the weights are stored once, in hf/
    model, hf_tokenizer = load_hf_model(step / HF_DIR)  # as scripts/evaluate.py --model reads it
    assert isinstance(hf_tokenizer, CodeTokenizer) and hf_tokenizer.fingerprint == tokenizer.fingerprint
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in trained.parameters())


def test_dry_run_reports_the_baseline_without_a_q_head(paths):
    report = run(compose_config([*SMALL, *paths, "arch=transformer_tiny_params", "dry_run=true"]))
    assert isinstance(report, str)
    assert "arch.name=transformer" in report and "has no Q-head flag" in report
    assert "layers" in report and "lm_head" in report


def test_corpus_data_splits_blocks_and_checks_its_keys(paths, corpus_dir, gpt2_dir):
    tokenizer = load_tokenizer(gpt2_dir)
    corpus = [
        *SMALL,
        *paths,
        "arch=tiny",
        "data=corpus",
        f"data.corpus_dir={corpus_dir}",
        "data.eval_limit=null",
    ]
    train, val = build_datasets(compose_config(corpus), tokenizer)
    blocks = len(train) + len(val)  # type: ignore[arg-type]
    assert len(val) == 32  # type: ignore[arg-type]  # configs/data/corpus.yaml: eval_blocks
    assert blocks == load_manifest(corpus_dir)["num_tokens"] // 128
    assert torch.equal(train[0]["labels"][:-1], train[0]["input_ids"][1:])
    assert not any(torch.equal(val[0]["input_ids"], train[i]["input_ids"]) for i in range(len(train)))  # type: ignore[arg-type]
    for overrides, message in (
        (["data.corpus_dir=null"], "needs data.corpus_dir"),
        ([f"data.eval_blocks={blocks}"], f"has {blocks} blocks"),
        (["data.eval_blocks=0"], "data.eval_blocks=0"),
    ):
        with pytest.raises(ValueError, match=message):
            build_datasets(compose_config([*corpus, *overrides]), tokenizer)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["tiny", "transformer_tiny_params"])
def test_pretrain_on_corpus_then_finetune_from_its_weights(paths, corpus_dir, arch):
    pretrain = run(
        compose_config(
            [
                *SMALL,
                *paths,
                f"arch={arch}",
                "data=corpus",
                f"data.corpus_dir={corpus_dir}",
                "run_name=pre",
                "train.max_steps=3",
                "train.eval_every=3",
            ]
        )
    )
    assert isinstance(pretrain, dict)
    val = [r["val_loss"] for r in read_metrics(pretrain["run_dir"]) if "val_loss" in r]
    assert len(val) == 2 and val[1] < val[0] - 0.1  # on the held-out corpus blocks, from ~ln(50257) = 10.8
    pre_step = Path(pretrain["run_dir"]) / "step_3"
    finetune = [*SMALL, *paths, f"arch={arch}", "run_name=ft", f"train.init_from={pretrain['run_dir']}"]
    trainer = Trainer(compose_config([*finetune, "train.max_steps=2"]))
    start = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    pretrained = load_file(
        str(pre_step / HF_DIR / "model.safetensors")
    )  # every family: save_pretrained in hf/
    assert all(torch.equal(start[k], pretrained[k]) for k in pretrained)
    assert trainer.cfg.data.name == "mbpp" and trainer.state.step == 0  # weights only: a fresh run on MBPP
    result = trainer.fit()
    assert result["step"] == 2 and (Path(result["run_dir"]) / "step_2").is_dir()


def test_baseline_checkpoint_holds_its_hf_export_inside_the_atomic_write(paths, monkeypatch):
    """<step>/hf/ is written before meta.json and the rename: listed in meta.json and verified on load."""
    renamed, rename = [], os.rename

    def recording_rename(src, dst):
        renamed.append(Path(dst))
        rename(src, dst)

    monkeypatch.setattr(os, "rename", recording_rename)
    trainer = Trainer(compose_config([*SMALL, *paths, "arch=transformer_tiny_params", "train.max_steps=1"]))
    result = trainer.fit()
    step = Path(result["run_dir"]) / "step_1"
    assert renamed == [step]  # one rename: the step directory with hf/ inside it
    files = read_meta(step)["files"]
    hf_files = {name for name in files if name.startswith(f"{HF_DIR}/")}
    assert {f"{HF_DIR}/config.json", f"{HF_DIR}/model.safetensors", f"{HF_DIR}/tokenizer.json"} <= hf_files
    assert hf_files == {str(p.relative_to(step)) for p in (step / HF_DIR).rglob("*") if p.is_file()}
    model, _ = load_hf_model(step / HF_DIR)
    assert isinstance(model, LlamaForCausalLM)

    weights = step / HF_DIR / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=f"truncated or corrupt: {HF_DIR}/model.safetensors has"):
        load_model_for_inference(step)
    # evaluate.py --model <step>/hf checks the export against meta.json as well
    with pytest.raises(CheckpointError, match=f"truncated or corrupt: {HF_DIR}/model.safetensors has"):
        load_hf_model(step / HF_DIR)
    assert verify_export(step / HF_DIR.upper()) is False  # not listed in meta.json: a plain folder, no check
