"""The HRM family (`arch.name=hrm`): our port of Sapient's HRM, with its ACT carry as the family's train state."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from hrm_codegen.families.base import (
    HF_DIR,
    Generated,
    GenerationRequest,
    ModelFamily,
    TrainState,
    decode_request,
    register_family,
    save_hf,
    step_weights_file,
)
from hrm_codegen.flops import hrm_flops_per_token
from hrm_codegen.losses_codegen import IGNORE_INDEX, LossOutput, codegen_loss, token_cross_entropy
from hrm_codegen.models.configuration_hrm import HRM_DEFAULTS
from hrm_codegen.models.hrm_act_v1 import (
    HierarchicalReasoningModel_ACTV1,
    HierarchicalReasoningModel_ACTV1Carry,
    HierarchicalReasoningModel_ACTV1InnerCarry,
    HRMConfig,
    rename_legacy_keys,
)
from hrm_codegen.recurrence import (
    configure_exit_gate_training,
    exit_targets,
    segment_weights,
    step_recurrence,
)

logger = logging.getLogger(__name__)
EXIT_HEAD_KEYS = ("model.exit_head.weight", "model.exit_head.bias")


def _hrm_arch_schema() -> type:
    """A dataclass with exactly HRMConfig's keys (`HRM_DEFAULTS`) plus `name`, for Hydra's validation; its
    types come from the defaults (null defaults are optional ints); vocab_size null means "from the tokenizer"."""
    specs: list[tuple[str, Any, Any]] = [("name", str, field(default="hrm"))]
    for key, default in HRM_DEFAULTS.items():
        if key == "vocab_size":
            specs.append((key, int | None, field(default=None)))
        else:
            specs.append((key, int | None if default is None else type(default), field(default=default)))
    return dataclasses.make_dataclass("HRMArchConfig", specs)


HRMArchConfig = _hrm_arch_schema()


def gate_metrics(model: HierarchicalReasoningModel_ACTV1) -> dict[str, float]:
    """How far each level's recurrence gate is open (arch.recurrence_gates): `{L,H}_gate_abs`, the mean |gate| the
    forward reads (after recurrence_gate_nonneg's max(gate, 0)), and `{L,H}_gate_neg`, the fraction of its
    entries below zero (entries that push the state away from the level's output). Empty without gates."""
    metrics = {}
    for name in ("L", "H"):
        level = getattr(model.model, f"{name}_level")
        if level.gate is None:
            continue
        metrics[f"{name}_gate_abs"] = float(level.read_gate().detach().float().abs().mean())
        metrics[f"{name}_gate_neg"] = float((level.gate.detach() < 0).float().mean())
    return metrics


class ActCarryState(TrainState):
    """The HRM's ACT carry for one micro-batch slot (deep supervision, upstream's training scheme).

    With `persist` (halt_max_steps > 1) the carry survives optimizer steps: unhalted sequences keep their
    data and hidden state, halted ones take the next batch. Without it every step starts fresh.
    """

    def __init__(self, persist: bool) -> None:
        self.persist = persist
        self.fixed_shape = persist
        self.carry: HierarchicalReasoningModel_ACTV1Carry | None = (
            None  # the one the next forward starts from
        )

    def prepare(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
        if not (self.persist and self.carry is not None):
            self.carry = cast(HierarchicalReasoningModel_ACTV1, model).initial_carry(batch)

    def targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        assert self.carry is not None, "prepare() first"
        return torch.where(self.carry.halted[:, None], batch["labels"], self.carry.current_data["labels"])

    def state_dict(self) -> dict[str, torch.Tensor]:
        carry = self.carry
        if not self.persist or carry is None:
            return {}
        tensors = {
            "z_H": carry.inner_carry.z_H,
            "z_L": carry.inner_carry.z_L,
            "steps": carry.steps,
            "halted": carry.halted,
            **{f"data.{k}": v for k, v in carry.current_data.items()},
        }
        return {k: v.detach().cpu() for k, v in tensors.items()}

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], device: torch.device | str) -> None:
        if not self.persist or not tensors:
            self.carry = None
            return
        t = {k: v.to(device) for k, v in tensors.items()}
        self.carry = HierarchicalReasoningModel_ACTV1Carry(
            inner_carry=HierarchicalReasoningModel_ACTV1InnerCarry(z_H=t["z_H"], z_L=t["z_L"]),
            steps=t["steps"],
            halted=t["halted"],
            current_data={k[len("data.") :]: v for k, v in t.items() if k.startswith("data.")},
        )


class SegmentsState(TrainState):
    """Deep supervision within a step and the exit gate's training (`hrm_codegen.recurrence`): every step runs
    `segments` segments of its batch from a fresh carry, passed on detached or not, with a loss after each
    weighted by `weights`; with `exit_weight` > 0 the exit gate learns whether another L step lowers each token's
    loss (by more than `exit_margin`). Nothing is carried across steps."""

    def __init__(
        self, segments: int, weights: list[float], detach: bool, exit_weight: float, exit_margin: float
    ) -> None:
        self.segments, self.weights, self.detach = segments, weights, detach
        self.exit_weight, self.exit_margin = exit_weight, exit_margin


def _exit_loss(
    model: HierarchicalReasoningModel_ACTV1,
    points: list[Any],
    labels: torch.Tensor,
    loss_type: str,
    margin: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed BCE of the exit gate over the target tokens at every exit point but the last, averaged over those
    points; the summed targets, detached): the target says whether the next point's loss is not lower."""
    valid = labels != IGNORE_INDEX
    with torch.no_grad():
        losses = [token_cross_entropy(model.head(p.head_states), labels, loss_type) for p in points]
    targets = exit_targets(losses, margin)
    bce = sum(
        (
            F.binary_cross_entropy_with_logits(p.exit_logits, t, reduction="none")[valid].sum()
            for p, t in zip(points, targets, strict=False)
        ),
        torch.zeros((), device=labels.device),
    )
    exits = sum((t[valid].sum() for t in targets), torch.zeros((), device=labels.device))
    return bce / len(targets), exits / len(targets)


@contextlib.contextmanager
def _cycles(model: HierarchicalReasoningModel_ACTV1, cycles: tuple[int, int] | None) -> Iterator[None]:
    """Run with `cycles` (None: as it is), then put the ones in force back."""
    current = model.cycles
    if cycles is None or cycles == current:
        yield
        return
    model.set_cycles(*cycles)
    try:
        yield
    finally:
        model.set_cycles(*current)


def _eval_cycles(model: nn.Module) -> tuple[int, int] | None:
    """The cycles a run drawing random cycles validates and saves with (its arch's), None otherwise."""
    return getattr(model, "__dict__", {}).get("_eval_cycles")


class HrmFamily(ModelFamily):
    """Our HRM port (`models/hrm_act_v1.py`): trains with the ACT carry, decodes with its own KV cache."""

    name = "hrm"
    description = "HRM port (Sapient, July 2025): H/L recurrent modules, 1-step gradient, ACT"
    # train.cycles_schedule may change this family's cycles while training (`cycles_at`, `before_step`).
    supports_cycles_schedule = True

    def arch_schemas(self) -> dict[str, type]:
        return {"hrm_schema": HRMArchConfig}

    def check(self, config: dict[str, Any]) -> None:
        HRMConfig.from_arch(config).validate()

    def check_packing(self, config: dict[str, Any]) -> None:
        """The HRM keeps packed examples apart by `segment_ids`; its Q-head cannot (see the message)."""
        if config.get("enable_q_head"):
            raise ValueError(
                "data.pack=true cannot train arch.name=hrm with arch.enable_q_head=true: the Q-head halts a whole "
                "sequence from its last real token, which in a packed block sees only the last example; "
                "set data.pack=false or arch.enable_q_head=false"
            )

    def build(self, config: dict[str, Any]) -> nn.Module:
        return HierarchicalReasoningModel_ACTV1(config)

    def lm_logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Plain LM logits: halt_max_steps fresh segments (the prompt bidirectional with arch.prefix_lm); a run
        drawing random cycles validates with its arch's cycles."""
        hrm = cast(HierarchicalReasoningModel_ACTV1, model)
        with _cycles(hrm, _eval_cycles(hrm)):
            return hrm.lm_forward(
                batch["input_ids"],
                batch.get("attention_mask"),
                token_type_ids=batch.get("token_type_ids"),
            )

    def prepare_training(self, model: nn.Module, train: Any) -> None:
        """The exit gate's learning-rate scale and train.exit_gate_only (`configure_exit_gate_training`)."""
        configure_exit_gate_training(model, train)

    def new_train_state(self, config: dict[str, Any], train: Any = None) -> TrainState:
        """The ACT carry (persisting across steps when halt_max_steps > 1), or with train.deep_supervision or
        arch.exit_gate the segments of each step (`SegmentsState`)."""
        train = train if train is not None else {}
        deep = bool(train.get("deep_supervision", False))
        if deep or config.get("exit_gate"):
            segments = int(config.get("halt_max_steps", 1)) if deep else 1
            return SegmentsState(
                segments,
                segment_weights(train, segments) if deep else [1.0],
                bool(train.get("deep_supervision_detach", True)),
                float(train.get("exit_loss_weight", 1.0)) if config.get("exit_gate") else 0.0,
                float(train.get("exit_margin", 0.0)),
            )
        return ActCarryState(persist=config.get("halt_max_steps", 1) > 1)

    def before_step(self, model: nn.Module, step: int, total_steps: int, cfg: Any) -> dict[str, Any] | None:
        """This step's cycles and bp_steps as `recurrence.step_recurrence` gives them (the one place that decides:
        the training FLOPs count reads it too): the cycles of train.cycles_schedule (`cycles_at`), else the random
        cycles of train.random_cycles (`draw_cycles`, returned as the step's H_cycles / L_cycles metrics;
        validation and saved weights keep the arch's), then under train.bp_warmup_ratio > 0 the warm-up's bp_steps
        (`bp_steps_at`). Without a schedule or draws the model keeps the arch's cycles. Also returned: the
        recurrence gates as the step starts (`gate_metrics`)."""
        hrm = cast(HierarchicalReasoningModel_ACTV1, model)
        this = step_recurrence(cfg, step, total_steps)
        drawn = this.cycles_from == "draw"
        if drawn:
            hrm.__dict__["_eval_cycles"] = (int(cfg.arch.H_cycles), int(cfg.arch.L_cycles))
        # set_cycles also sets bp_steps: the arch's, or 0 above these cycles' steps
        if this.cycles_from != "arch":
            hrm.set_cycles(this.H_cycles, this.L_cycles)
        if this.bp_warmup:
            hrm.bp_steps = this.bp_steps
        info = {"H_cycles": this.H_cycles, "L_cycles": this.L_cycles} if drawn else {}
        return {**info, **gate_metrics(hrm)} or None

    def forward_loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], state: TrainState, loss_type: str
    ) -> LossOutput:
        """One ACT segment from the state's carry, the loss on the carry's current data; or with a
        `SegmentsState` its segments of this batch (`segments_loss`)."""
        if isinstance(state, SegmentsState):
            return self.segments_loss(model, batch, state, loss_type)
        act = cast(ActCarryState, state)
        new_carry, outputs = model(act.carry, batch)
        if act.persist:
            act.carry = new_carry
        return codegen_loss(outputs, new_carry.current_data["labels"], loss_type)

    def segments_loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], state: SegmentsState, loss_type: str
    ) -> LossOutput:
        """The segments of one batch (through the wrapped model, so data parallelism sees the forward): the weighted
        sum of each segment's next-token loss (`segment_<m>_loss` metrics with several segments), and the exit
        gate's BCE (`extra_sum`, weight train.exit_loss_weight; `exit_loss` and `exit_target` metrics)."""
        labels = batch["labels"]
        outputs = model(
            batch=batch,
            segments=state.segments,
            detach_carry=state.detach,
            exit_points=state.exit_weight > 0,
        )
        segment_logits = outputs["segment_logits"]
        valid = labels != IGNORE_INDEX
        lm_sum = torch.zeros((), device=labels.device)
        metrics: dict[str, torch.Tensor] = {}
        for m, (logits, weight) in enumerate(zip(segment_logits, state.weights, strict=True)):
            ce = token_cross_entropy(logits, labels, loss_type).sum()
            lm_sum = lm_sum + weight * ce
            if state.segments > 1:
                metrics[f"segment_{m + 1}_loss"] = ce.detach()
        with torch.no_grad():
            hits = (segment_logits[-1].argmax(-1) == labels) & valid
        result = LossOutput(
            lm_sum=lm_sum,
            num_tokens=valid.sum(),
            correct_tokens=hits.sum(),
            num_sequences=labels.shape[0],
            metric_sums=metrics,
        )
        points = outputs["exit_points"]
        if points is not None and len(points) > 1:
            hrm = cast(HierarchicalReasoningModel_ACTV1, getattr(model, "module", model))
            bce, target = _exit_loss(hrm, points, labels, loss_type, state.exit_margin)
            result.extra_sum = state.exit_weight * bce
            metrics["exit_loss"], metrics["exit_target"] = bce.detach(), target
        return result

    def report_lines(self, config: dict[str, Any], total_params: int) -> list[str]:
        """What the enable_q_head flag adds or removes (the model rebuilt on the meta device with it flipped)."""
        flag = bool(config.get("enable_q_head"))
        with torch.device("meta"):
            other = sum(p.numel() for p in self.build({**config, "enable_q_head": not flag}).parameters())
        if flag:
            return [
                f"  enable_q_head=true: the Q-head adds {total_params - other:,} parameters ({other:,} without it)"
            ]
        return [f"  enable_q_head=false: no Q-head; turning it on adds {other - total_params:,} parameters"]

    def flops_per_token(self, config: dict[str, Any], seq_len: int) -> dict[str, float]:
        flops = hrm_flops_per_token(HRMConfig.from_arch(config), seq_len)
        return {"train": flops["total"], **flops}

    def save_weights(
        self, model: nn.Module, state: Mapping[str, torch.Tensor], tokenizer: Any, directory: Path
    ) -> None:
        """save_pretrained layout in `<step>/hf/`: `AutoModelForCausalLM.from_pretrained(<step>/hf)` loads it
        after `import hrm_codegen`, and with trust_remote_code=True (its shipped model code) without it."""
        hrm = cast(HierarchicalReasoningModel_ACTV1, model)
        # random cycles: config.json keeps the arch's, not the last draw
        with _cycles(hrm, _eval_cycles(hrm)):
            save_hf(hrm, tokenizer, directory / HF_DIR, dict(state))

    def load_weights(self, model: nn.Module, path: Path) -> None:
        """From a step directory (its `hf/`, or the `model.safetensors` of older steps) or a weights file; weights
        saved before the backbone / head split (`inner.*`) load under today's names."""
        from hrm_codegen.checkpoint import check_weights_fit, load_weights

        file = step_weights_file(path)
        state = rename_legacy_keys(load_weights(file))
        # A model given an exit gate (arch.exit_gate=true) over weights without one starts with a fresh gate.
        check_weights_fit(state, model, file, may_lack=EXIT_HEAD_KEYS)
        fresh = [key for key in EXIT_HEAD_KEYS if key in model.state_dict() and key not in state]
        if fresh:
            logger.warning(
                "%s has no exit gate: the model's exit gate starts untrained (exit probability 0.5)", file
            )
        model.load_state_dict(state, strict=not fresh)

    def generate(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        request: GenerationRequest,
    ) -> Generated:
        """transformers' `generate` (`hrm_codegen.generation.generate`, the path of every family); with
        arch.prefix_lm every real prompt token is prefix (bidirectional), as in training."""
        hrm = cast(HierarchicalReasoningModel_ACTV1, model)
        prefix = attention_mask.bool() if hrm.config.prefix_lm else None
        return decode_request(model, input_ids, attention_mask, request, prefix_mask=prefix)


HRM = register_family(HrmFamily())
