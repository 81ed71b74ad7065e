"""The structured schema of the training config (configs/codegen_base.yaml) and composing it from Python.

The YAML files hold the values; these dataclasses fix the keys and types, so Hydra rejects an unknown key
or a value of the wrong type while composing, before any work starts.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hrm_codegen.checkpoint import TOKENIZER_DIR, read_meta
from hrm_codegen.families import FAMILIES, ModelFamily, get_family
from hrm_codegen.families.base import is_pretrained_source
from hrm_codegen.inference import model_config, override_arch
from hrm_codegen.losses_codegen import LOSS_TYPES
from hrm_codegen.recurrence import check_recurrence_settings
from hrm_codegen.runs import CONFIG_FILE, resolve_checkpoint
from hrm_codegen.tokenization import FINGERPRINT_FILE

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
MIXED_PRECISION = ("no", "bf16", "fp16")
METHODS = ("sft", "grpo")  # train.method: the next-token loop, or learning from execution (hrm_codegen.rl)


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
    # MBPP only: native, or chat (an instruct model's chat template with EvalPlus's prompts)
    prompt_format: str = "native"
    corpus_dir: str | None = None
    pairs_path: str | None = None  # data=pairs: a pairs.jsonl from scripts/build_pairs.py
    pairs_verified_only: bool = False  # data=pairs: only the pairs whose asserts passed in the sandbox
    pairs_with_mbpp_train: bool = False  # data=pairs: MBPP's data.train_split first, then the pairs
    # data=pairs: only the pairs whose `source` is one of these (e.g. [mbpp/train]: a rejection-sampling round's
    # MBPP solutions without its sampled programs); null keeps every pair
    pairs_sources: list[str] | None = None
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
    stop_after: int | None = None  # end after this optimizer step; the schedules still span max_steps
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
    arch_from_init: bool = False  # arch and tokenizer from the checkpoint train.init_from names
    arch_overrides: dict[str, Any] = field(default_factory=dict)  # merged over that arch (arch_from_init)
    # HRM recurrence curriculum: [[start_fraction, H_cycles, L_cycles], ...]; [] = arch's cycles all along
    cycles_schedule: list[Any] = field(default_factory=list)
    # Recurrence that pays (HRM, hrm_codegen.recurrence; all off by default): deep supervision within a step,
    # random cycles per step, the exit gate's loss
    deep_supervision: bool = False  # arch.halt_max_steps segments per example, a loss after each
    deep_supervision_weights: list[float] = field(default_factory=list)  # per segment; [] = 1/M each
    deep_supervision_detach: bool = True  # the carry passed between segments without gradient
    random_cycles: str = "none"  # none | uniform | lognormal_poisson
    # uniform: [low, high]; lognormal_poisson: [mean, max]; [] = the arch's cycles of that level
    random_H_cycles: list[Any] = field(default_factory=list)
    random_L_cycles: list[Any] = field(default_factory=list)
    random_cycles_sigma: float = 0.5  # lognormal_poisson: sigma of the log-normal rate
    exit_loss_weight: float = 1.0  # arch.exit_gate: weight of the exit gate's BCE
    exit_margin: float = 0.0  # arch.exit_gate: another L step "pays" when it lowers a token's loss by more
    exit_gate_lr_scale: float = 1.0  # arch.exit_gate: the gate's learning rate is train.lr times this
    exit_gate_only: bool = (
        False  # arch.exit_gate: only the gate trains, the language model frozen (Ouro's stage 2)
    )
    num_threads: int | None = None
    cpu: bool = False
    method: str = "sft"  # sft: the next-token loop (training.py) | grpo: learning from execution (rl.py)


@dataclass
class RLConfig:
    """Learning from execution (train.method=grpo, `hrm_codegen.rl`): TRL's GRPOTrainer; codegen_base.yaml
    documents each key."""

    algorithm: str = "gspo"  # gspo (sequence-level importance ratio) | grpo (token-level)
    tasks: list[str] = field(default_factory=lambda: ["mbpp"])  # mbpp and/or pairs (verified pairs)
    num_generations: int = 4
    max_completion_length: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    updates_per_generation: int = 1
    gradient_checkpointing: bool = True
    reward_timeout_s: float = 10.0
    reward_workers: int | None = None


@dataclass
class CodegenConfig:
    """The whole training config; `arch` is checked by the schema its YAML names (e.g. arch/hrm_schema)."""

    arch: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rl: RLConfig = field(default_factory=RLConfig)
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


def resolve_arch_from_init(cfg: DictConfig, resume_dir: Path | None = None) -> DictConfig:
    """The run's config with `train.arch_from_init` applied; `cfg` itself (unchanged) when it is false.

    With it, `train.init_from` must name a checkpoint of this launcher (a step directory, or a run directory
    meaning its latest step): the returned copy's `arch` is that step's saved `arch` with `train.arch_overrides`
    merged over it (the composed `arch` is replaced whole), and its tokenizer is the step's `tokenizer/` with
    the step's fingerprint (verified when the Trainer loads it). A resumed run (`resume_dir`, its step) takes
    them from that step, which recorded them, and does not read train.init_from again (it may be gone). The
    Trainer calls this once, before `validate_config`, so the run checks, builds and saves (config.yaml) the
    resolved arch and tokenizer.
    """
    train = cfg.train
    if not train.get("arch_from_init"):
        return cfg
    key = "train.arch_from_init=true"
    step_dir = resume_dir if resume_dir is not None else _init_step_dir(cfg)
    meta = read_meta(step_dir, verify=False)
    saved = OmegaConf.load(step_dir / CONFIG_FILE) if (step_dir / CONFIG_FILE).is_file() else None
    tokenizer_dir = step_dir / TOKENIZER_DIR
    if not isinstance(saved, DictConfig) or "arch" not in saved:
        raise ValueError(
            f"{key}: {step_dir} is not a checkpoint with a saved arch (no {CONFIG_FILE} with an `arch` "
            "section); train.init_from must be a step or run directory of this launcher"
        )
    if not (tokenizer_dir / FINGERPRINT_FILE).is_file():
        raise ValueError(f"{key}: the checkpoint {step_dir} has no {TOKENIZER_DIR}/{FINGERPRINT_FILE}")
    configured = cfg.tokenizer.get("fingerprint")
    if configured and configured != meta["tokenizer_fingerprint"]:
        raise ValueError(
            f"tokenizer.fingerprint={configured}, but {key} takes the tokenizer of {step_dir}, whose fingerprint "
            f"is {meta['tokenizer_fingerprint']}"
        )
    resolved = copy.deepcopy(cfg)
    resolved.arch = override_arch(saved.arch, train.get("arch_overrides") or {}, "train.arch_overrides")
    resolved.tokenizer.name_or_path = str(tokenizer_dir.resolve())
    resolved.tokenizer.fingerprint = meta["tokenizer_fingerprint"]
    logger.info(
        "train.arch_from_init: the arch and tokenizer of %s (the composed arch is replaced)", step_dir
    )
    return resolved


def _init_step_dir(cfg: DictConfig) -> Path:
    """The step directory train.init_from names for train.arch_from_init (a ValueError naming the key else)."""
    source, key = cfg.train.get("init_from"), "train.arch_from_init=true"
    if not source:
        raise ValueError(f"{key} needs train.init_from=<a step or run directory of this launcher>")
    if is_pretrained_source(source):
        raise ValueError(
            f"{key}: train.init_from={source} is an outside transformers model, not a checkpoint of this "
            "launcher (a step directory with meta.json, or a run directory with `latest`)"
        )
    try:
        step_dir = resolve_checkpoint(source)
        if not step_dir.is_dir():
            raise ValueError(
                f"{step_dir} is a weights file; the arch and tokenizer come from a step or run directory"
            )
        read_meta(step_dir, verify=False)
    except ValueError as err:
        raise ValueError(f"{key}: train.init_from={source}: {err}") from err
    return step_dir


def _check_cycles_schedule(cfg: DictConfig, family: ModelFamily) -> None:
    """train.cycles_schedule: [[start_fraction, H_cycles, L_cycles], ...] starting at 0.0, fractions strictly
    increasing in [0, 1), cycles integers >= 1, for a family that can change its cycles while training
    (`supports_cycles_schedule`). An arch.bp_steps above an entry's H_cycles * (L_cycles + 1) backpropagates
    through every step of that entry."""
    key = "train.cycles_schedule"
    schedule = cast(list[Any], OmegaConf.to_container(cfg.train.cycles_schedule, resolve=True))
    if not schedule:
        return
    if not getattr(family, "supports_cycles_schedule", False):
        raise ValueError(
            f"{key} is for arch.name=hrm (a model that can change its cycles while training); "
            f"arch.name={family.name} cannot: leave {key} empty"
        )
    previous: float | None = None
    for i, entry in enumerate(schedule):
        where = f"{key}[{i}]"
        if not isinstance(entry, list) or len(entry) != 3:
            raise ValueError(f"{where} must be [start_fraction, H_cycles, L_cycles], got {entry!r}")
        start, h_cycles, l_cycles = entry
        if isinstance(start, bool) or not isinstance(start, int | float) or not 0 <= start < 1:
            raise ValueError(f"{where}: start_fraction must be a number in [0, 1), got {start!r}")
        if previous is None and start != 0:
            raise ValueError(f"{where}: the first entry must start at 0.0, got {start!r}")
        if previous is not None and start <= previous:
            raise ValueError(
                f"{where}: start fractions must be strictly increasing, got {start!r} after {previous!r}"
            )
        for name, value in (("H_cycles", h_cycles), ("L_cycles", l_cycles)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}: {name} must be an integer >= 1, got {value!r}")
        previous = float(start)
    final, target = tuple(schedule[-1][1:]), (cfg.arch.get("H_cycles"), cfg.arch.get("L_cycles"))
    if final != target:
        logger.warning(
            "%s ends at (H_cycles, L_cycles) = %s, but the saved arch keeps %s: the final model is evaluated with "
            "cycles it was not trained with last",
            key,
            final,
            target,
        )


def validate_config(cfg: DictConfig) -> None:
    """Check the composed config against the schemas and the model family before any work (ValueError).

    With `train.arch_from_init` it checks the config `resolve_arch_from_init` returned (the Trainer's)."""
    try:
        plain = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
        plain.pop("arch", None)
        OmegaConf.merge(OmegaConf.structured(CodegenConfig), plain)  # rejects keys added with `+key=...`
    except OmegaConfBaseException as err:
        raise ValueError(f"config: {str(err).splitlines()[0]} (key {err.full_key})") from err
    prompt_format = cfg.data.get("prompt_format", "native")
    if prompt_format not in ("native", "chat"):
        raise ValueError(f"data.prompt_format={prompt_format!r}: expected native or chat")
    if prompt_format == "chat" and cfg.data.name != "mbpp":
        raise ValueError(
            f"data.prompt_format=chat is for data=mbpp; data={cfg.data.name} trains in MBPP's format"
        )
    for key in ("pairs_verified_only", "pairs_with_mbpp_train", "pairs_sources"):
        if cfg.data.get(key) and cfg.data.name != "pairs":
            raise ValueError(f"data.{key} is for data=pairs, not data={cfg.data.name}")
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
    check_train_settings(cfg)
    _check_cycles_schedule(cfg, family)
    check_recurrence_settings(cfg, family.name)


def check_train_settings(cfg: DictConfig) -> None:
    """Check the `train` keys that need no model (ValueError naming the key); part of `validate_config`, and
    what the Trainer checks before it starts its processes."""
    train = cfg.train
    if train.get("method", "sft") not in METHODS:
        raise ValueError(f"train.method must be one of {METHODS}, got {train.method!r}")
    if train.loss_type not in LOSS_TYPES:
        raise ValueError(f"train.loss_type must be one of {LOSS_TYPES}, got {train.loss_type!r}")
    if train.mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"train.mixed_precision must be one of {MIXED_PRECISION}, got {train.mixed_precision!r}"
        )
    for key in ("global_batch_size", "grad_accum", "finite_check_every", "max_nonfinite_steps", "log_every"):
        if train[key] < 1:
            raise ValueError(f"train.{key} must be >= 1, got {train[key]}")
    if train.get("stop_after") is not None and train.stop_after < 1:
        raise ValueError(f"train.stop_after must be >= 1 or null (run to the end), got {train.stop_after}")
    if train.arch_overrides and not train.arch_from_init:
        raise ValueError(
            f"train.arch_overrides={dict(train.arch_overrides)} applies with train.arch_from_init=true (over the "
            "arch of train.init_from); without it set arch keys directly (arch.<key>=<value>)"
        )
    if not 0.0 <= train.bp_warmup_ratio <= 1.0:
        raise ValueError(f"train.bp_warmup_ratio must be between 0 and 1, got {train.bp_warmup_ratio}")
    if len(train.betas) != 2:
        raise ValueError(f"train.betas must be two numbers, got {list(train.betas)}")
