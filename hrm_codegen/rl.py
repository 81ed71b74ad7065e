"""Learning from execution: GSPO / GRPO through TRL's `GRPOTrainer` (`train.method=grpo`, `experiment=rl_mbpp`).

The loop is TRL's. This module builds what it takes from the run config and the run directory:

- the policy: the model of `train.init_from` (a step or run directory of this launcher, or for the transformers
  families an outside transformers model) through its transformers class (the HRM's `HrmCodegenForCausalLM`),
  with the tokenizer it was trained with; a resumed run builds both from its own latest step;
- the prompts: a task set (`datasets.tasks`: MBPP's `data.train_split`, and with `rl.tasks` the verified pairs of
  `data.pairs_path`) in the prompt format the starting run was trained in (its `data.prompt_format` and
  `data.few_shot`, which this run records), as a dataset with the columns `prompt` and `task_id`. `prompt` is the
  text the tokenizer turns into exactly the ids evaluation gives the model (`prompt_text`: `[BOS] prompt` in the
  native format). Prompts that leave fewer than `rl.max_completion_length` positions in the model are dropped;
- the reward: `rewards.ExecutionReward`: the sandbox runs each completion, cut at the format's stop strings as
  evaluation's generation stops there (`tasks.judged_uncut`), against the task's asserts, programs in parallel
  with a wall-clock limit (`rl.reward_timeout_s`); 1.0 on pass, 0.0 otherwise, the sandbox's own failures included;
- `trl.GRPOConfig` from `train.*` and `rl.*` (`grpo_config`): `rl.algorithm` gspo is sequence-level importance
  sampling, grpo token-level; `train.global_batch_size` counts completions per optimizer step;
- two callbacks: each checkpoint the Trainer writes becomes a step directory of the run (`StepCheckpoints`), and
  its logs (reward mean and std, pass rates, completion lengths, clip ratios, entropy) go to the run's
  metrics.jsonl and wandb (`RunMetrics`). The Trainer's own progress bar shows the steps.

A step directory holds what every step of this launcher holds (hf/, tokenizer/, config.yaml, meta.json,
train_state.json: `scripts/evaluate.py --ckpt` and `train.init_from` read it) and `trainer/`, the Trainer's own
checkpoint (optimizer, scheduler, RNG and trainer state, with its copy of the weights), moved in from the staging
directory `<run>/.trainer/` inside the step's atomic write. `resume` hands `trainer/` to
`Trainer.train(resume_from_checkpoint=...)`, which restores them and skips the prompts already used, so a run
killed and resumed ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from accelerate import PartialState
from datasets import Dataset
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl.trainer.grpo_config import GRPOConfig
from trl.trainer.grpo_trainer import GRPOTrainer

from hrm_codegen import checkpoint as ckpt
from hrm_codegen import runs
from hrm_codegen.datasets.batching import encode_prompt
from hrm_codegen.datasets.protocols import BOS_TOKENIZER, FORMATS, FormattedProblem
from hrm_codegen.datasets.tasks import build_task_set, judged_uncut
from hrm_codegen.execution import SandboxLimits
from hrm_codegen.families import ModelFamily, get_family
from hrm_codegen.families.base import is_pretrained_source, parameter_counts
from hrm_codegen.inference import load_checkpoint, model_config, recorded_arch
from hrm_codegen.logging_utils import MetricsLogger
from hrm_codegen.rewards import ExecutionReward
from hrm_codegen.tokenization import CodeTokenizer, check_fingerprint, load_tokenizer
from hrm_codegen.train_config import resolve_arch_from_init, validate_config

logger = logging.getLogger(__name__)

TRAINER_DIR = "trainer"  # the Trainer's own checkpoint inside a step directory
STAGING_DIR = ".trainer"  # where the Trainer writes a checkpoint before it becomes a step directory
IMPORTANCE_SAMPLING = {"gspo": "sequence", "grpo": "token"}  # rl.algorithm -> TRL's importance_sampling_level


def check_rl_settings(cfg: DictConfig, world: int = 1) -> None:
    """Check the `rl` keys and the `train` keys the RL recipe reads or cannot honour (ValueError naming the key)."""
    train, rl = cfg.train, cfg.rl
    if rl.algorithm not in IMPORTANCE_SAMPLING:
        raise ValueError(f"rl.algorithm must be one of {sorted(IMPORTANCE_SAMPLING)}, got {rl.algorithm!r}")
    for key, least in (("num_generations", 2), ("max_completion_length", 1), ("updates_per_generation", 1)):
        if rl[key] < least:
            raise ValueError(f"rl.{key} must be >= {least}, got {rl[key]}")
    for key in ("temperature", "reward_timeout_s"):
        if not rl[key] > 0:
            raise ValueError(f"rl.{key} must be > 0, got {rl[key]}")
    if rl.reward_workers is not None and rl.reward_workers < 1:
        raise ValueError(f"rl.reward_workers must be >= 1 or null (the CPUs), got {rl.reward_workers}")
    if train.global_batch_size % rl.num_generations:
        raise ValueError(
            f"train.global_batch_size={train.global_batch_size} (completions per optimizer step) is not a multiple "
            f"of rl.num_generations={rl.num_generations}: every step takes whole groups of one prompt's completions"
        )
    if train.global_batch_size % (world * train.grad_accum):
        raise ValueError(
            f"train.global_batch_size={train.global_batch_size} is not divisible by the number of processes "
            f"({world}) x train.grad_accum ({train.grad_accum})"
        )
    if train.ckpt_every % rl.updates_per_generation:
        raise ValueError(
            f"train.ckpt_every={train.ckpt_every} must be a multiple of rl.updates_per_generation="
            f"{rl.updates_per_generation}: a resumed run starts a new generation round at its checkpoint"
        )
    unsupported = {
        "train.cycles_schedule": bool(train.cycles_schedule),
        "train.bp_warmup_ratio": bool(train.bp_warmup_ratio),
        "train.compile": bool(train.compile),
        "train.deep_supervision": bool(train.get("deep_supervision")),
        "train.random_cycles": train.get("random_cycles") not in (None, "none"),
        "data.pack": bool(cfg.data.pack),
    }
    for key, set_ in unsupported.items():
        if set_:
            raise ValueError(
                f"{key} is for train.method=sft; train.method=grpo does not use it: leave it unset"
            )
    if cfg.arch.get("prefix_lm"):
        raise ValueError(
            "train.method=grpo cannot train arch.prefix_lm=true: TRL's generation and scoring pass no "
            "token_type_ids, so the prompt would be read causally, unlike in training"
        )


@dataclass
class RLRun:
    """One RL run built from its config (`build_rl_run`); `fit` trains it, `dry_run_report` describes it."""

    cfg: DictConfig
    run_dir: Path | None
    resume_dir: Path | None
    family: ModelFamily
    tokenizer: CodeTokenizer
    model: nn.Module
    problems: list[FormattedProblem]
    dataset: Dataset
    dropped: list[str] = field(default_factory=list)
    # The model config's values that TRL changes for training (it sets use_cache off and the tokenizer's pad id):
    # a step's hf/config.json keeps them as loaded, so the export decodes with its cache and trains on further.
    loaded_config: dict[str, Any] = field(default_factory=dict)

    def saved_config(self) -> DictConfig:
        """The config saved with each step: resolved, with the vocab size and tokenizer fingerprint filled in."""
        saved = cast(DictConfig, OmegaConf.create(OmegaConf.to_container(self.cfg, resolve=True)))
        saved.arch.vocab_size = int(model_config(self.cfg, self.tokenizer.vocab_size)["vocab_size"])
        saved.tokenizer.fingerprint = self.tokenizer.fingerprint
        saved.resume, saved.dry_run = None, False
        return saved

    def tasks_sha256(self) -> str:
        """A digest of the prompts dataset (task ids and prompt texts, in order): a resumed run must see the same."""
        digest = hashlib.sha256()
        for task_id, prompt in zip(self.dataset["task_id"], self.dataset["prompt"], strict=True):
            digest.update(f"{task_id}\0{prompt}\0".encode())
        return digest.hexdigest()

    def reward(self) -> ExecutionReward:
        """The execution reward over the run's problems (completions cut at the format's stop strings)."""
        rl = self.cfg.rl
        problems = [judged_uncut(problem) for problem in self.problems]
        return ExecutionReward(problems, SandboxLimits(timeout_s=rl.reward_timeout_s), rl.reward_workers)

    def trainer(self, output_dir: Path, callbacks: list[TrainerCallback]) -> GRPOTrainer:
        """TRL's GRPOTrainer over the run's model, prompts and reward, writing checkpoints into `output_dir`."""
        return GRPOTrainer(
            model=cast(Any, self.model),
            reward_funcs=cast(Any, self.reward()),
            args=grpo_config(self.cfg, output_dir),
            train_dataset=self.dataset,
            processing_class=self.tokenizer.hf,
            callbacks=callbacks,
        )

    def save_step(self, step: int, staged: Path, total_steps: int) -> Path:
        """Write step `step` of the run: the family's weights and files, and the Trainer's checkpoint `staged`
        moved in as `trainer/`, in one atomic write (`checkpoint.save_checkpoint`)."""
        assert self.run_dir is not None
        model, state = self.model, self.model.state_dict()

        def files(directory: Path) -> None:
            with _config_as_loaded(model, self.loaded_config):
                self.family.save_weights(model, state, self.tokenizer, directory)
            os.replace(staged, directory / TRAINER_DIR)

        return ckpt.save_checkpoint(
            self.run_dir,
            step,
            config=self.saved_config(),
            tokenizer=self.tokenizer,
            train_state={
                "total_steps": total_steps,
                "stop_after": self.cfg.train.get("stop_after"),
                "method": "grpo",
                "cycles": getattr(model, "cycles", None),
                "tasks": {"count": len(self.dataset), "sha256": self.tasks_sha256()},
            },
            keep_last=self.cfg.train.keep_last,
            extra_files=files,
        )

    def fit(self) -> dict[str, Any]:
        """Train with TRL to the configured steps (or `train.stop_after`), checkpointing and logging into the run
        directory."""
        cfg, run_dir = self.cfg, self.run_dir
        assert run_dir is not None
        stop_after = cfg.train.get("stop_after")
        if self.resume_dir is not None and stop_after:
            step = int(runs.read_train_state(self.resume_dir)["step"])
            if step >= stop_after:  # the Trainer would take one more step before any callback could stop it
                logger.info(
                    "%s: at step %d, train.stop_after=%d: nothing to train", run_dir, step, stop_after
                )
                return {
                    "step": step,
                    "run_dir": str(run_dir),
                    "is_main_process": PartialState().is_main_process,
                }
        staging = run_dir / STAGING_DIR
        shutil.rmtree(staging, ignore_errors=True)  # a checkpoint written before a crash and never moved in
        run_dir.mkdir(parents=True, exist_ok=True)
        config = cast(dict[str, Any], OmegaConf.to_container(self.saved_config()))
        metrics = MetricsLogger(
            cfg.logger.name,
            run_dir,
            config,
            run_name=run_dir.name,
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            mode=cfg.logger.mode,
        )
        recorder = RunMetrics(metrics)
        callbacks: list[TrainerCallback] = [StepCheckpoints(self), recorder]
        if stop_after:
            callbacks.append(StopAfter(int(stop_after)))
        trainer = self.trainer(staging, callbacks)
        resume = str(self.resume_dir / TRAINER_DIR) if self.resume_dir is not None else None
        try:
            trainer.train(resume_from_checkpoint=resume)
            metrics.log({"step": int(trainer.state.global_step), "event": "done", "method": "grpo"})
        finally:
            _close_rewards(trainer)
            metrics.close()
        if trainer.is_world_process_zero():
            shutil.rmtree(staging, ignore_errors=True)
        return {
            "step": int(trainer.state.global_step),
            "run_dir": str(run_dir),
            "is_main_process": trainer.is_world_process_zero(),
            **recorder.last,
        }

    def dry_run_report(self) -> str:
        """What the run would train, with which prompts and batches (builds TRL's trainer; writes nothing)."""
        cfg, train, rl = self.cfg, self.cfg.train, self.cfg.rl
        with tempfile.TemporaryDirectory() as scratch:
            trainer = self.trainer(Path(scratch), [])
            args = trainer.args
            _close_rewards(trainer)
        counts = parameter_counts(self.model)
        prompts = train.global_batch_size // rl.num_generations
        return "\n".join(
            [
                f"method: grpo ({rl.algorithm}: importance sampling per {IMPORTANCE_SAMPLING[rl.algorithm]}), "
                f"TRL GRPOTrainer, beta {rl.beta}, loss {rl.loss_type}",
                f"start: {self.resume_dir or train.init_from}",
                f"tokenizer: {self.tokenizer.name_or_path} (vocab {self.tokenizer.vocab_size}, "
                f"fingerprint {self.tokenizer.fingerprint[:12]})",
                f"tasks: {len(self.dataset)} from {list(rl.tasks)} in prompt format {cfg.data.prompt_format} "
                f"(few_shot {cfg.data.few_shot}); {len(self.dropped)} dropped (prompt + "
                f"{rl.max_completion_length} new tokens exceed the model's positions)",
                f"batch: {train.global_batch_size} completions per optimizer step = {prompts} prompt(s) x "
                f"{rl.num_generations}; {args.per_device_train_batch_size} per micro-batch, "
                f"{train.grad_accum} accumulation, generation every {rl.updates_per_generation} step(s); "
                f"steps: {train.max_steps or f'{train.epochs} epoch(s)'}",
                f"model: arch.name={cfg.arch.name}, parameters by component:",
                *(f"  {name:<14}{count:>14,}" for name, count in counts.items()),
            ]
        )


def _close_rewards(trainer: GRPOTrainer) -> None:
    """Stop the sandbox runners of the trainer's execution rewards."""
    for reward in trainer.reward_funcs:
        if isinstance(reward, ExecutionReward):
            reward.close()


class StepCheckpoints(TrainerCallback):
    """Makes each checkpoint the Trainer writes (`<run>/.trainer/checkpoint-N`) step N of the run directory."""

    def __init__(self, run: RLRun) -> None:
        self.run = run

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        PartialState().wait_for_everyone()  # every process has written its part (its RNG state) of the checkpoint
        if state.is_world_process_zero:
            staged = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            self.run.save_step(int(state.global_step), staged, int(state.max_steps))


class StopAfter(TrainerCallback):
    """Ends training after optimizer step `step` (`train.stop_after`) with a checkpoint there; the learning-rate
    schedule still spans train.max_steps, so a resumed run with a later stop goes on as one run would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= self.step:
            control.should_save = True
            control.should_training_stop = True


class RunMetrics(TrainerCallback):
    """Appends the Trainer's numeric logs to the run's metrics (`learning_rate` as `lr`, as the SFT loop logs it)."""

    def __init__(self, metrics: MetricsLogger) -> None:
        self.metrics = metrics
        self.last: dict[str, float] = {}

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        record = {
            ("lr" if key == "learning_rate" else key): value
            for key, value in logs.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        self.last.update(record)
        self.metrics.log({"step": int(state.global_step), **record})


TRAINING_CONFIG_KEYS = (
    "use_cache",
    "pad_token_id",
)  # model config keys TRL sets while training (`loaded_config`)


_ABSENT = object()  # a config key the model's config did not hold


def _set_config(config: dict[str, Any], values: dict[str, Any]) -> None:
    """Set `values` in a config's attribute dict; `_ABSENT` removes the key."""
    for key, value in values.items():
        if value is _ABSENT:
            config.pop(key, None)
        else:
            config[key] = value


@contextlib.contextmanager
def _config_as_loaded(model: nn.Module, values: dict[str, Any]) -> Iterator[None]:
    """The model's config with `values` (its keys as loaded, `_ABSENT` where unset) while the block runs, with
    TRL's training values again after it."""
    config = vars(model.config)
    training = {key: config.get(key, _ABSENT) for key in values}
    _set_config(config, values)
    try:
        yield
    finally:
        _set_config(config, training)


def grpo_config(cfg: DictConfig, output_dir: str | Path) -> GRPOConfig:
    """TRL's GRPOConfig for the run: `train.*` (steps, batch, optimizer, schedule, precision, cadence) and `rl.*`."""
    train, rl = cfg.train, cfg.rl
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return GRPOConfig(
        output_dir=str(output_dir),
        use_cpu=bool(train.cpu) or not torch.cuda.is_available(),
        bf16=train.mixed_precision == "bf16",
        fp16=train.mixed_precision == "fp16",
        seed=cfg.seed,
        max_steps=train.max_steps or -1,
        num_train_epochs=float(train.epochs),
        per_device_train_batch_size=train.global_batch_size // (world * train.grad_accum),
        gradient_accumulation_steps=train.grad_accum,
        steps_per_generation=train.grad_accum * rl.updates_per_generation,
        learning_rate=train.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": train.min_lr_ratio},
        warmup_steps=train.warmup_steps,
        weight_decay=train.weight_decay,
        adam_beta1=train.betas[0],
        adam_beta2=train.betas[1],
        adam_epsilon=train.eps,
        max_grad_norm=train.grad_clip,
        logging_steps=train.log_every,
        save_strategy="steps",
        save_steps=train.ckpt_every,
        report_to="none",  # the run's own metrics file and wandb run (`RunMetrics`)
        gradient_checkpointing=rl.gradient_checkpointing,
        num_generations=rl.num_generations,
        max_completion_length=rl.max_completion_length,
        temperature=rl.temperature,
        top_p=rl.top_p,
        top_k=rl.top_k,
        beta=rl.beta,
        epsilon=rl.epsilon,
        epsilon_high=rl.epsilon_high,
        importance_sampling_level=IMPORTANCE_SAMPLING[rl.algorithm],
        loss_type=rl.loss_type,
        scale_rewards=rl.scale_rewards,
    )


def prompt_text(problem: FormattedProblem, tokenizer: CodeTokenizer, fmt: str) -> str:
    """The prompt as text that `tokenizer.hf(text)` (TRL's encoding) turns into the ids evaluation gives the model:
    the tokenizer's own encoding in a format that uses it (chat), else training's `[BOS] prompt`, the BOS written
    as its token text unless the tokenizer adds it itself."""
    if FORMATS[fmt].bos == BOS_TOKENIZER:
        return problem.prompt
    expected = encode_prompt(tokenizer, problem.prompt)
    for text in (tokenizer.hf.decode([tokenizer.bos_id]) + problem.prompt, problem.prompt):
        if tokenizer.hf(text)["input_ids"] == expected:
            return text
    raise ValueError(
        f"task {problem.task_id}: the tokenizer {tokenizer.name_or_path} encodes no text as [BOS] + the prompt "
        "(the ids the model was trained on), so TRL cannot be given this prompt"
    )


def prompt_dataset(
    problems: list[FormattedProblem], tokenizer: CodeTokenizer, fmt: str, max_prompt_tokens: int | None
) -> tuple[Dataset, list[str]]:
    """(dataset with `prompt` and `task_id` columns, ids of the tasks dropped for prompts over `max_prompt_tokens`)."""
    prompts, task_ids, dropped = [], [], []
    for problem in problems:
        text = prompt_text(problem, tokenizer, fmt)
        if max_prompt_tokens is not None and len(tokenizer.hf(text)["input_ids"]) > max_prompt_tokens:
            dropped.append(problem.task_id)
            continue
        prompts.append(text)
        task_ids.append(problem.task_id)
    if not prompts:
        raise ValueError(
            f"no task leaves rl.max_completion_length new tokens in the model ({len(dropped)} prompts over "
            f"{max_prompt_tokens} tokens): lower rl.max_completion_length"
        )
    return Dataset.from_dict({"prompt": prompts, "task_id": task_ids}), dropped


def _starting_step(cfg: DictConfig, resume_dir: Path | None) -> Path | None:
    """The step the policy starts from: the resumed one, else train.init_from's (None for an outside model)."""
    if resume_dir is not None:
        return resume_dir
    source = str(cfg.train.init_from)
    if is_pretrained_source(source):
        return None
    return runs.resolve_checkpoint(source)


def _policy_and_tokenizer(
    cfg: DictConfig, family: ModelFamily, start: Path | None, resumed: bool
) -> tuple[nn.Module, CodeTokenizer]:
    """The policy and its tokenizer from the starting step (its tokenizer/, fingerprint verified), or from an outside
    transformers model; `cfg.tokenizer.name_or_path` and `cfg.arch` record what was loaded."""
    if start is None:
        source = str(cfg.train.init_from)
        if not family.can_init_from_pretrained:
            raise ValueError(
                f"train.init_from={source} is an outside transformers model; arch.name={family.name} starts from a "
                "step or run directory of this launcher"
            )
        cfg.tokenizer.name_or_path = source
        tokenizer = load_tokenizer(source)
        model = family.init_from_pretrained(source, model_config(cfg, tokenizer.vocab_size))
    else:
        step_dir = start if start.is_dir() else start.parent
        tokenizer_dir = step_dir / ckpt.TOKENIZER_DIR
        tokenizer = load_tokenizer(tokenizer_dir if tokenizer_dir.is_dir() else cfg.tokenizer.name_or_path)
        if resumed:  # the name the run recorded when it started (its own steps may be gone by now)
            saved = OmegaConf.select(OmegaConf.load(step_dir / ckpt.CONFIG_FILE), "tokenizer.name_or_path")
            cfg.tokenizer.name_or_path = saved or cfg.tokenizer.name_or_path
        elif tokenizer_dir.is_dir():
            cfg.tokenizer.name_or_path = str(tokenizer_dir.resolve())
        model = load_checkpoint(start, tokenizer, cfg).model
    if cfg.tokenizer.fingerprint:
        check_fingerprint(cfg.tokenizer.fingerprint, tokenizer, "config key tokenizer.fingerprint")
    cfg.arch = recorded_arch(family, model, cfg.arch)
    return model.train(), tokenizer


def _take_trained_format(cfg: DictConfig, start: Path | None) -> None:
    """Set `data.prompt_format` and `data.few_shot` to those the starting step was trained with (kept as configured
    for an outside model)."""
    if start is None:
        return
    trained = runs.trained_data_config(start)
    for key in ("prompt_format", "few_shot"):
        value = trained.get(key)
        if value is not None and value != cfg.data.get(key):
            logger.info(
                "data.%s=%s: the prompt format %s was trained in (configured: %s)",
                key,
                value,
                start,
                cfg.data.get(key),
            )
            cfg.data[key] = value


def build_rl_run(cfg: DictConfig, run_dir: str | Path | None = None) -> RLRun:
    """Check the config and build the policy, its tokenizer, the task set and the prompts (see the module docstring).

    `run_dir` overrides `<checkpoint_root>/<run_name>`; `resume` (auto or a step) continues the run from its step.
    """
    cfg = copy.deepcopy(cfg)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    if not cfg.resume and not cfg.train.init_from:
        raise ValueError(
            "train.method=grpo starts from a trained model: set train.init_from=<run or step directory>"
        )
    directory = None if cfg.dry_run else Path(run_dir or Path(cfg.checkpoint_root) / cfg.run_name)
    resume_dir = runs.resume_step_dir(directory, cfg.resume) if cfg.resume else None
    if resume_dir is not None and not (resume_dir / TRAINER_DIR).is_dir():
        raise ValueError(
            f"resume={cfg.resume}: {resume_dir} has no {TRAINER_DIR}/ (it was not written by a train.method=grpo "
            "run); start from its weights with train.init_from instead"
        )
    cfg = resolve_arch_from_init(cfg, resume_dir)
    validate_config(cfg)
    check_rl_settings(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    if not cfg.resume:  # after the config's errors: never train over a run directory's checkpoints
        runs.resume_step_dir(directory, None)
    family = get_family(cfg.arch.name)
    start = _starting_step(cfg, resume_dir)
    model, tokenizer = _policy_and_tokenizer(cfg, family, start, resume_dir is not None)
    _take_trained_format(cfg, start)
    data, rl = cfg.data, cfg.rl
    problems = build_task_set(
        list(rl.tasks),
        data.prompt_format,
        mbpp_path=data.path,
        split=data.train_split,
        few_shot=data.few_shot,
        pairs_path=data.pairs_path,
        tokenizer=tokenizer.hf,
        limit=data.train_limit,
    )
    max_length = family.max_length(model)
    room = max_length - rl.max_completion_length if max_length is not None else None
    dataset, dropped = prompt_dataset(problems, tokenizer, data.prompt_format, room)
    if dropped:
        logger.warning(
            "%d of %d tasks dropped: their prompts leave fewer than rl.max_completion_length=%d of the model's %s "
            "positions",
            len(dropped),
            len(problems),
            rl.max_completion_length,
            max_length,
        )
    loaded = {key: vars(model.config).get(key, _ABSENT) for key in TRAINING_CONFIG_KEYS}
    run = RLRun(cfg, directory, resume_dir, family, tokenizer, model, problems, dataset, dropped, loaded)
    if resume_dir is not None:
        saved = runs.read_train_state(resume_dir).get("tasks", {}).get("sha256")
        if saved != run.tasks_sha256():
            raise ValueError(
                f"cannot resume from {resume_dir}: the prompts changed since it was saved (tasks, prompt format, "
                "data.train_limit or rl.max_completion_length differ)"
            )
    return run


def run_rl(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any] | str:
    """Train as `cfg` says with TRL's GRPOTrainer (with `cfg.dry_run`, return the report instead)."""
    run = build_rl_run(cfg, run_dir)
    return run.dry_run_report() if cfg.dry_run else run.fit()
