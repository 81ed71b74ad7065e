"""The structured schema of the training config (configs/codegen_base.yaml) and composing it from Python.

The YAML files hold the values; these dataclasses fix the keys and types, so Hydra rejects an unknown key
or a value of the wrong type while composing, before any work starts.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from hrm_codegen.models.hrm_act_v1 import HRMConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
MIXED_PRECISION = ("no", "bf16", "fp16")


def _hrm_arch_schema() -> type:
    """A dataclass with exactly HRMConfig's keys plus `name`; vocab_size null means "from the tokenizer"."""
    hints = typing.get_type_hints(HRMConfig)
    specs: list[tuple[str, Any, Any]] = [("name", str, field(default="hrm"))]
    for f in dataclasses.fields(HRMConfig):
        if f.name == "vocab_size":
            specs.append((f.name, int | None, field(default=None)))
        else:
            specs.append((f.name, hints[f.name], field(default=f.default)))
    return dataclasses.make_dataclass("HRMArchConfig", specs)


HRMArchConfig = _hrm_arch_schema()


def _transformer_arch_schema() -> type:
    """An overlay on HRMArchConfig adding the baseline keys (hrm_codegen/models/baseline.py).

    Listed after an HRM arch in a defaults list, it leaves that arch's values as they are (its inherited keys
    are MISSING, which a merge does not write) and makes `match`, `num_hidden_layers` and `initializer_range`
    known keys.
    """
    hints = typing.get_type_hints(HRMArchConfig)
    specs: list[tuple[str, Any, Any]] = [
        (f.name, hints[f.name], field(default=MISSING)) for f in dataclasses.fields(HRMArchConfig)
    ]
    specs += [
        ("match", str, field(default="params")),
        ("num_hidden_layers", int | None, field(default=None)),
        ("initializer_range", float, field(default=0.02)),
    ]
    return dataclasses.make_dataclass("TransformerArchConfig", specs, bases=(HRMArchConfig,))


TransformerArchConfig = _transformer_arch_schema()


@dataclass
class TokenizerConfig:
    """Which tokenizer, and the fingerprint it must have (null = any)."""

    name_or_path: str = "gpt2"
    fingerprint: str | None = None


@dataclass
class DataConfig:
    """The training and validation data: MBPP (`path`, the splits, `few_shot`) or a corpus (`corpus_dir`)."""

    name: str = "mbpp"
    path: str = "data/mbpp/mbpp.jsonl"
    train_split: str = "train"
    eval_split: str = "validation"
    seq_len: int = MISSING
    few_shot: int = 0
    cache_dir: str | None = None
    train_limit: int | None = None
    eval_limit: int | None = None
    pack: bool = False  # MBPP only: pack the training split into seq_len blocks (validation stays unpacked)
    corpus_dir: str | None = None
    eval_blocks: int = 0


@dataclass
class LoggerConfig:
    """Where metrics go: none, jsonl (metrics.jsonl) or wandb (metrics.jsonl + wandb)."""

    name: str = "jsonl"
    project: str | None = None
    entity: str | None = None
    mode: str | None = None


@dataclass
class TrainConfig:
    """Optimisation, precision, safety checks and cadence; codegen_base.yaml documents each key."""

    max_steps: int | None = None
    epochs: float = 1.0
    global_batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    decay_embeddings: bool = False
    decay_norms_and_biases: bool = False
    grad_clip: float = 1.0
    loss_type: str = "softmax"
    mixed_precision: str = "no"
    finite_check_every: int = 1
    max_nonfinite_steps: int = 5
    log_every: int = 10
    eval_every: int = 100
    eval_max_batches: int | None = None
    ckpt_every: int = 500
    keep_last: int = 3
    init_from: str | None = None
    num_threads: int | None = None
    cpu: bool = False


@dataclass
class CodegenConfig:
    """The whole training config; `arch` is checked by the schema its YAML names (e.g. arch/hrm_schema)."""

    arch: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    run_name: str = MISSING
    checkpoint_root: str = "checkpoints"
    resume: str | None = None
    dry_run: bool = False


def register_configs() -> None:
    """Put the schemas into Hydra's ConfigStore (`codegen_schema`, `arch/hrm_schema`, `arch/transformer_schema`)."""
    store = ConfigStore.instance()
    store.store(name="codegen_schema", node=CodegenConfig)
    store.store(group="arch", name="hrm_schema", node=HRMArchConfig)
    store.store(group="arch", name="transformer_schema", node=TransformerArchConfig)


def compose_config(
    overrides: list[str] | tuple[str, ...] = (),
    config_name: str = "codegen_base",
    config_dir: str | Path = CONFIG_DIR,
) -> DictConfig:
    """The training config composed from configs/ and `overrides`, as the launcher composes it."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
        return compose(config_name, overrides=list(overrides))
