"""Hydra configs: the merge order, the groups and presets, the schema, and bad overrides failing early."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from hrm_codegen.inference import build_model, model_config
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1, HRMConfig
from hrm_codegen.models.configuration_hrm import HRM_KEYS as HRM_ARCH_KEYS
from hrm_codegen.train_config import CONFIG_DIR, compose_config, validate_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "train_codegen.py"
HRM_KEYS = set(HRM_ARCH_KEYS)

UPSTREAM = {  # sapientinc/HRM config/arch/hrm_v1.yaml and model defaults
    "H_cycles": 2,
    "L_cycles": 2,
    "H_layers": 4,
    "L_layers": 4,
    "hidden_size": 512,
    "num_heads": 8,
    "expansion": 4,
    "pos_encodings": "rope",
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "halt_max_steps": 16,
    "halt_exploration_prob": 0.1,
    "puzzle_emb_ndim": 512,
    "forward_dtype": "bfloat16",
    "enable_q_head": True,
    "causal": False,
}
CODEGEN = {
    "causal": True,
    "enable_q_head": False,
    "halt_max_steps": 1,
    "pos_encodings": "rope",
    "puzzle_emb_ndim": 0,
    "forward_dtype": "float32",
    "vocab_size": None,
    "seq_len": 512,
}


def test_sapient_default_is_upstream_as_is():
    arch = compose_config(["arch=sapient_default"]).arch
    assert {k: arch[k] for k in UPSTREAM} == UPSTREAM


def test_codegen_base_merges_sapient_then_codegen_then_command_line():
    cfg = compose_config()
    arch = OmegaConf.to_container(cfg.arch, resolve=True)
    assert {k: arch[k] for k in CODEGEN} == CODEGEN  # codegen overrides win over sapient_default
    untouched = {k: v for k, v in UPSTREAM.items() if k not in CODEGEN}
    assert {k: arch[k] for k in untouched} == untouched  # the rest is upstream's
    assert cfg.data.seq_len == 512 and cfg.tokenizer.name_or_path == "gpt2"
    assert cfg.data.path == "data/mbpp/mbpp.jsonl"
    cli = compose_config(["arch.halt_max_steps=4", "arch.H_cycles=3", "train.lr=3e-4"])
    assert (cli.arch.halt_max_steps, cli.arch.H_cycles, cli.train.lr) == (4, 3, 3e-4)


@pytest.mark.parametrize("arch", ["sapient_default", "hrm_v1", "tiny"])
def test_arch_keys_are_hrm_config_plus_name(arch):
    assert set(compose_config([f"arch={arch}"]).arch) == HRM_KEYS | {"name"}


def test_model_config_strips_name_and_takes_vocab_from_tokenizer():
    cfg = compose_config(["arch=tiny"])
    mc = model_config(cfg, vocab_size=50257)
    assert "name" not in mc and mc["vocab_size"] == 50257
    assert HRMConfig.from_arch(mc).hidden_size == cfg.arch.hidden_size
    model = build_model(cfg, 321)
    assert isinstance(model, HierarchicalReasoningModel_ACTV1)
    assert model.model.embed_tokens.embedding_weight.shape == (321, cfg.arch.hidden_size)
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        model_config(compose_config(["arch=tiny", "arch.vocab_size=100"]), vocab_size=50257)


def test_groups_and_presets_compose():
    demo = compose_config(["experiment=mbpp_cpu_demo"])
    assert demo.arch.hidden_size == compose_config(["arch=tiny"]).arch.hidden_size
    assert demo.data.name == "mbpp" and demo.data.train_split == "train" and demo.train.max_steps
    finetune = compose_config(["experiment=mbpp_finetune"])
    assert finetune.arch.hidden_size == 512 and finetune.run_name == "mbpp_finetune"
    assert compose_config(["experiment=mbpp_cpu_demo", "train.lr=1e-3"]).train.lr == 1e-3  # CLI beats preset
    for name in ("none", "jsonl", "wandb"):
        assert compose_config([f"logger={name}"]).logger.name == name
    for overrides in ([], ["arch=tiny"], ["experiment=mbpp_cpu_demo"], ["experiment=mbpp_finetune"]):
        validate_config(compose_config(overrides))


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "Key 'lrr' not in 'TrainConfig'"),
        ("arch.hidden=64", "Key 'hidden' not in 'HRMArchConfig'"),
        ("train.lr=abc", "could not be converted to Float"),
        ("arch=does_not_exist", "Could not find 'arch/does_not_exist'"),
    ],
)
def test_bad_overrides_fail_composition(override, message):
    with pytest.raises(ConfigCompositionException) as err:
        compose_config([override])
    assert message in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["+train.extra=1"], "extra"),
        (["+arch.extra=1"], "extra"),
        (
            ["arch=sapient_default"],
            "puzzle_emb_ndim",
        ),  # upstream's base layer is not trainable for code as is
        (["arch.puzzle_emb_ndim=8"], "puzzle_emb_ndim"),
        (["train.loss_type=hinge"], "train.loss_type"),
        (["train.mixed_precision=fp8"], "train.mixed_precision"),
    ],
)
def test_validate_config_rejects_added_keys_and_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_config(compose_config(overrides))


def _launch(args, cwd):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "Could not override 'train.lrr'"),
        ("train.lr=", "could not be converted to Float"),
        ("+train.extra=1", "error: config:"),
    ],
)
def test_script_rejects_bad_override_before_any_work(tmp_path, override, message):
    """A bad key or value ends with the message, a non-zero exit, no traceback, and nothing written."""
    result = _launch([override, "data.path=/nonexistent.jsonl", "checkpoint_root=out"], tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "nonexistent" not in result.stderr  # it failed before trying to read the data
    assert list(tmp_path.iterdir()) == []


def test_script_config_flag_needs_an_existing_file(tmp_path):
    result = _launch(["--config", str(tmp_path / "missing.yaml"), "--dry-run"], tmp_path)
    assert result.returncode != 0 and "no such config file" in result.stderr


def test_config_dir_is_the_repository_configs():
    assert CONFIG_DIR == REPO / "configs" and (CONFIG_DIR / "codegen_base.yaml").is_file()
