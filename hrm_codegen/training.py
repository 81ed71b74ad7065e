"""The training run behind scripts/train_codegen.py: model factory, data order, and the loop.

One optimizer step consumes one global batch (`train.global_batch_size` sequences over all processes and
accumulation steps). The loss is normalised by the target tokens of the whole global batch, so N processes
compute the same update as one process with the same global batch. With `halt_max_steps > 1` the HRM trains
with deep supervision as upstream does: the ACT carry persists across optimizer steps, each call of
`model(carry, batch)` is one segment with its own loss and update, and halted sequences take the next batch.
Model families are registered in `ARCHS` (`arch.name`): `hrm`, and `transformer`, the Llama baseline, which
trains as a plain LM and also writes each checkpoint in the save_pretrained layout to <step dir>/hf/.
Data (`data.name`): `mbpp`, or `corpus`, the seq_len blocks of a corpus built by scripts/build_corpus.py.
With `data.pack` the MBPP training split is packed into seq_len blocks whose examples never attend to each
other (`ArchSpec.check_packing` refuses a model that cannot keep them apart); validation stays unpacked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list, gather_object, set_seed
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm
from transformers import GenerationConfig, LlamaForCausalLM

from hrm_codegen import checkpoint as ckpt
from hrm_codegen.datasets.cache import file_sha256
from hrm_codegen.datasets.corpus import CorpusDataset
from hrm_codegen.datasets.mbpp import MBPPDataset, PackedDataset, collate_batch, load_mbpp
from hrm_codegen.logging_utils import MetricsLogger
from hrm_codegen.losses_codegen import IGNORE_INDEX, LOSS_TYPES, LossOutput, codegen_loss
from hrm_codegen.models.baseline import build_baseline, check_baseline_packing
from hrm_codegen.models.hrm_act_v1 import HierarchicalReasoningModel_ACTV1, HRMConfig
from hrm_codegen.optim import build_optimizer, build_scheduler
from hrm_codegen.tokenization import CodeTokenizer, check_fingerprint, load_tokenizer
from hrm_codegen.train_config import MIXED_PRECISION, CodegenConfig

logger = logging.getLogger(__name__)
Carry = Any  # the model's ACT carry (HierarchicalReasoningModel_ACTV1Carry), or None for plain LMs

# ----------------------------------------------------------------------------------------------- model factory


HF_DIR = "hf"  # the save_pretrained copy of a transformer checkpoint: <step dir>/hf/
Exporter = Callable[[nn.Module, Mapping[str, torch.Tensor], CodeTokenizer, Path], None]


@dataclass(frozen=True)
class ArchSpec:
    """How to build one model family from its config mapping and how to run it."""

    build: Callable[
        [dict[str, Any]], nn.Module
    ]  # the model from its config (arch keys minus name, vocab filled)
    lm_logits: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]  # plain LM logits [B, S, V]
    act_carry: bool  # the training forward is `model(carry, batch)` with the HRM's ACT carry
    check: Callable[[dict[str, Any]], Any]  # raises ValueError naming a bad key or value
    # Raises ValueError (one line) when the model cannot train on packed blocks (data.pack=true).
    check_packing: Callable[[dict[str, Any]], Any]
    # Writes (model, its full state dict, tokenizer) to a directory: <step dir>/hf/ at each checkpoint.
    export: Exporter | None = None


def _hrm_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Plain LM logits of the HRM: halt_max_steps fresh segments."""
    return cast(HierarchicalReasoningModel_ACTV1, model).lm_forward(
        batch["input_ids"], batch.get("attention_mask")
    )


def _check_hrm_packing(config: dict[str, Any]) -> None:
    """The HRM keeps packed examples apart by `segment_ids`; its Q-head cannot (see the message)."""
    if config.get("enable_q_head"):
        raise ValueError(
            "data.pack=true cannot train arch.name=hrm with arch.enable_q_head=true: the Q-head halts a whole "
            "sequence from its last real token, which in a packed block sees only the last example; "
            "set data.pack=false or arch.enable_q_head=false"
        )


def _transformer_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of a transformers causal LM (right padding is masked by the attention mask).

    A packed batch (with `segment_ids`) passes its position_ids, which restart per example, no attention mask
    and no cache: transformers then builds a block-diagonal causal mask (padding tokens, all at position 0,
    each see only themselves and carry no labels). `check_baseline_packing` refuses set-ups where it would not.
    """
    if "segment_ids" in batch:
        return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits


def _check_transformer(config: dict[str, Any]) -> None:
    """Build the baseline on the meta device: unknown keys and unsupported settings raise ValueError."""
    with torch.device("meta"):
        build_baseline(config)


def _export_transformer(
    model: nn.Module, state: Mapping[str, torch.Tensor], tokenizer: CodeTokenizer, directory: Path
) -> None:
    """Write the baseline in the save_pretrained layout (config.json, weights, generation config, tokenizer).

    The weights come from `state` (the full state dict, also under FSDP/DeepSpeed). The special-token ids go
    into the generation config and config.json, except pad_token_id in config.json, which would make the
    embedding of GPT-2's EOS (= its pad token) untrainable when the export is fine-tuned further.
    """
    llama = cast(LlamaForCausalLM, model)
    llama.config.bos_token_id, llama.config.eos_token_id = tokenizer.bos_id, tokenizer.eos_id
    llama.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id
    )
    llama.save_pretrained(directory, state_dict=dict(state))
    tokenizer.save(directory)


ARCHS: dict[str, ArchSpec] = {
    "hrm": ArchSpec(
        HierarchicalReasoningModel_ACTV1,
        _hrm_logits,
        act_carry=True,
        check=HRMConfig.from_dict,
        check_packing=_check_hrm_packing,
    ),
    "transformer": ArchSpec(
        build_baseline,
        _transformer_logits,
        act_carry=False,
        check=_check_transformer,
        check_packing=check_baseline_packing,
        export=_export_transformer,
    ),
}


def arch_spec(cfg: DictConfig) -> ArchSpec:
    """The ArchSpec named by `cfg.arch.name`."""
    if cfg.arch.name not in ARCHS:
        raise ValueError(
            f"arch.name={cfg.arch.name!r} is not a known model family; expected one of {sorted(ARCHS)}"
        )
    return ARCHS[cfg.arch.name]


def model_config(cfg: DictConfig, vocab_size: int) -> dict[str, Any]:
    """The model's config mapping: `cfg.arch` without `name`, vocab_size from the tokenizer when null."""
    arch = cast(dict[str, Any], OmegaConf.to_container(cfg.arch, resolve=True))
    arch.pop("name", None)
    configured = arch.get("vocab_size")
    if configured is not None and configured < vocab_size:
        raise ValueError(f"arch.vocab_size={configured} is smaller than the tokenizer's {vocab_size} tokens")
    arch["vocab_size"] = configured or vocab_size
    return arch


def build_model(cfg: DictConfig, vocab_size: int) -> nn.Module:
    """The model of `cfg.arch` (keyed on `cfg.arch.name`) for a tokenizer of `vocab_size` tokens."""
    return arch_spec(cfg).build(model_config(cfg, vocab_size))


def forward_loss(
    spec: ArchSpec, model: nn.Module, batch: dict[str, torch.Tensor], carry: Carry, loss_type: str
) -> tuple[LossOutput, Carry]:
    """One training forward and its loss terms; with an ACT carry the loss is on the carry's current data."""
    if not spec.act_carry:
        return codegen_loss({"logits": spec.lm_logits(model, batch)}, batch["labels"], loss_type), None
    new_carry, outputs = model(carry, batch)
    return codegen_loss(outputs, new_carry.current_data["labels"], loss_type), new_carry


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters by top-level component (wrapper prefixes `inner.` / `model.` skipped), plus `total`."""
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        parts = name.split(".")
        component = parts[1] if parts[0] in ("inner", "model") and len(parts) > 2 else parts[0]
        counts[component] = counts.get(component, 0) + param.numel()
    counts["total"] = sum(counts.values())
    return counts


def validate_config(cfg: DictConfig) -> None:
    """Check the composed config against the schemas and the model family before any work (ValueError)."""
    try:
        plain = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
        plain.pop("arch", None)
        OmegaConf.merge(OmegaConf.structured(CodegenConfig), plain)  # rejects keys added with `+key=...`
    except OmegaConfBaseException as err:
        raise ValueError(f"config: {str(err).splitlines()[0]} (key {err.full_key})") from err
    # Packing first: arch.check builds the model, which fails on flash_attn without the package.
    if cfg.data.pack:
        if cfg.data.name != "mbpp":
            raise ValueError(
                f"data.pack=true is for data=mbpp; data={cfg.data.name} already trains on dense seq_len blocks "
                "of corpus tokens: leave data.pack=false"
            )
        arch_spec(cfg).check_packing(model_config(cfg, vocab_size=1))
    arch_spec(cfg).check(model_config(cfg, vocab_size=1))
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
    if len(train.betas) != 2:
        raise ValueError(f"train.betas must be two numbers, got {list(train.betas)}")


# ------------------------------------------------------------------------------------------------------- data


class BatchOrder:
    """Deterministic data order: epoch e is a permutation seeded by (seed, e), cut into global batches (drop_last).

    The position in the data is the step count alone, so resuming needs no sampler state.
    """

    def __init__(
        self, num_examples: int, global_batch_size: int, seed: int, unit: str = "training examples"
    ) -> None:
        self.num_examples = num_examples
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.steps_per_epoch = num_examples // global_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"train.global_batch_size={global_batch_size} is larger than the {num_examples} {unit}"
            )
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def state(self) -> dict[str, int]:
        """What must match for a resume to continue the same order."""
        return {
            "num_examples": self.num_examples,
            "global_batch_size": self.global_batch_size,
            "seed": self.seed,
        }

    def global_batch(self, step: int) -> list[int]:
        """Example indices of global batch number `step` (0-based)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.num_examples, generator=generator)
            self._epoch = epoch
        start = index * self.global_batch_size
        return self._perm[start : start + self.global_batch_size].tolist()


def build_datasets(
    cfg: DictConfig, tokenizer: CodeTokenizer, use_cache: bool = True
) -> tuple[Dataset, Dataset]:
    """(train, validation) datasets of `cfg.data`; `use_cache=False` ignores `data.cache_dir` (writes nothing).

    data=mbpp: the MBPP splits `data.train_split` and `data.eval_split`; with `data.pack` the training split
    (after `data.train_limit`) is packed into seq_len blocks, and validation stays one example per sequence so
    its loss compares with unpacked runs. data=corpus: the seq_len blocks of the corpus in `data.corpus_dir`,
    its last `data.eval_blocks` blocks held out for validation.
    """
    data = cfg.data
    if data.name == "mbpp":
        rows = load_mbpp(data.path)
        cache_dir = data.cache_dir if use_cache else None
        data_hash = file_sha256(data.path) if cache_dir and Path(data.path).is_file() else None
        splits: list[Dataset] = [
            MBPPDataset(rows, split, tokenizer, data.seq_len, data.few_shot, cache_dir, data_hash)
            for split in (data.train_split, data.eval_split)
        ]
    elif data.name == "corpus":
        splits = corpus_splits(data.corpus_dir, data.seq_len, data.eval_blocks, tokenizer)
    else:
        raise ValueError(f"data.name={data.name!r} is not a known data source; expected mbpp or corpus")
    limited = [
        Subset(dataset, range(min(limit, len(dataset)))) if limit is not None else dataset  # type: ignore[arg-type]
        for dataset, limit in zip(splits, (data.train_limit, data.eval_limit), strict=True)
    ]
    if data.pack:
        return PackedDataset(limited[0], data.seq_len, tokenizer.pad_id), limited[1]
    return limited[0], limited[1]


def corpus_splits(
    corpus_dir: str | None, seq_len: int, eval_blocks: int, tokenizer: CodeTokenizer
) -> list[Dataset]:
    """[train, validation] blocks of a corpus: validation is the last `eval_blocks` blocks."""
    if not corpus_dir:
        raise ValueError(
            "data.name=corpus needs data.corpus_dir: a directory written by scripts/build_corpus.py"
        )
    corpus = CorpusDataset(corpus_dir, seq_len, tokenizer)
    if not 0 < eval_blocks < len(corpus):
        raise ValueError(
            f"data.eval_blocks={eval_blocks}: the corpus {corpus_dir} has {len(corpus)} blocks of {seq_len} tokens; "
            f"hold out between 1 and {len(corpus) - 1} of them for validation"
        )
    split = len(corpus) - eval_blocks
    return [Subset(corpus, range(split)), Subset(corpus, range(split, len(corpus)))]


# ---------------------------------------------------------------------------------------------------- the run


class TrainingStopped(RuntimeError):
    """Training stopped early for a reason the user must see (e.g. repeated non-finite losses)."""


@dataclass
class TrainState:
    """Progress counters saved with every checkpoint."""

    step: int = 0
    tokens_seen: int = 0
    nonfinite_streak: int = 0
    skipped_steps: int = 0


def _params_sha256(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Trainer:
    """Everything one run needs, built from the config; `fit()` trains, `dry_run()` checks the set-up."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path | None = None) -> None:
        validate_config(cfg)
        self.cfg, train = cfg, cfg.train
        if train.num_threads:
            torch.set_num_threads(train.num_threads)
        self.spec = arch_spec(cfg)
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
        set_seed(cfg.seed)

        self.tokenizer = load_tokenizer(cfg.tokenizer.name_or_path)
        if cfg.tokenizer.fingerprint:
            check_fingerprint(cfg.tokenizer.fingerprint, self.tokenizer, "config key tokenizer.fingerprint")
        self.train_data, self.eval_data = build_datasets(cfg, self.tokenizer, use_cache=not cfg.dry_run)
        unit = "packed training blocks" if cfg.data.pack else "training examples"
        self.order = BatchOrder(len(self.train_data), train.global_batch_size, cfg.seed, unit)  # type: ignore[arg-type]
        self.total_steps = train.max_steps or max(1, math.ceil(train.epochs * self.order.steps_per_epoch))

        self.model_config = model_config(cfg, self.tokenizer.vocab_size)
        self.persist_carry = self.spec.act_carry and self.model_config.get("halt_max_steps", 1) > 1
        self.pad_to = cfg.data.seq_len if self.persist_carry else None  # deep supervision needs fixed [B, S]
        model = self.spec.build(self.model_config)
        self.run_dir = None if cfg.dry_run else self._broadcast_run_dir(run_dir)
        resume_dir = self._find_resume_dir()
        init_from = resume_dir or (ckpt.resolve_checkpoint(train.init_from) if train.init_from else None)
        if init_from is not None:
            if init_from.is_dir():
                meta = ckpt.read_meta(init_from)
                check_fingerprint(
                    meta["tokenizer_fingerprint"], self.tokenizer, str(init_from / ckpt.META_FILE)
                )
            ckpt.load_model_weights(model, init_from)
        optimizer = build_optimizer(
            model,
            train.lr,
            tuple(train.betas),
            train.weight_decay,
            train.eps,
            train.decay_embeddings,
            train.decay_norms_and_biases,
        )
        self.scheduler = build_scheduler(optimizer, train.warmup_steps, self.total_steps, train.min_lr_ratio)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.state = TrainState()
        self.carries: list[Carry] = [None] * train.grad_accum
        self.metrics: MetricsLogger | None = None
        self.sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        if resume_dir is not None and self.sharded:
            raise ValueError(
                f"resume={cfg.resume}: under FSDP/DeepSpeed the optimizer state is sharded and not checkpointed; "
                "restart from the weights with train.init_from=<step dir> instead"
            )
        if resume_dir is not None:
            self._restore(resume_dir)

    # -- set-up helpers

    def _broadcast_run_dir(self, run_dir: str | Path | None) -> Path:
        """The run directory as the main process names it (run names from the clock may differ per process)."""
        chosen = [str(run_dir or Path(self.cfg.checkpoint_root) / self.cfg.run_name)]
        if self.world > 1:
            broadcast_object_list(chosen)
        return Path(chosen[0])

    def _find_resume_dir(self) -> Path | None:
        """The step directory to resume from: none, the run's `latest` (resume=auto), or a given one."""
        resume = self.cfg.resume
        if self.run_dir is None:
            return None
        latest = ckpt.latest_step_dir(self.run_dir)
        if resume is None and latest is not None:
            raise ValueError(
                f"run directory {self.run_dir} already holds checkpoints (latest {latest.name}): pass resume=auto "
                "to continue it, or choose another run_name"
            )
        if resume is None or resume == "auto":
            return latest
        target = ckpt.resolve_checkpoint(resume)
        if not target.is_dir():
            raise ValueError(
                f"resume={resume}: resuming needs a step directory; use train.init_from for weights"
            )
        return target

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
        if self.persist_carry and saved["act_carry"]:
            device = self.accelerator.device
            self.carries = [
                ckpt.carry_from_tensors(saved["act_carry"], f"rank{rank}.micro{j}.", device)
                for j in range(len(self.carries))
            ]
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

    def _carry_for(self, batch: dict[str, torch.Tensor], carry: Carry) -> Carry:
        """The carry the next forward starts from: the persisted one, or a fresh all-halted one."""
        if not self.spec.act_carry:
            return None
        if self.persist_carry and carry is not None:
            return carry
        return cast(
            HierarchicalReasoningModel_ACTV1, self.accelerator.unwrap_model(self.model)
        ).initial_carry(batch)

    @staticmethod
    def _targets(batch: dict[str, torch.Tensor], carry: Carry) -> torch.Tensor:
        """The labels the next forward trains on (with a carry, unhalted sequences keep theirs)."""
        if carry is None:
            return batch["labels"]
        return torch.where(carry.halted[:, None], batch["labels"], carry.current_data["labels"])

    def train_step(self) -> dict[str, float] | None:
        """One optimizer step on the next global batch; returns its metrics, or None when it was skipped."""
        acc, train = self.accelerator, self.cfg.train
        self.model.train()
        batches = list(self._micro_batches(self.state.step))
        carries = [self._carry_for(b, c) for b, c in zip(batches, self.carries, strict=True)]
        local_tokens = sum(
            (self._targets(b, c) != IGNORE_INDEX).sum() for b, c in zip(batches, carries, strict=True)
        )
        total_tokens = max(float(self._sum(torch.as_tensor(local_tokens, dtype=torch.float64))), 1.0)
        zero = torch.zeros((), dtype=torch.float64, device=acc.device)
        stats = torch.zeros(6, dtype=torch.float64, device=acc.device)
        for j, batch in enumerate(batches):
            with contextlib.nullcontext() if j == len(batches) - 1 else acc.no_sync(self.model):
                out, carries[j] = forward_loss(self.spec, self.model, batch, carries[j], train.loss_type)
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
        if self.persist_carry:
            self.carries = carries
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
        if self.spec.act_carry and self.model_config.get("enable_q_head"):
            metrics["q_halt_loss"] = float(stats[3]) / train.global_batch_size
            metrics["q_continue_loss"] = float(stats[4]) / train.global_batch_size
        return metrics

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
            latest = ckpt.latest_step_dir(self.run_dir) if self.run_dir is not None else None
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
                logits = self.spec.lm_logits(model, batch)
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
        for j, c in enumerate(self.carries if self.persist_carry else []):
            if c is not None:
                carry.update(ckpt.carry_tensors(c, f"rank{acc.process_index}.micro{j}."))
        if self.world > 1:
            rng = gather_object(rng)
            carry = {k: v for part in gather_object([carry]) for k, v in part.items()}
        model_state = cast(dict[str, torch.Tensor], acc.get_state_dict(self.model))
        if acc.is_main_process:
            assert self.run_dir is not None
            ckpt.save_checkpoint(
                self.run_dir,
                self.state.step,
                model_state=model_state,
                config=self.saved_config(),
                tokenizer=self.tokenizer,
                optimizer_state=None if self.sharded else self.optimizer.state_dict(),
                scheduler_state=self.scheduler.state_dict(),
                rng_state=rng,
                train_state={**dataclasses.asdict(self.state), "data": self.order.state()},
                act_carry=carry or None,
                keep_last=self.cfg.train.keep_last,
                extra_files=self._exporter(model_state),
            )
        acc.wait_for_everyone()

    def _exporter(self, model_state: dict[str, torch.Tensor]) -> Callable[[Path], None] | None:
        """The checkpoint's extra-files hook writing the arch's inference layout to <step dir>/hf/, if it has one.

        It runs inside the checkpoint's temporary directory, so hf/ is renamed into place with the step and
        listed in its meta.json.
        """
        export = self.spec.export
        if export is None:
            return None
        model = self.accelerator.unwrap_model(self.model)
        return lambda step_dir: export(model, model_state, self.tokenizer, step_dir / HF_DIR)

    def replica_hashes(self) -> list[str]:
        """Sha256 of the parameters on every process (all equal while data parallelism is in sync)."""
        digest = _params_sha256(self.accelerator.unwrap_model(self.model))
        return gather_object([digest]) if self.world > 1 else [digest]

    def _log(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.log(record)

    # -- entry points

    def fit(self) -> dict[str, Any]:
        """Train to `total_steps`, validating, logging and checkpointing on the configured cadence."""
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
        bar = tqdm(
            total=self.total_steps,
            initial=self.state.step,
            desc="train",
            unit="step",
            disable=not acc.is_main_process,
            dynamic_ncols=True,
        )
        summary: dict[str, Any] = {}
        if train.eval_every and self.state.step == 0:
            summary.update(self.evaluate())
            self._log({"step": 0, **summary})
        window_tokens, window_start = 0.0, time.perf_counter()
        try:
            while self.state.step < self.total_steps:
                metrics = self.train_step()
                step, final = self.state.step, self.state.step == self.total_steps
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
                    self._log(
                        {
                            "step": step,
                            "val_loss": summary["val_loss"],
                            "val_token_acc": summary["val_token_acc"],
                        }
                    )
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
        batch = next(self._micro_batches(0))
        model = self.accelerator.unwrap_model(self.model)
        self.model.train()
        out, _ = forward_loss(
            self.spec, self.model, batch, self._carry_for(batch, None), self.cfg.train.loss_type
        )
        loss = out.objective(max(int(out.num_tokens), 1), batch["input_ids"].shape[0])
        self.accelerator.backward(loss)
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
        self.optimizer.zero_grad(set_to_none=True)
        counts = parameter_counts(model)
        decayed, undecayed = (sum(p.numel() for p in g["params"]) for g in self.optimizer.param_groups)
        cfg, train = self.cfg, self.cfg.train
        return "\n".join(
            [
                f"tokenizer: {self.tokenizer.name_or_path} (vocab {self.tokenizer.vocab_size}, "
                f"fingerprint {self.tokenizer.fingerprint[:12]})",
                f"data: {cfg.data.name}, {self._train_size()} / {len(self.eval_data)} "  # type: ignore[arg-type]
                f"{cfg.data.eval_split} examples of at most {cfg.data.seq_len} tokens; {self.total_steps} steps of "
                f"{train.global_batch_size} sequences ({self.world} process(es) x {train.grad_accum} accumulation x "
                f"{self.micro_batch_size})",
                f"model: arch.name={cfg.arch.name}, parameters by component:",
                *(f"  {name:<14}{count:>14,}" for name, count in counts.items()),
                self._q_head_line(counts["total"]),
                f"optimizer: AdamW, {decayed:,} parameters with weight decay {train.weight_decay}, {undecayed:,} without",
                f"one batch {list(batch['input_ids'].shape)}: loss {loss.item():.4f}, gradient norm {float(grad_norm):.4f}",
            ]
        )

    def _train_size(self) -> str:
        """The size of the training data for the dry-run report: examples, or packed blocks and their examples."""
        data = self.train_data
        if isinstance(data, PackedDataset):
            return f"{len(data)} packed train blocks ({data.num_examples} examples)"
        return f"{len(data)} train"  # type: ignore[arg-type]

    def _q_head_line(self, total: int) -> str:
        """What the enable_q_head flag adds or removes (the model rebuilt on the meta device with it flipped)."""
        if not self.spec.act_carry or "enable_q_head" not in self.model_config:
            return f"  (arch.name={self.cfg.arch.name} has no Q-head flag)"
        flag = bool(self.model_config["enable_q_head"])
        with torch.device("meta"):
            other = sum(
                p.numel()
                for p in self.spec.build({**self.model_config, "enable_q_head": not flag}).parameters()
            )
        if flag:
            return (
                f"  enable_q_head=true: the Q-head adds {total - other:,} parameters ({other:,} without it)"
            )
        return f"  enable_q_head=false: no Q-head; turning it on adds {other - total:,} parameters"


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any] | str:
    """Train as `cfg` says (with `cfg.dry_run`, return the dry-run report instead); `run_dir` overrides the name."""
    trainer = Trainer(cfg, run_dir)
    return trainer.dry_run() if cfg.dry_run else trainer.fit()
