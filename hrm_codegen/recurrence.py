"""Recurrence that pays (issue 26): the training settings of deep supervision, randomized cycles and the exit gate.

- **Deep supervision** (`train.deep_supervision`): every optimizer step runs `arch.halt_max_steps` segments of each
  batch from a fresh carry, the carry passed from one segment to the next (`train.deep_supervision_detach`), with a
  next-token loss after each, weighted by `train.deep_supervision_weights` (default 1/M each).
- **Randomized recurrence** (`train.random_cycles`): each optimizer step draws its H and L cycles (`draw_cycles`)
  from a distribution, from the run's seed and the step alone, so a resumed run draws what the uninterrupted one did.
- **The exit gate** (`arch.exit_gate`): trained on whether another L step lowers each token's loss
  (`exit_targets`), with weight `train.exit_loss_weight`, at `train.exit_gate_lr_scale` times the learning rate;
  `train.exit_gate_only` trains it alone (`configure_exit_gate_training`).

The model side lives in `models/hrm_act_v1.py` (`segments_forward`, `ExitPoint`, `DecodeExits`), the training
forward in `families/hrm.py`; `check_recurrence_settings` is part of `validate_config`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from hrm_codegen.flops import attention_flops, block_params, hrm_flops_per_token
from hrm_codegen.models.baseline import swiglu_intermediate_size
from hrm_codegen.models.configuration_hrm import HRM_DEFAULTS, HRMConfig, max_bp_steps

RANDOM_CYCLES = ("none", "uniform", "lognormal_poisson")
_SALT = 0x48524D43  # keeps these draws apart from any other use of (seed, step)


def _spec(train: Any, key: str) -> list[Any]:
    """The list setting `key` of `train` (a config or a plain mapping) as a plain list; [] when unset."""
    value = train.get(key)
    if value is None:
        return []
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return list(cast(Sequence[Any], value))


def _draw(rng: np.random.Generator, kind: str, spec: Sequence[Any], sigma: float) -> int:
    """One cycle count: uniform over [low, high], or 1 + Poisson(exp(tau)) with tau ~ N(log(mean - 1) - sigma^2/2,
    sigma) (Huginn's log-normal Poisson, shifted so that its mean is `mean`), capped at `max`."""
    if kind == "uniform":
        low, high = (int(v) for v in spec)
        return int(rng.integers(low, high + 1))
    mean, most = float(spec[0]), int(spec[1])
    tau = rng.normal(math.log(mean - 1.0) - sigma**2 / 2.0, sigma)
    return min(1 + int(rng.poisson(math.exp(tau))), most)


def random_cycles_on(train: Any) -> bool:
    """Whether `train` draws the cycles of every step (train.random_cycles is not none)."""
    return str(train.get("random_cycles") or "none") != "none"


def bp_steps_at(step: int, total_steps: int, target: int, warmup_ratio: float) -> int:
    """bp_steps for optimizer step `step` (0-based) under a linear warm-up from 2 to `target`.

    The warm-up lasts `round(warmup_ratio * total_steps)` steps: step s of it uses
    `2 + floor((target - 2) * s / warmup_steps)`, so each value gets an equal share; from its end on, `target`.
    A target of 0 (full backpropagation whatever the cycles) or up to 2 has no warm-up: it is returned as is.
    """
    warmup_steps = round(warmup_ratio * total_steps)
    if target <= 2 or step >= warmup_steps:
        return target
    return 2 + (target - 2) * step // warmup_steps


def cycles_at(step: int, total_steps: int, schedule: Sequence[Sequence[float]]) -> tuple[int, int]:
    """(H_cycles, L_cycles) of `train.cycles_schedule` for optimizer step `step` (0-based) of `total_steps`.

    Entry `[start_fraction, H_cycles, L_cycles]` is in force from step `round(start_fraction * total_steps)`
    on, until the next entry's start (a later entry wins where two start at one step). The schedule is checked
    by `validate_config`: it starts at 0.0 with fractions strictly increasing.
    """
    chosen = schedule[0]
    for entry in schedule:
        if round(float(entry[0]) * total_steps) <= step:
            chosen = entry
    return int(chosen[1]), int(chosen[2])


def draw_cycles(seed: int, step: int, train: Any, default: tuple[int, int]) -> tuple[int, int]:
    """(H_cycles, L_cycles) of optimizer step `step` (0-based) under train.random_cycles: drawn from `seed` and
    `step` only (numpy's generator seeded with both), so every process and a resumed run draw the same. A level
    without a range (train.random_H_cycles / random_L_cycles empty) keeps its `default` count."""
    kind = str(train.get("random_cycles") or "none")
    if kind == "none":
        return default
    rng = np.random.default_rng([_SALT, seed % 2**63, step])
    sigma = float(train.get("random_cycles_sigma", 0.5))
    h_spec, l_spec = _spec(train, "random_H_cycles"), _spec(train, "random_L_cycles")
    h_cycles = _draw(rng, kind, h_spec, sigma) if h_spec else default[0]
    l_cycles = _draw(rng, kind, l_spec, sigma) if l_spec else default[1]
    return h_cycles, l_cycles


def segment_weights(train: Any, segments: int) -> list[float]:
    """The deep-supervision loss weight of each of `segments` segments: train.deep_supervision_weights, or 1/M each."""
    weights = _spec(train, "deep_supervision_weights")
    return [float(w) for w in weights] if weights else [1.0 / segments] * segments


def exit_targets(losses: Sequence[torch.Tensor], margin: float) -> list[torch.Tensor]:
    """The exit gate's targets at every exit point but the last: 1.0 where the next point's per-token loss is not
    lower than this one's by more than `margin` (another step does not pay), else 0.0. `losses`: [B, S] each."""
    return [(now - later <= margin).to(torch.float32) for now, later in zip(losses, losses[1:], strict=False)]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_range(key: str, spec: list[Any], kind: str) -> None:
    if kind == "uniform":
        if len(spec) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in spec):
            raise ValueError(f"{key}: uniform takes [low, high], two integers, got {spec!r}")
        if not 1 <= spec[0] <= spec[1]:
            raise ValueError(f"{key}: uniform needs 1 <= low <= high, got {spec!r}")
        return
    if len(spec) != 2 or not _number(spec[0]) or not isinstance(spec[1], int) or isinstance(spec[1], bool):
        raise ValueError(f"{key}: lognormal_poisson takes [mean, max], a number and an integer, got {spec!r}")
    if not 1 < spec[0] <= spec[1]:
        raise ValueError(f"{key}: lognormal_poisson needs 1 < mean <= max, got {spec!r}")


def check_recurrence_settings(cfg: DictConfig, family_name: str) -> None:
    """Raise ValueError naming the key when the deep-supervision, random-cycles or exit-gate settings are wrong
    (part of `validate_config`)."""
    train, arch = cfg.train, cfg.arch
    hrm = family_name == "hrm"
    deep = bool(train.get("deep_supervision", False))
    weights = _spec(train, "deep_supervision_weights")
    kind = str(train.get("random_cycles") or "none")
    ranges = {key: _spec(train, key) for key in ("random_H_cycles", "random_L_cycles")}
    if not hrm and (deep or kind != "none"):
        what = "train.deep_supervision" if deep else "train.random_cycles"
        raise ValueError(f"{what} is for arch.name=hrm; arch.name={family_name} cannot: leave it off")
    if weights and not deep:
        raise ValueError("train.deep_supervision_weights applies with train.deep_supervision=true")
    if deep:
        segments = int(arch.get("halt_max_steps", 1))
        if segments < 2:
            raise ValueError(
                "train.deep_supervision=true runs arch.halt_max_steps segments per example, which is "
                f"{segments}; set arch.halt_max_steps >= 2 (+train.arch_overrides.halt_max_steps=2 for a retrofit)"
            )
        if arch.get("enable_q_head"):
            raise ValueError(
                "train.deep_supervision=true trains every segment of a step; arch.enable_q_head=true is upstream's "
                "ACT across steps: use one of them"
            )
        if weights and (
            len(weights) != segments or not all(_number(w) and w >= 0 for w in weights) or sum(weights) <= 0
        ):
            raise ValueError(
                f"train.deep_supervision_weights={weights}: expected {segments} non-negative numbers (one per "
                "segment, arch.halt_max_steps) with a positive sum, or [] for 1/M each"
            )
    if kind not in RANDOM_CYCLES:
        raise ValueError(f"train.random_cycles={kind!r}: expected one of {RANDOM_CYCLES}")
    if kind == "none":
        given = [key for key, spec in ranges.items() if spec]
        if given:
            raise ValueError(
                f"train.{given[0]} applies with train.random_cycles=uniform or lognormal_poisson"
            )
    else:
        if not any(ranges.values()):
            raise ValueError(
                f"train.random_cycles={kind} needs a range: train.random_L_cycles and/or train.random_H_cycles"
            )
        for key, spec in ranges.items():
            if spec:
                _check_range(f"train.{key}", spec, kind)
        if not float(train.get("random_cycles_sigma", 0.5)) > 0:
            raise ValueError(f"train.random_cycles_sigma must be > 0, got {train.get('random_cycles_sigma')}")
        if train.get("cycles_schedule"):
            raise ValueError(
                "train.random_cycles and train.cycles_schedule both set the cycles of every step; use one"
            )
    if float(train.get("exit_loss_weight", 1.0)) < 0:
        raise ValueError(f"train.exit_loss_weight must be >= 0, got {train.get('exit_loss_weight')}")
    scale = train.get("exit_gate_lr_scale", 1.0)
    if not _number(scale) or not float(scale) > 0:
        raise ValueError(f"train.exit_gate_lr_scale must be a number > 0, got {scale!r}")
    if train.get("exit_gate_only") and not (
        hrm and arch.get("exit_gate") and float(train.get("exit_loss_weight", 1.0)) > 0
    ):
        raise ValueError(
            "train.exit_gate_only=true trains the exit gate alone: it needs arch.name=hrm with arch.exit_gate=true "
            "(+train.arch_overrides.exit_gate=true for a checkpoint) and train.exit_loss_weight > 0"
        )
    if hrm and arch.get("exit_gate") and int(arch.get("halt_max_steps", 1)) > 1 and not deep:
        raise ValueError(
            "arch.exit_gate=true trains its gate within each step: with arch.halt_max_steps > 1 set "
            "train.deep_supervision=true (or arch.halt_max_steps=1)"
        )


def _step_flops(
    arch: dict[str, Any], cycles: tuple[int, int], bp_steps: int, seq_len: int, train: Any
) -> float:
    """Training FLOPs per token of one optimizer step at `cycles` with `bp_steps`: each segment's (deep supervision:
    all M; forward only with train.exit_gate_only), plus the exit gate's read-outs per segment, forward only: an H
    call after each L step but an H cycle's last, and the LM head at every exit point."""
    config = HRMConfig.from_arch({**arch, "H_cycles": cycles[0], "L_cycles": cycles[1], "bp_steps": 0})
    config.bp_steps = bp_steps
    flops = hrm_flops_per_token(config, seq_len)
    frozen = bool(train.get("exit_gate_only"))  # no backward through the language model
    per_segment = flops["no_grad"] + (flops["trained"] / 3.0 if frozen else flops["trained"])
    if arch.get("exit_gate") and float(train.get("exit_loss_weight", 1.0)) > 0:
        hidden = config.hidden_size
        intermediate = config.intermediate_size or swiglu_intermediate_size(hidden, config.expansion)
        layer_forward = 2.0 * block_params(hidden, intermediate, config.kv_heads / config.num_heads)
        layer_forward += attention_flops(hidden, seq_len)
        readout_calls = cycles[0] * (cycles[1] - 1)
        exit_points = cycles[0] * cycles[1]
        per_segment += readout_calls * config.H_layers * layer_forward
        per_segment += exit_points * 2.0 * config.vocab_size * hidden
    segments = int(arch.get("halt_max_steps", 1)) if train.get("deep_supervision") else 1
    return segments * per_segment


def configure_exit_gate_training(model: torch.nn.Module, train: Any) -> None:
    """The exit gate's training settings on an HRM built with arch.exit_gate: its parameters learn at
    train.exit_gate_lr_scale times the learning rate (the optimizer reads `lr_scale`), and with
    train.exit_gate_only every other parameter is frozen (requires_grad off: the optimizer skips it)."""
    inner = getattr(model, "model", None)
    if inner is None or not getattr(inner.config, "exit_gate", False):
        return
    gate = [*inner.exit_norm.parameters(), *inner.exit_head.parameters()]
    scale = float(train.get("exit_gate_lr_scale", 1.0))
    for param in gate:
        if scale != 1.0:
            param.lr_scale = scale  # type: ignore[attr-defined] - read by hrm_codegen.optim
        elif hasattr(param, "lr_scale"):
            del param.lr_scale
    if train.get("exit_gate_only"):
        gate_ids = {id(p) for p in gate}
        for param in model.parameters():
            param.requires_grad_(id(param) in gate_ids)


class StepRecurrence(NamedTuple):
    """One optimizer step's recurrence (`step_recurrence`). `cycles_from`: what chose the cycles ("schedule",
    "draw" or "arch"); `bp_warmup`: whether bp_steps comes from train.bp_warmup_ratio's warm-up."""

    H_cycles: int
    L_cycles: int
    bp_steps: int
    cycles_from: str = "arch"
    bp_warmup: bool = False


def step_recurrence(cfg: DictConfig, step: int, total_steps: int) -> StepRecurrence:
    """The cycles and bp_steps of optimizer step `step` (0-based) of `total_steps`, as the HRM family's
    `before_step` sets them: the cycles of train.cycles_schedule (`cycles_at`), else of train.random_cycles
    (`draw_cycles`), else the arch's; arch.bp_steps, 0 (full backpropagation) where it exceeds these cycles' steps,
    and under train.bp_warmup_ratio its warm-up value (`bp_steps_at`) capped at these cycles' steps."""
    arch, train = cfg.arch, cfg.train
    schedule = _spec(train, "cycles_schedule")
    default = (int(arch.H_cycles), int(arch.L_cycles))
    if schedule:
        cycles, cycles_from = cycles_at(step, total_steps, schedule), "schedule"
    elif random_cycles_on(train):
        cycles, cycles_from = draw_cycles(int(cfg.seed), step, train, default), "draw"
    else:
        cycles, cycles_from = default, "arch"
    bound, target = max_bp_steps(*cycles), int(arch.get("bp_steps", HRM_DEFAULTS["bp_steps"]))
    ratio = float(train.get("bp_warmup_ratio", 0.0) or 0.0)
    if ratio > 0:
        bp_steps = min(bp_steps_at(step, total_steps, target, ratio), bound) if target > 2 else target
        return StepRecurrence(*cycles, bp_steps, cycles_from, bp_warmup=True)
    return StepRecurrence(*cycles, 0 if target > bound else target, cycles_from)


def run_train_flops_per_token(cfg: DictConfig, total_steps: int) -> float:
    """The HRM run's mean analytic training FLOPs per token over its `total_steps` steps: each step at the cycles
    and bp_steps it trains at (`step_recurrence`: a curriculum, drawn cycles, a bp_steps warm-up), times its
    segments, plus the exit read-outs."""
    arch = {
        k: v for k, v in cast(dict, OmegaConf.to_container(cfg.arch, resolve=True)).items() if k != "name"
    }
    arch["vocab_size"] = arch.get("vocab_size") or 50257
    seq_len = int(cfg.data.seq_len)
    cache: dict[tuple[int, int, int], float] = {}
    total = 0.0
    for step in range(total_steps):
        h_cycles, l_cycles, bp_steps = key = step_recurrence(cfg, step, total_steps)[:3]
        if key not in cache:
            cache[key] = _step_flops(arch, (h_cycles, l_cycles), bp_steps, seq_len, cfg.train)
        total += cache[key]
    return total / max(total_steps, 1)


def training_budget(cfg: DictConfig, total_steps: int) -> dict[str, float | int]:
    """The HRM run's training FLOPs against its source's (a retrofit: the same layers, one cycle each, one segment,
    full backpropagation), per token and for `total_steps` steps of the same tokens, and the source's steps at equal
    training FLOPs (the same batches, so the same data order, going on into later epochs)."""
    hrm = run_train_flops_per_token(cfg, total_steps)
    arch = {
        k: v for k, v in cast(dict, OmegaConf.to_container(cfg.arch, resolve=True)).items() if k != "name"
    }
    arch["vocab_size"] = arch.get("vocab_size") or 50257
    identity = {**arch, "H_cycles": 1, "L_cycles": 1, "bp_steps": 0, "halt_max_steps": 1, "exit_gate": False}
    identity["gate_later_segments"] = False
    source = hrm_flops_per_token(HRMConfig.from_arch(identity), int(cfg.data.seq_len))["total"]
    return {
        "steps": total_steps,
        "hrm_flops_per_token": hrm,
        "source_flops_per_token": source,
        "ratio": hrm / source,
        "source_steps_equal_flops": round(total_steps * hrm / source),
    }


def source_matched_steps(cfg: DictConfig, source_steps: int) -> int:
    """The most optimizer steps N of the HRM run `cfg` (its arch resolved from its init) whose analytic training
    FLOPs, each step at the cycles and bp_steps it trains at (`run_train_flops_per_token`), stay within
    `source_steps` steps of its source (`training_budget`'s: the same layers at one cycle) on the same batches."""
    budget = source_steps * float(training_budget(cfg, 1)["source_flops_per_token"])
    steps = 0
    while run_train_flops_per_token(cfg, steps + 1) * (steps + 1) <= budget * (1 + 1e-9):  # float sums
        steps += 1
    return steps
