"""The training loop behind scripts/train_codegen.py: the `Trainer` and `run`.

One optimizer step consumes one global batch (`train.global_batch_size` sequences over all processes and
accumulation steps). The loss is normalised by the target tokens of the whole global batch, so N processes
compute the same update as one process with the same global batch. The model comes from its family
(`hrm_codegen.families`, by `arch.name`), which also owns the training forward, any training-time state (the
HRM's ACT carry for deep supervision) and how weights are saved; the data comes from
`hrm_codegen.datasets.assembly`; checkpoints from `hrm_codegen.checkpoint`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list, gather_object, set_seed
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from hrm_codegen import checkpoint as ckpt
from hrm_codegen import runs
from hrm_codegen.datasets.assembly import build_datasets
from hrm_codegen.datasets.batching import BatchOrder, collate_batch
from hrm_codegen.families import get_family
from hrm_codegen.families.base import is_pretrained_source, params_sha256
from hrm_codegen.inference import load_checkpoint, model_config, recorded_arch
from hrm_codegen.logging_utils import MetricsLogger
from hrm_codegen.losses_codegen import IGNORE_INDEX, codegen_loss
from hrm_codegen.optim import build_optimizer, build_scheduler
from hrm_codegen.tokenization import CodeTokenizer, check_fingerprint, load_tokenizer
from hrm_codegen.train_config import check_train_settings, resolve_arch_from_init, validate_config

logger = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """Training stopped early for a reason the user must see (e.g. repeated non-finite losses)."""


@dataclass
class TrainState:
    """Progress counters saved with every checkpoint."""

    step: int = 0
    tokens_seen: int = 0
    nonfinite_streak: int = 0
    skipped_steps: int = 0


class Trainer:
    """Everything one run needs, built from the config; `fit()` trains, `dry_run()` checks the set-up."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path | None = None) -> None:
        self.cfg = cfg = copy.deepcopy(cfg)  # the run records in it what it builds (arch, tokenizer)
        self._set_up_processes()
        self.run_dir = None if cfg.dry_run else self._broadcast_run_dir(run_dir)
        self.resume_dir = runs.resume_step_dir(self.run_dir, cfg.resume) if cfg.resume else None
        # train.arch_from_init: the arch and tokenizer of the resumed step, else of the checkpoint init_from names
        self.cfg = cfg = resolve_arch_from_init(cfg, self.resume_dir)
        validate_config(cfg)
        if not cfg.resume:  # after the config's errors: never train over a run directory's checkpoints
            runs.resume_step_dir(self.run_dir, None)
        self.family = get_family(cfg.arch.name)
        self.pretrained = self._pretrained_source()
        self.tokenizer = self._load_tokenizer()
        self._build_data()
        model = self._build_model()
        self.model_config = model_config(self.cfg, self.tokenizer.vocab_size)
        self.states = [
            self.family.new_train_state(self.model_config, cfg.train) for _ in range(cfg.train.grad_accum)
        ]
        # A state carried across steps (deep supervision) needs fixed [B, S] batches.
        self.pad_to = cfg.data.seq_len if self.states[0].fixed_shape else None
        self.family.prepare_training(model, cfg.train)
        optimizer = self._build_optimizer(model)
        self.scheduler = build_scheduler(
            optimizer, cfg.train.warmup_steps, self.total_steps, cfg.train.min_lr_ratio
        )
        self._prepare(model, optimizer)
        self.state = TrainState()
        self.metrics: MetricsLogger | None = None
        if self.resume_dir is not None:
            self._restore(self.resume_dir)

    # -- set-up steps

    def _set_up_processes(self) -> None:
        """Threads, the Accelerator (processes, mixed precision), the micro-batch size and the seed."""
        cfg, train = self.cfg, self.cfg.train
        check_train_settings(cfg)  # the keys used here; validate_config checks the rest later
        if train.num_threads:
            torch.set_num_threads(train.num_threads)
        # Several processes on a machine without CUDA (`accelerate launch --multi_gpu`): data parallel on CPU (gloo).
        cpu = train.cpu or (not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)
        self.accelerator = acc = Accelerator(mixed_precision=train.mixed_precision, cpu=cpu)
        self.world = acc.num_processes
        if train.global_batch_size % (self.world * train.grad_accum):
            raise ValueError(
                f"train.global_batch_size={train.global_batch_size} is not divisible by the number of processes "
                f"({self.world}) x train.grad_accum ({train.grad_accum})"
            )
        self.micro_batch_size = train.global_batch_size // (self.world * train.grad_accum)
        deepspeed = acc.state.deepspeed_plugin
        if deepspeed is not None:  # there is no DataLoader to read the micro-batch size from
            deepspeed.deepspeed_config["train_micro_batch_size_per_gpu"] = self.micro_batch_size
        self.sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        set_seed(cfg.seed)

    def _pretrained_source(self) -> str | None:
        """train.init_from when it names an outside transformers model (directory or Hub id) the family can
        start from: the run takes its weights, architecture and tokenizer."""
        source = self.cfg.train.init_from
        if source and self.family.can_init_from_pretrained and is_pretrained_source(source):
            return str(source)
        return None

    def _load_tokenizer(self) -> CodeTokenizer:
        """The resumed step's tokenizer (and its tokenizer.name_or_path), else the pretrained source's (recorded as
        tokenizer.name_or_path), else tokenizer.name_or_path's; checked against tokenizer.fingerprint."""
        cfg = self.cfg
        if self.resume_dir is not None:
            saved = OmegaConf.select(
                OmegaConf.load(self.resume_dir / ckpt.CONFIG_FILE), "tokenizer.name_or_path"
            )
            cfg.tokenizer.name_or_path = saved or cfg.tokenizer.name_or_path
            tokenizer = load_tokenizer(self.resume_dir / ckpt.TOKENIZER_DIR)
        else:
            if self.pretrained:
                cfg.tokenizer.name_or_path = self.pretrained
            tokenizer = load_tokenizer(cfg.tokenizer.name_or_path)
        if cfg.tokenizer.fingerprint:
            check_fingerprint(cfg.tokenizer.fingerprint, tokenizer, "config key tokenizer.fingerprint")
        return tokenizer

    def _build_data(self) -> None:
        """The training and validation data, their batch order and the number of optimizer steps."""
        cfg, train = self.cfg, self.cfg.train
        self.train_data, self.eval_data = build_datasets(cfg, self.tokenizer, use_cache=not cfg.dry_run)
        unit = "packed training blocks" if cfg.data.pack else "training examples"
        self.order = BatchOrder(len(self.train_data), train.global_batch_size, cfg.seed, unit)  # type: ignore[arg-type]
        self.total_steps = train.max_steps or max(1, math.ceil(train.epochs * self.order.steps_per_epoch))

    def _build_model(self) -> nn.Module:
        """The model: the resumed step's, else train.init_from's (a pretrained model, or a checkpoint of this
        launcher loaded as inference loads it: files and tokenizer fingerprint verified), else a fresh one."""
        source = self.cfg.train.init_from
        checkpoint = self.resume_dir or (source if source and not self.pretrained else None)
        config = model_config(self.cfg, self.tokenizer.vocab_size)
        if checkpoint is not None:  # a resumed run never reads train.init_from again
            model = load_checkpoint(checkpoint, self.tokenizer, self.cfg).model.train()
        elif self.pretrained:
            model = self.family.init_from_pretrained(self.pretrained, config)
        else:
            model = self.family.build(config)
        self.cfg.arch = recorded_arch(self.family, model, self.cfg.arch)
        return model

    def _build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """AdamW over the model's parameters, with weight decay as train.* says."""
        train = self.cfg.train
        return build_optimizer(
            model,
            train.lr,
            tuple(train.betas),
            train.weight_decay,
            train.eps,
            train.decay_embeddings,
            train.decay_norms_and_biases,
        )

    def _prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Compile (train.compile) and hand the model and optimizer to the Accelerator."""
        if self.cfg.train.compile:
            self.family.compile_for_training(model)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        if self.resume_dir is not None and self.sharded:
            raise ValueError(
                f"resume={self.cfg.resume}: under FSDP/DeepSpeed the optimizer state is sharded and not "
                "checkpointed; restart from the weights with train.init_from=<step dir> instead"
            )

    def _broadcast_run_dir(self, run_dir: str | Path | None) -> Path:
        """The run directory as the main process names it (run names from the clock may differ per process)."""
        chosen = [str(run_dir or Path(self.cfg.checkpoint_root) / self.cfg.run_name)]
        if self.world > 1:
            broadcast_object_list(chosen)
        return Path(chosen[0])

    def saved_config(self) -> DictConfig:
        """The config saved with checkpoints: resolved, with the vocab size and tokenizer fingerprint filled in."""
        saved = cast(DictConfig, OmegaConf.create(OmegaConf.to_container(self.cfg, resolve=True)))
        saved.arch.vocab_size = self.model_config["vocab_size"]
        saved.tokenizer.fingerprint = self.tokenizer.fingerprint
        saved.resume, saved.dry_run = None, False
        return saved

    def _restore(self, step_dir: Path) -> None:
        """Optimizer, scheduler, counters, RNG and ACT carry from a verified step directory."""
        saved = ckpt.load_training_state(step_dir, verify=False)
        info = saved["train_state"]
        changed = {
            k: (info.get("data", {}).get(k), v)
            for k, v in self.order.state().items()
            if info.get("data", {}).get(k) != v
        }
        if changed:
            raise ValueError(f"cannot resume from {step_dir}: the data order changed (saved, now): {changed}")
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = TrainState(**{f.name: info[f.name] for f in dataclasses.fields(TrainState)})
        rank = self.accelerator.process_index
        if saved["rng"]:
            ckpt.restore_rng_state(saved["rng"][min(rank, len(saved["rng"]) - 1)])
        tensors = saved["family_state"] or {}
        for j, state in enumerate(self.states):
            prefix = f"rank{rank}.micro{j}."
            mine = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            state.load_state_dict(mine, self.accelerator.device)
        logger.info("resumed from %s at step %d", step_dir, self.state.step)

    # -- one optimizer step

    def _micro_batches(self, step: int) -> Iterator[dict[str, torch.Tensor]]:
        """This process's micro-batches of global batch `step`."""
        indices = self.order.global_batch(step)
        per_rank = len(indices) // self.world
        local = indices[self.accelerator.process_index * per_rank :][:per_rank]
        for j in range(self.cfg.train.grad_accum):
            chunk = local[j * self.micro_batch_size : (j + 1) * self.micro_batch_size]
            batch = collate_batch([self.train_data[i] for i in chunk], self.tokenizer.pad_id, self.pad_to)
            yield {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def train_step(self) -> dict[str, float] | None:
        """One optimizer step on the next global batch; returns its metrics, or None when it was skipped."""
        acc, train = self.accelerator, self.cfg.train
        self.model.train()
        batches = list(self._micro_batches(self.state.step))
        unwrapped = acc.unwrap_model(self.model)
        step_info = self.family.before_step(unwrapped, self.state.step, self.total_steps, self.cfg) or {}
        for batch, state in zip(batches, self.states, strict=True):
            state.prepare(unwrapped, batch)
        local_tokens = sum(
            (s.targets(b) != IGNORE_INDEX).sum() for b, s in zip(batches, self.states, strict=True)
        )
        total_tokens = max(float(self._sum(torch.as_tensor(local_tokens, dtype=torch.float64))), 1.0)
        zero = torch.zeros((), dtype=torch.float64, device=acc.device)
        stats = torch.zeros(6, dtype=torch.float64, device=acc.device)
        q_terms, extra = False, {}  # extra: the families' per-token metric sums (the HRM's segment losses)
        for j, batch in enumerate(batches):
            with contextlib.nullcontext() if j == len(batches) - 1 else acc.no_sync(self.model):
                out = self.family.forward_loss(self.model, batch, self.states[j], train.loss_type)
                loss = out.objective(total_tokens, train.global_batch_size)
                acc.backward(loss * self.world)  # DDP averages gradients over the processes
            parts = (
                loss.detach(),
                out.lm_sum.detach(),
                out.correct_tokens,
                out.q_halt_sum,
                out.q_continue_sum,
                batch["attention_mask"].sum(),
            )
            stats += torch.stack([zero if p is None else p.double() for p in parts])
            q_terms = out.q_halt_sum is not None
            extra.update({k: extra.get(k, zero) + v.detach().double() for k, v in out.metric_sums.items()})
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), train.grad_clip or math.inf)
        stats = self._sum(stats)
        self.state.step += 1
        self.state.tokens_seen += int(stats[5])
        if self.state.step % train.finite_check_every == 0:
            # Under fp16 the loss scaler handles overflowing gradients itself (skips the update, lowers the scale).
            grad_ok = grad_norm is None or bool(torch.isfinite(grad_norm)) or train.mixed_precision == "fp16"
            if not (bool(torch.isfinite(stats[0])) and grad_ok):
                self.optimizer.zero_grad(set_to_none=True)
                self._nonfinite("gradient" if bool(torch.isfinite(stats[0])) else "loss")
                return None
        self.state.nonfinite_streak = 0
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics = {
            "loss": float(stats[0]),
            "lm_loss": float(stats[1]) / total_tokens,
            "token_acc": float(stats[2]) / total_tokens,
            "grad_norm": float("nan") if grad_norm is None else float(grad_norm),
            "lr": self.scheduler.get_last_lr()[0],
            "tokens": float(stats[5]),
        }
        if q_terms:
            metrics["q_halt_loss"] = float(stats[3]) / train.global_batch_size
            metrics["q_continue_loss"] = float(stats[4]) / train.global_batch_size
        if extra:  # per token over the global batch (every process adds the same keys in the same order)
            summed = (self._sum(torch.stack(list(extra.values()))) / total_tokens).tolist()
            metrics.update(zip(extra, summed, strict=True))
        return {**metrics, **step_info}  # and what before_step returned (the HRM's random cycles)

    def _sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over processes."""
        return cast(torch.Tensor, self.accelerator.reduce(tensor.to(self.accelerator.device), "sum"))

    def _nonfinite(self, what: str) -> None:
        """Count a skipped step; stop the run after train.max_nonfinite_steps in a row."""
        self.state.nonfinite_streak += 1
        self.state.skipped_steps += 1
        step, streak, limit = self.state.step, self.state.nonfinite_streak, self.cfg.train.max_nonfinite_steps
        logger.warning(
            "step %d: non-finite %s; skipped the update (%d in a row, limit %d)", step, what, streak, limit
        )
        self._log({"step": step, "event": "nonfinite", "what": what, "streak": streak})
        if streak >= limit:
            latest = runs.latest_step_dir(self.run_dir) if self.run_dir is not None else None
            kept = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written"
            raise TrainingStopped(
                f"stopped at step {step}: {limit} steps in a row had a non-finite {what} "
                f"(train.max_nonfinite_steps={limit}); {kept}. Lower train.lr or check the data."
            )

    # -- evaluation, checkpoints, logging

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Token-mean validation loss and accuracy over the eval split (sharded over processes)."""
        acc, train = self.accelerator, self.cfg.train
        model = acc.unwrap_model(self.model)
        model.eval()
        indices = list(range(acc.process_index, len(self.eval_data), self.world))  # type: ignore[arg-type]
        size = self.micro_batch_size
        chunks = [indices[i : i + size] for i in range(0, len(indices), size)][: train.eval_max_batches]
        totals = torch.zeros(3, dtype=torch.float64, device=acc.device)
        for chunk in chunks:
            batch = collate_batch([self.eval_data[i] for i in chunk], self.tokenizer.pad_id)
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            with acc.autocast():
                logits = self.family.lm_logits(model, batch)
            out = codegen_loss({"logits": logits}, batch["labels"], train.loss_type)
            totals += torch.stack([out.lm_sum.double(), out.num_tokens.double(), out.correct_tokens.double()])
        totals = self._sum(totals)
        tokens = max(float(totals[1]), 1.0)
        return {"val_loss": float(totals[0]) / tokens, "val_token_acc": float(totals[2]) / tokens}

    def save(self) -> None:
        """Checkpoint the current step (every process takes part; the main process writes)."""
        acc = self.accelerator
        rng = [ckpt.capture_rng_state()]
        carry: dict[str, torch.Tensor] = {}
        for j, state in enumerate(self.states):
            prefix = f"rank{acc.process_index}.micro{j}."
            carry.update({prefix + k: v for k, v in state.state_dict().items()})
        if self.world > 1:
            rng = gather_object(rng)
            carry = {k: v for part in gather_object([carry]) for k, v in part.items()}
        model_state = cast(dict[str, torch.Tensor], acc.get_state_dict(self.model))
        if acc.is_main_process:
            assert self.run_dir is not None
            ckpt.save_checkpoint(
                self.run_dir,
                self.state.step,
                config=self.saved_config(),
                tokenizer=self.tokenizer,
                optimizer_state=None if self.sharded else self.optimizer.state_dict(),
                scheduler_state=self.scheduler.state_dict(),
                rng_state=rng,
                train_state={
                    **dataclasses.asdict(self.state),
                    "total_steps": self.total_steps,
                    "stop_after": self.cfg.train.get("stop_after"),
                    "cycles": getattr(acc.unwrap_model(self.model), "cycles", None),  # HRM's in force
                    "data": self.order.state(),
                },
                family_state=carry or None,
                keep_last=self.cfg.train.keep_last,
                extra_files=self._exporter(model_state),
            )
        acc.wait_for_everyone()

    def _exporter(self, model_state: dict[str, torch.Tensor]) -> Callable[[Path], None]:
        """The checkpoint's hook writing the weights as the family stores them (inside the atomic write)."""
        model = self.accelerator.unwrap_model(self.model)
        return lambda step_dir: self.family.save_weights(model, model_state, self.tokenizer, step_dir)

    def replica_hashes(self) -> list[str]:
        """Sha256 of the parameters on every process (all equal while data parallelism is in sync)."""
        digest = params_sha256(self.accelerator.unwrap_model(self.model))
        return gather_object([digest]) if self.world > 1 else [digest]

    def _log(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.log(record)

    # -- entry points

    def fit(self) -> dict[str, Any]:
        """Train to `total_steps` or `train.stop_after`, validating, logging and checkpointing as configured."""
        acc, cfg, train = self.accelerator, self.cfg, self.cfg.train
        assert self.run_dir is not None
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            config = cast(dict[str, Any], OmegaConf.to_container(self.saved_config()))
            self.metrics = MetricsLogger(
                cfg.logger.name,
                self.run_dir,
                config,
                run_name=self.run_dir.name,
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                mode=cfg.logger.mode,
            )
        end = min(self.total_steps, train.get("stop_after") or self.total_steps)  # the step this run ends at
        bar = tqdm(
            total=end,
            initial=self.state.step,
            desc="train",
            unit="step",
            disable=not acc.is_main_process,
            dynamic_ncols=True,
        )
        summary: dict[str, Any] = {}
        self.family.before_step(acc.unwrap_model(self.model), self.state.step, self.total_steps, cfg)
        if train.eval_every and self.state.step == 0:
            summary.update(self.evaluate())
            self._log({"step": 0, **summary})
        window_tokens, window_start = 0.0, time.perf_counter()
        try:
            while self.state.step < end:
                metrics = self.train_step()
                step, final = self.state.step, self.state.step == end
                bar.update(1)
                if metrics is not None:
                    window_tokens += metrics.pop("tokens")
                if metrics is not None and (step % train.log_every == 0 or final):
                    metrics["tokens_per_s"] = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                    window_tokens, window_start = 0.0, time.perf_counter()
                    self._log({"step": step, **metrics, "tokens_seen": self.state.tokens_seen})
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
                    summary.update(metrics)
                if train.eval_every and (step % train.eval_every == 0 or final):
                    summary.update(self.evaluate())
                    self._log({"step": step, **{k: summary[k] for k in ("val_loss", "val_token_acc")}})
                # No periodic checkpoint in the middle of a non-finite streak; the final one is always written.
                if final or (step % train.ckpt_every == 0 and self.state.nonfinite_streak == 0):
                    self.save()
        finally:
            bar.close()
        hashes = self.replica_hashes()
        self._log(
            {
                "step": self.state.step,
                "event": "done",
                "replica_param_sha256": hashes,
                "skipped_steps": self.state.skipped_steps,
            }
        )
        if self.metrics is not None:
            self.metrics.close()
        if len(set(hashes)) != 1:
            raise TrainingStopped(f"data-parallel replicas diverged: parameter hashes {hashes}")
        return {
            "step": self.state.step,
            "run_dir": str(self.run_dir),
            "is_main_process": acc.is_main_process,
            **summary,
        }

    def dry_run(self) -> str:
        """One forward and backward on one real batch; a report of sizes and parameter counts (writes nothing)."""
        from hrm_codegen.dry_run import dry_run_report

        return dry_run_report(self)


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any] | str:
    """Train as `cfg` says (with `cfg.dry_run`, return the dry-run report instead); `run_dir` overrides the name."""
    if cfg.train.get("method", "sft") == "grpo":  # learning from execution with TRL: hrm_codegen/rl.py
        from hrm_codegen.rl import run_rl

        return run_rl(cfg, run_dir)
    trainer = Trainer(cfg, run_dir)
    return trainer.dry_run() if cfg.dry_run else trainer.fit()
