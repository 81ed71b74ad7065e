"""The structured schema of the training config (configs/codegen_base.yaml) and composing it from Python.

The YAML files hold the values; these dataclasses fix the keys and types, so Hydra rejects an unknown key
or a value of the wrong type while composing, before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hrm_codegen.families import FAMILIES, get_family
from hrm_codegen.inference import model_config
from hrm_codegen.losses_codegen import LOSS_TYPES

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
MIXED_PRECISION = ("no", "bf16", "fp16")


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
    pairs_path: str | None = None  # data=pairs: a pairs.jsonl from scripts/build_pairs.py
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
    compile: bool = False  # torch.compile the training forward (the family's compile_for_training)
    bp_warmup_ratio: float = 0.0  # HRM: bp_steps from 2 up to arch.bp_steps over this fraction of the steps
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
    """Put the schemas into Hydra's ConfigStore: `codegen_schema`, and `arch/<schema name>` of each family."""
    store = ConfigStore.instance()
    store.store(name="codegen_schema", node=CodegenConfig)
    for family in FAMILIES.values():
        for name, node in family.arch_schemas().items():
            store.store(group="arch", name=name, node=node)


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


def validate_config(cfg: DictConfig) -> None:
    """Check the composed config against the schemas and the model family before any work (ValueError)."""
    try:
        plain = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
        plain.pop("arch", None)
        OmegaConf.merge(OmegaConf.structured(CodegenConfig), plain)  # rejects keys added with `+key=...`
    except OmegaConfBaseException as err:
        raise ValueError(f"config: {str(err).splitlines()[0]} (key {err.full_key})") from err
    family = get_family(cfg.arch.name)
    # Packing first: the family's check builds the model, which fails on flash_attn without the package.
    if cfg.data.pack:
        if cfg.data.name not in ("mbpp", "pairs"):
            raise ValueError(
                f"data.pack=true is for data=mbpp or data=pairs; data={cfg.data.name} already trains on dense "
                "seq_len blocks of corpus tokens: leave data.pack=false"
            )
        family.check_packing(model_config(cfg, vocab_size=1))
    family.check(model_config(cfg, vocab_size=1))
    train = cfg.train
    if train.loss_type not in LOSS_TYPES:
        raise ValueError(f"train.loss_type must be one of {LOSS_TYPES}, got {train.loss_type!r}")
    if train.mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"train.mixed_precision must be one of {MIXED_PRECISION}, got {train.mixed_precision!r}"
        )
    for key in ("global_batch_size", "grad_accum", "finite_check_every", "max_nonfinite_steps", "log_every"):
        if train[key] < 1:
            raise ValueError(f"train.{key} must be >= 1, got {train[key]}")
    if not 0.0 <= train.bp_warmup_ratio <= 1.0:
        raise ValueError(f"train.bp_warmup_ratio must be between 0 and 1, got {train.bp_warmup_ratio}")
    if len(train.betas) != 2:
        raise ValueError(f"train.betas must be two numbers, got {list(train.betas)}")
