"""Hierarchical Reasoning Model (ACT v1) for autoregressive code generation, as a transformers model.

A re-implementation of Sapient's HRM (sapientinc/HRM, Apache-2.0, `models/hrm/hrm_act_v1.py` at the
commit recorded in `UPSTREAM_COMMIT`) with upstream's modules and config keys, and these patches:
causal attention (`causal`), an `input_ids` embedding path without puzzle embeddings, the Q-head/ACT
halting behind `enable_q_head`, 1-D RoPE (or learned positions), and a KV cache for generation.

In the shape of transformers' `modeling_llama.py`: `HrmCodegenModel` is the backbone (embeddings, the H and L
levels, the final norm; `forward` returns the states the head reads) and `HrmCodegenForCausalLM` (upstream's
name `HierarchicalReasoningModel_ACTV1` is the same class) holds it as `model` with the LM head, a
`PreTrainedModel` + `GenerationMixin`: `forward(input_ids=..., ...)` is a causal LM for transformers' `generate`
and trainers, `forward(carry, batch)` runs one ACT segment (upstream's training interface). Every attention call
of a forward, (segment, H cycle, L cycle, level, layer), has its own layer of a transformers `Cache` (its slot;
`HRMConfig.num_hidden_layers` counts them), so `DynamicCache` and `StaticCache` (and with it `torch.compile`
of the decoding step) work as for any transformers model. Gradient checkpointing recomputes each level call.
Weights saved before the backbone / head split (upstream's names, all under `inner.`) load through
`LEGACY_KEY_MAPPING`.

Imports only torch, transformers and its two sibling modules: `save_pretrained` ships the three files.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_hrm import HRMConfig, check_bp_steps
from .layers import (
    Attention,
    CastedEmbedding,
    CastedLinear,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    build_attn_mask,
    trunc_normal_init_,
)

__all__ = [
    "DecodeExits",
    "ExitPoint",
    "HRMConfig",
    "HierarchicalReasoningModel_ACTV1",
    "HrmCodegenForCausalLM",
    "HrmCodegenModel",
    "HrmCodegenPreTrainedModel",
    "check_bp_steps",
]

UPSTREAM_COMMIT = "af3e8b1"  # sapientinc/HRM, 2025-07-31: the architecture this port follows


def _cache_field(output_class: type) -> str:
    """The name of the cache in a transformers output class (`cache` from 5.2x, `past_key_values` before)."""
    return "cache" if "cache" in output_class.__dataclass_fields__ else "past_key_values"


def gradient_steps(bp_steps: int, h_cycles: int, l_cycles: int | None = None) -> tuple[int, int]:
    """(H steps, L steps) that carry gradient, the last ones of each level (HRM-Text's bp_steps).

    H takes min(H_cycles, bp_steps - 1) of its last steps and L the rest of its last steps, so 2 is the
    last H and the last L step (upstream's 1-step gradient). bp_steps=0 is every step (needs `l_cycles`).
    """
    if bp_steps == 0:
        assert l_cycles is not None, "bp_steps=0 (full backpropagation) needs l_cycles"
        return h_cycles, h_cycles * l_cycles
    h_steps = min(h_cycles, bp_steps - 1)
    return h_steps, bp_steps - h_steps


@dataclass
class HierarchicalReasoningModel_ACTV1InnerCarry:
    """Recurrent state of the two modules, [B, S, hidden] each."""

    z_H: torch.Tensor
    z_L: torch.Tensor


@dataclass
class HierarchicalReasoningModel_ACTV1Carry:
    """ACT state: inner carry plus per-sequence step counts, halting flags and the data being worked on."""

    inner_carry: HierarchicalReasoningModel_ACTV1InnerCarry
    steps: torch.Tensor
    halted: torch.Tensor
    current_data: dict[str, torch.Tensor]


@dataclass
class ExitPoint:
    """One exit point of the exit gate's training (after an L step): the gate's logits [B, S] (fp32, from the
    detached L state) and the states the LM head would read had the token stopped there [B, S, hidden] (no
    gradient: the L state through this cycle's H call)."""

    exit_logits: torch.Tensor
    head_states: torch.Tensor


def copy_cache_columns(
    cache: Cache, source: int, target: int, count: int, rows: torch.Tensor, columns: torch.Tensor | None
) -> None:
    """Copy the keys and values of `rows` [B] (bool) at `columns` (the step's key columns; None: the last one) from
    cache slots [source, source + count) to [target, target + count): a token that skipped a call attends later
    tokens with the entries of its last computed call."""
    index = rows.nonzero().squeeze(-1)
    for offset in range(count):
        src, dst = cache.layers[source + offset], cache.layers[target + offset]
        for name in ("keys", "values"):
            into, out_of = getattr(dst, name), getattr(src, name)
            if columns is None:
                into[index, :, -1] = out_of[index, :, -1]
            else:
                into[index[:, None], :, columns[None, :]] = out_of[index[:, None], :, columns[None, :]]


def append_cache_columns(
    cache: Cache, source: int, target: int, count: int, columns: torch.Tensor | None
) -> None:
    """Write the step's keys and values of cache slots [source, source + count) (at `columns`; None: the last one)
    as the step's entries of slots [target, target + count), for every row: a call that no row runs."""
    layers: list[Any] = list(cache.layers)  # key-value layers (dynamic or static)
    at = slice(-1, None) if columns is None else columns
    for offset in range(count):
        src, dst = layers[source + offset], layers[target + offset]
        dst.update(src.keys[:, :, at], src.values[:, :, at])


class DecodeExits:
    """Per-token exits of one cached decoding step (`set_exit_threshold`), computed by masking: a token that has
    exited keeps its states (L frozen after its exit step, H after the H call of that cycle) while its cache entries
    of the calls it skipped are copied from its last computed call of the same level. A call in which every row
    keeps its states is not run at all (`skip`, eager decoding: the saving of a real exit, e.g. at batch 1); other
    calls run every row. `layer_evals` [B, S] counts the layer evaluations a real exit runs, `skipped_layers` the
    layer evaluations of the calls not run (per row)."""

    def __init__(
        self,
        threshold: float,
        shape: torch.Size,
        device: torch.device,
        columns: torch.Tensor | None,
        skip: bool = True,
    ):
        self.threshold = threshold
        self.columns = columns  # a static cache's key columns of the step (None: the last one)
        # no data-dependent branches in a compiled step
        self.skip = skip and not torch.compiler.is_compiling()
        self.skipped_layers = 0
        self.exited = torch.zeros(shape, dtype=torch.bool, device=device)
        # the H call (counted over the step's segments) in whose cycle the token exited
        self.exit_call = torch.full(shape, -1, dtype=torch.long, device=device)
        self.layer_evals = torch.zeros(shape, dtype=torch.long, device=device)
        self.h_call = 0  # H calls of the step so far (all segments)
        self.previous: dict[str, int] = {}  # the cache slot of each level's previous call
        self.final_segment = False

    def _keep(self, frozen: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        return torch.where(frozen[..., None], old, new)

    def _copy(self, level: str, cache: Cache | None, slot: int, layers: int, frozen: torch.Tensor) -> None:
        previous = self.previous.get(level)
        if cache is not None and previous is not None and bool(frozen.any()):
            copy_cache_columns(cache, previous, slot, layers, frozen.any(-1), self.columns)
        self.previous[level] = slot

    def frozen(self, level: str) -> torch.Tensor:
        """[B, S] the tokens that keep their states through the coming call of `level` ("L" or "H")."""
        return self.exited if level == "L" else self.exited & (self.exit_call < self.h_call)

    def skips(self, level: str) -> bool:
        """Whether the coming call of `level` need not run: skipping is on and every token keeps its states."""
        return self.skip and bool(self.frozen(level).all())

    def skipped(self, level: str, cache: Cache | None, slot: int, layers: int) -> None:
        """Book a call of `level` that was not run: its cache entries are the level's previous call's (every token
        has one: a token exits after an L call and freezes H only after the H call of its exit cycle)."""
        if cache is not None:
            append_cache_columns(cache, self.previous[level], slot, layers, self.columns)
        self.previous[level] = slot
        self.skipped_layers += layers
        if level == "H":
            self.h_call += 1

    def after_L(self, model: HrmCodegenModel, old, new, cache, slot: int, last: bool) -> torch.Tensor:
        """The L states after an L call: exited tokens keep theirs; then the tokens whose gate exceeds the
        threshold exit (not after the step's last L call, which every token runs to)."""
        frozen = self.frozen("L").clone()  # exits below change self.exited
        self._copy("L", cache, slot, model.config.L_layers, frozen)
        self.layer_evals += (~frozen).long() * model.config.L_layers
        z_L = self._keep(frozen, old, new)
        if not last:
            leaving = ~self.exited & (torch.sigmoid(model.exit_logits(z_L)) > self.threshold)
            self.exit_call = torch.where(leaving, self.h_call, self.exit_call)
            self.exited |= leaving
        return z_L

    def after_H(self, model: HrmCodegenModel, old, new, cache, slot: int) -> torch.Tensor:
        """The H states after an H call: tokens that exited in an earlier cycle keep theirs."""
        frozen = self.frozen("H")
        self._copy("H", cache, slot, model.config.H_layers, frozen)
        self.layer_evals += (~frozen).long() * model.config.H_layers
        self.h_call += 1
        return self._keep(frozen, old, new)


class HierarchicalReasoningModel_ACTV1Block(nn.Module):
    """Post-norm block h = norm(h + attn(h)); h = norm(h + mlp(h)), or with norm_type=pre (HRM-Text)
    h = h + attn(norm(h)); h = h + mlp(norm(h)). The norm is scale-free either way (no parameters)."""

    def __init__(self, config: HRMConfig):
        super().__init__()
        self.self_attn = Attention(
            hidden_size=config.hidden_size,
            head_dim=config.hidden_size // config.num_heads,
            num_heads=config.num_heads,
            num_key_value_heads=config.kv_heads,
            causal=config.causal,
            backend=config.attn_backend,
            bias=config.attention_bias,
        )
        self.mlp = SwiGLU(config.hidden_size, config.expansion, config.intermediate_size)
        # Scale-free unless norm_weights (then: a Llama block's input_layernorm / post_attention_layernorm).
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.norm_weights)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.norm_weights)
        self.pre_norm = config.norm_type == "pre"

    def forward(self, hidden_states: torch.Tensor, **attn_kwargs) -> torch.Tensor:
        if self.pre_norm:
            hidden_states = hidden_states + self.self_attn(self.attn_norm(hidden_states), **attn_kwargs)
            return hidden_states + self.mlp(self.mlp_norm(hidden_states))
        hidden_states = self.attn_norm(hidden_states + self.self_attn(hidden_states, **attn_kwargs))
        return self.mlp_norm(hidden_states + self.mlp(hidden_states))


class HierarchicalReasoningModel_ACTV1ReasoningModule(GradientCheckpointingLayer):
    """A stack of blocks that first adds its input injection to its state: one level call.

    `final_norm` (pre-norm models with final_norm='levels'): end with an RMSNorm, as HRM-Text's stacks do,
    so the states the levels pass on, and what the LM head reads, are normalised. `gate_lr_scale`
    (recurrence_gates): a zero-initialised `gate` vector, whose `lr_scale` attribute the optimizer multiplies its
    learning rate by; a gated call returns z + gate * (stack(z + injection) - z), so it changes nothing until
    training opens the gate. `gate_nonneg`: the call reads max(gate, 0) (a channel pushed negative stays shut).
    With gradient checkpointing on (`gradient_checkpointing_enable`), a call that carries gradient keeps only its
    inputs and recomputes its layers in the backward pass.
    """

    def __init__(
        self,
        layers: list[HierarchicalReasoningModel_ACTV1Block],
        final_norm: RMSNorm | None = None,
        gate_lr_scale: float | None = None,
        hidden_size: int | None = None,
        gate_nonneg: bool = False,
    ):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.final_norm = final_norm
        self.gate = None
        if gate_lr_scale is not None:
            assert hidden_size is not None, "a gated level needs hidden_size"
            self.gate = nn.Parameter(torch.zeros(hidden_size))
            self.gate.lr_scale = gate_lr_scale  # type: ignore[attr-defined] - read by hrm_codegen.optim
        self.gate_nonneg = gate_nonneg

    def read_gate(self) -> torch.Tensor:
        """The gate as a gated call applies it: max(gate, 0) under `gate_nonneg`, else the gate itself."""
        assert self.gate is not None, "this level has no recurrence gate"
        return self.gate.clamp(min=0) if self.gate_nonneg else self.gate

    def forward(
        self,
        hidden_states: torch.Tensor,
        input_injection: torch.Tensor,
        slot: int | None = None,
        gated: bool | torch.Tensor = False,
        **attn_kwargs,
    ) -> torch.Tensor:
        """`slot`: the KV-cache slot of this call's first layer (layer i writes slot + i).

        `gated`: this call is not the level's first in the segment (the gate applies when there is one), or a [B]
        boolean tensor saying so per row (gate_later_segments under ACT: rows continuing from a carry). The two
        states come positionally, everything else by keyword (what reentrant checkpointing needs).
        """
        state = hidden_states
        hidden_states = hidden_states + input_injection
        for i, layer in enumerate(self.layers):
            layer_slot = None if slot is None else slot + i
            hidden_states = layer(hidden_states, slot=layer_slot, **attn_kwargs)
        if self.final_norm is not None:
            hidden_states = self.final_norm(hidden_states)
        if self.gate is None or (not isinstance(gated, torch.Tensor) and not gated):
            return hidden_states
        gate = self.read_gate().to(hidden_states.dtype)
        if isinstance(gated, torch.Tensor):
            gate = gate * gated.view(-1, 1, 1).to(hidden_states.dtype)
        return state + gate * (hidden_states - state)


def _grad_if(enabled: bool) -> contextlib.AbstractContextManager:
    """No change where a level evaluation carries gradient, `no_grad` where it does not."""
    return contextlib.nullcontext() if enabled else torch.no_grad()


def default_position_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Positions counting real tokens only (left padding gets position 0)."""
    if attention_mask is None:
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding token of each row of a [B, S] mask."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.bool() * positions).argmax(-1)


# State-dict names written before the backbone / head split (upstream's layout, everything under `inner.`): the
# LM head moved to the top, the rest (the Q-head included) into the backbone `model`. Regexes, first match wins;
# `from_pretrained` takes them as its `key_mapping`, the project's loader through `rename_legacy_keys`.
LEGACY_KEY_MAPPING = {r"^inner\.lm_head\.": "lm_head.", r"^inner\.": "model."}


def rename_legacy_key(key: str) -> str:
    """Today's name of a weight saved before the backbone / head split (`inner.*`); other names as they are."""
    for pattern, replacement in LEGACY_KEY_MAPPING.items():
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key, count=1)
    return key


def rename_legacy_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """`state` with the names of weights saved before the backbone / head split renamed to today's."""
    return {rename_legacy_key(key): value for key, value in state.items()}


def _as_config(config: HRMConfig | Mapping[str, Any]) -> HRMConfig:
    """A validated config from an HRMConfig or a mapping of HRM keys (a shipped copy's config is another class
    object: any PretrainedConfig is taken)."""
    if not isinstance(config, PretrainedConfig):
        config = HRMConfig.from_arch(dict(config))
    config.validate_hrm()
    return config  # type: ignore[return-value]


class HrmCodegenPreTrainedModel(PreTrainedModel):
    """What the HRM's transformers classes share: the config class, the backbone's name (`model`), gradient
    checkpointing of the level calls, and loading weights saved before the backbone / head split."""

    config_class = HRMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HierarchicalReasoningModel_ACTV1Block"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """Parameters: nothing (the modules initialise themselves; loaded weights overwrite that). The RoPE tables,
        which are not saved, are recomputed: transformers loads into a model built on the meta device."""
        if isinstance(module, RotaryEmbedding) and not module.cos_cached.is_meta:
            module.reset_tables()

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """transformers' `from_pretrained`; weights saved before the backbone / head split (`inner.*`) load
        under today's names, and the model saves under today's names (`save_pretrained`)."""
        kwargs.setdefault("key_mapping", dict(LEGACY_KEY_MAPPING))
        model: Any = super().from_pretrained(*args, **kwargs)
        # transformers re-saves in the layout a checkpoint was read from; this one is the past, not a format.
        conversions = getattr(model, "_weight_conversions", None)
        if conversions:
            legacy = set(LEGACY_KEY_MAPPING)
            model._weight_conversions = [
                c for c in conversions if not set(getattr(c, "_original_source_patterns", ())) <= legacy
            ]
        return model


class HrmCodegenModel(HrmCodegenPreTrainedModel):
    """The HRM without its LM head (transformers' backbone): token embeddings, the H and L levels run
    H_cycles x (L_cycles L calls + one H call) per segment with gradient through the last bp_steps, and the final
    norm. `forward` returns the states the LM head reads after halt_max_steps fresh segments
    (`BaseModelOutputWithPast`); `forward_segment` runs one ACT segment from a carry (upstream's inner forward
    without the head), and `q_logits` is upstream's Q-head (`enable_q_head`) on its last real token.
    """

    def __init__(self, config: HRMConfig | Mapping[str, Any], embed_tokens: CastedEmbedding | None = None):
        """`embed_tokens`: the token table when the causal LM built it (before its head, so the random draws and the
        parameter order are those of upstream's single `inner` module)."""
        config = _as_config(config)
        super().__init__(config)
        self.config: HRMConfig
        dtype = config.forward_torch_dtype
        embed_init_std = 1.0 / math.sqrt(config.hidden_size)
        self.embed_scale = math.sqrt(config.hidden_size) if config.scale_embeddings else 1.0
        if embed_tokens is None:
            embed_tokens = CastedEmbedding(config.vocab_size, config.hidden_size, embed_init_std, dtype)
        self.embed_tokens: CastedEmbedding = embed_tokens
        if config.enable_q_head:
            self.q_head = CastedLinear(config.hidden_size, 2, bias=True)
            with torch.no_grad():  # start by almost never halting
                self.q_head.weight.zero_()
                self.q_head.bias.fill_(-5.0)  # type: ignore[union-attr]
        if config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(
                config.hidden_size // config.num_heads, config.seq_len, config.rope_theta
            )
        else:
            self.embed_pos = CastedEmbedding(config.seq_len, config.hidden_size, embed_init_std, dtype)

        level_norms = config.norm_type == "pre" and config.final_norm == "levels"
        gate_lr_scale = config.recurrence_gate_lr_scale if config.recurrence_gates else None

        def level(num_layers: int) -> HierarchicalReasoningModel_ACTV1ReasoningModule:
            norm = (
                RMSNorm(config.hidden_size, config.rms_norm_eps, config.norm_weights) if level_norms else None
            )
            blocks = [HierarchicalReasoningModel_ACTV1Block(config) for _ in range(num_layers)]
            return HierarchicalReasoningModel_ACTV1ReasoningModule(
                blocks, norm, gate_lr_scale, config.hidden_size, config.recurrence_gate_nonneg
            )

        self.H_level = level(config.H_layers)
        self.L_level = level(config.L_layers)
        # final_norm='head': one norm between the last H state and the head (a Llama's model.norm).
        self.norm = (
            RMSNorm(config.hidden_size, config.rms_norm_eps, config.norm_weights)
            if config.norm_type == "pre" and config.final_norm == "head"
            else None
        )
        # Gradient-carrying level evaluations; config.bp_steps, changed at run time by the bp warm-up.
        self.bp_steps = config.bp_steps
        # The cycles the forward runs: the config's, changed at run time by a cycles schedule or test-time use.
        self.H_cycles, self.L_cycles = config.H_cycles, config.L_cycles
        self.H_init: torch.Tensor
        self.L_init: torch.Tensor
        init_std = 0.0 if config.zero_init_states else 1.0
        self.register_buffer("H_init", trunc_normal_init_(torch.empty(config.hidden_size), std=init_std))
        self.register_buffer("L_init", trunc_normal_init_(torch.empty(config.hidden_size), std=init_std))
        if config.exit_gate:  # built last: the random draws of every other parameter stay as without it
            self.exit_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
            self.exit_head = CastedLinear(config.hidden_size, 1, bias=True)
            with torch.no_grad():  # p(exit) = 0.5 everywhere until trained
                self.exit_head.weight.zero_()
        # Decoding with per-token exits (`HrmCodegenForCausalLM.set_exit_threshold`): the threshold, and the
        # [tokens, layer evaluations] of the one-token cached steps run with it since the last reset.
        # `exit_skip_calls`: calls in which every row has exited are not run (False: computed and masked, for tests).
        self.exit_threshold: float | None = None
        self.exit_stats = [0, 0]
        self.exit_skip_calls = True
        self.exit_skipped_layers = 0  # layer evaluations not run (per decoding step, all rows)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def _input_embeddings(
        self,
        input_ids: torch.Tensor | None,
        position_ids: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The input injection: token embeddings (`inputs_embeds` stand for `embed_tokens(input_ids)`), learned
        positions where configured, scaled by embed_scale."""
        if inputs_embeds is not None:
            embedding = inputs_embeds.to(self.config.forward_torch_dtype)
        else:
            assert input_ids is not None, "input_ids or inputs_embeds"
            embedding = self.embed_tokens(input_ids.to(torch.int32))
        if self.config.pos_encodings == "learned":
            if not torch.compiler.is_compiling() and int(position_ids.max()) >= self.config.seq_len:
                raise ValueError(f"position {int(position_ids.max())} exceeds seq_len={self.config.seq_len}")
            embedding = 0.707106781 * (embedding + self.embed_pos(position_ids))
        return self.embed_scale * embedding

    def empty_carry(self, batch_size: int, seq_len: int, device: torch.device | None = None):
        """Uninitialised carry of shape [B, S, hidden]; reset it before use."""
        shape = (batch_size, seq_len, self.config.hidden_size)
        return HierarchicalReasoningModel_ACTV1InnerCarry(
            z_H=torch.empty(shape, dtype=self.config.forward_torch_dtype, device=device),
            z_L=torch.empty(shape, dtype=self.config.forward_torch_dtype, device=device),
        )

    def reset_carry(self, reset_flag: torch.Tensor, carry: HierarchicalReasoningModel_ACTV1InnerCarry):
        """Replace the carry of sequences where `reset_flag` [B] is set by H_init / L_init."""
        flag = reset_flag.view(-1, 1, 1)
        return HierarchicalReasoningModel_ACTV1InnerCarry(
            z_H=torch.where(flag, self.H_init.to(carry.z_H.dtype), carry.z_H),
            z_L=torch.where(flag, self.L_init.to(carry.z_L.dtype), carry.z_L),
        )

    def cache_slot(self, segment: int, h_step: int, l_step: int | None, level: str) -> int:
        """The KV-cache slot (a transformers `Cache` layer index) of the first layer of one level call.

        A segment's calls in order: for each H cycle, L_cycles L-level calls then one H-level call, each
        taking as many slots as its level has layers. Layer i of the call writes slot + i.
        """
        cfg = self.config
        per_cycle = self.L_cycles * cfg.L_layers + cfg.H_layers
        base = (segment * self.H_cycles + h_step) * per_cycle
        if level == "L":
            assert l_step is not None, "an L-level call has its L cycle"
            return base + l_step * cfg.L_layers
        return base + self.L_cycles * cfg.L_layers

    def forward_segment(
        self,
        carry: HierarchicalReasoningModel_ACTV1InnerCarry,
        input_ids: torch.Tensor | None,
        position_ids: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        segment: int = 0,
        inputs_embeds: torch.Tensor | None = None,
        continued: bool | torch.Tensor = False,
        detach: bool = True,
        exit_points: list[ExitPoint] | None = None,
        exits: DecodeExits | None = None,
    ) -> tuple[HierarchicalReasoningModel_ACTV1InnerCarry, torch.Tensor]:
        """Run one segment; returns (new carry, the states the head reads [B, S, hidden]).

        `attn_mask` is a boolean [B, 1, S, K] mask (`build_attn_mask`), None for unpadded input; `cache` a
        transformers `Cache` whose slots this segment's calls write (`cache_slot`). `continued` (gate_later_segments:
        True, or per row a [B] tensor): the segment starts from a carried state, so its first calls are gated too.
        `detach=False` keeps the new carry in the graph (deep supervision through segments). `exit_points` (the
        exit gate's training, uncached): a list to which every L step appends its `ExitPoint`. `exits`: per-token
        exits of a one-token cached decoding step (`DecodeExits`).
        """
        attn_kwargs: dict[str, Any] = {"attn_mask": attn_mask, "cache": cache}
        if self.config.pos_encodings == "rope":
            attn_kwargs["cos_sin"] = self.rotary_emb(position_ids)
        x = self._input_embeddings(input_ids, position_ids, inputs_embeds)
        h_cycles, l_cycles = self.H_cycles, self.L_cycles

        z_H, z_L = carry.z_H, carry.z_L
        # Gradient only through the last `h_grad` H steps and the last `l_grad` L steps (bp_steps in all);
        # the default bp_steps=2 is upstream's 1-step gradient: the last L step and the last H step.
        h_grad, l_grad = gradient_steps(self.bp_steps, h_cycles, l_cycles)
        first_l_grad = h_cycles * l_cycles - l_grad
        for h_step in range(h_cycles):
            for l_step in range(l_cycles):
                l_index = h_step * l_cycles + l_step
                slot = self.cache_slot(segment, h_step, l_step, "L") if cache is not None else None
                if exits is not None and exits.skips("L"):  # every token has exited: the call is not run
                    assert slot is not None, "per-token exits decode over a cache"
                    exits.skipped("L", cache, slot, self.config.L_layers)
                    continue
                with _grad_if(l_index >= first_l_grad):
                    gated = True if l_index > 0 else continued
                    new_L = self.L_level(z_L, z_H + x, slot=slot, gated=gated, **attn_kwargs)
                if exits is not None:
                    assert slot is not None, "per-token exits decode over a cache"
                    last = exits.final_segment and l_index == h_cycles * l_cycles - 1
                    new_L = exits.after_L(self, z_L, new_L, cache, slot, last)
                z_L = new_L
                if exit_points is not None and l_step < l_cycles - 1:  # read out through this cycle's H call
                    with torch.no_grad():
                        gated_H = True if h_step > 0 else continued
                        readout = self.H_level(z_H, z_L, gated=gated_H, **{**attn_kwargs, "cache": None})
                    exit_points.append(ExitPoint(self.exit_logits(z_L.detach()), self._head_states(readout)))
            slot = self.cache_slot(segment, h_step, None, "H") if cache is not None else None
            if exits is not None and exits.skips("H"):
                assert slot is not None, "per-token exits decode over a cache"
                exits.skipped("H", cache, slot, self.config.H_layers)
                continue
            with _grad_if(h_step >= h_cycles - h_grad):
                gated = True if h_step > 0 else continued
                new_H = self.H_level(z_H, z_L, slot=slot, gated=gated, **attn_kwargs)
            if exits is not None:
                assert slot is not None, "per-token exits decode over a cache"
                new_H = exits.after_H(self, z_H, new_H, cache, slot)
            z_H = new_H
            if exit_points is not None:
                exit_points.append(ExitPoint(self.exit_logits(z_L.detach()), self._head_states(z_H.detach())))

        new_carry = HierarchicalReasoningModel_ACTV1InnerCarry(z_H=z_H, z_L=z_L)
        if detach:
            new_carry = HierarchicalReasoningModel_ACTV1InnerCarry(z_H=z_H.detach(), z_L=z_L.detach())
        return new_carry, self._head_states(z_H)

    def _head_states(self, z_H: torch.Tensor) -> torch.Tensor:
        """What the LM head reads of an H state: itself, or with final_norm='head' its norm."""
        return z_H if self.norm is None else self.norm(z_H)

    def exit_logits(self, z_L: torch.Tensor) -> torch.Tensor:
        """The exit gate's logits [B, S] in fp32 from an L state [B, S, hidden] (config.exit_gate): sigmoid of it
        is the probability that another step no longer lowers the token's loss."""
        if not self.config.exit_gate:
            raise ValueError("this HRM has no exit gate (exit_gate=false)")
        return self.exit_head(self.exit_norm(z_L)).squeeze(-1).to(torch.float32)

    def q_logits(
        self, hidden_states: torch.Tensor, last_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(q_halt, q_continue) [B] in fp32 from the states of each row's last real token (`last_index` [B],
        default the last position): under causal attention only that token has seen the whole sequence."""
        batch = hidden_states.shape[0]
        if last_index is None:
            last_index = torch.full((batch,), hidden_states.shape[1] - 1, device=hidden_states.device)
        summary = hidden_states[torch.arange(batch, device=hidden_states.device), last_index]
        q = self.q_head(summary).to(torch.float32)
        return q[..., 0], q[..., 1]

    def _batch_views(self, data: Mapping[str, torch.Tensor]):
        """(input_ids, position_ids, attn_mask, last_index) for an uncached batch dict.

        Optional keys: `attention_mask` [B, S] (1 = real token), `position_ids`, `segment_ids`
        (packed batches: example index per token; attention never crosses examples) and `token_type_ids`
        (1 on prompt tokens: bidirectional among themselves when config.prefix_lm, ignored otherwise).
        """
        input_ids = data["input_ids"]
        token_type_ids = data.get("token_type_ids") if self.config.prefix_lm else None
        prefix = (
            token_type_ids == 1 if token_type_ids is not None and bool((token_type_ids == 1).any()) else None
        )
        mask = data.get("attention_mask")
        segment_ids = data.get("segment_ids")
        position_ids = data.get("position_ids")
        if position_ids is None:
            position_ids = default_position_ids(input_ids, mask)
        key_mask = mask.bool() if mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        needs_mask = segment_ids is not None or prefix is not None or not bool(key_mask.all())
        attn_mask = (
            build_attn_mask(key_mask, input_ids.shape[1], self.config.causal, segment_ids, prefix)
            if needs_mask
            else None
        )
        last_index = last_real_index(mask) if mask is not None else None
        return input_ids, position_ids, attn_mask, last_index

    def _cached_views(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        prefix_mask: torch.Tensor | None,
        cache: Cache,
        cache_columns: torch.Tensor | None,
    ):
        """(position_ids, attn_mask) of a cached step: `input_ids` [B, S] are the new positions.

        `attention_mask` [B, K] covers the cache's key columns (transformers' convention: the cached and the
        new positions; a static cache's whole buffer, False where nothing is written). `cache_columns` [S]: the
        columns the new positions are written at (default: the last S of K). `prefix_mask` [B, P <= K] marks
        the prompt tokens (PrefixLM) from column 0 on.
        """
        batch, new = input_ids.shape
        if attention_mask is None:
            past = int(cache.get_seq_length())
            attention_mask = torch.ones(batch, past + new, dtype=torch.bool, device=input_ids.device)
        key_mask = attention_mask.bool()
        width = key_mask.shape[1]
        if cache_columns is None:
            cache_columns = torch.arange(width - new, width, device=input_ids.device)
        if position_ids is None:  # real tokens before each new position
            position_ids = default_position_ids(input_ids, key_mask)[:, cache_columns]
        prefix = None
        if prefix_mask is not None and self.config.prefix_lm:
            prefix = F.pad(prefix_mask.bool(), (0, width - prefix_mask.shape[1]), value=False)
        attn_mask = build_attn_mask(key_mask, new, self.config.causal, None, prefix, cache_columns)
        return position_ids, attn_mask

    def _check_cache_layout(self, cache: Cache, segments: int) -> None:
        """Refuse a cache filled by another layout of calls: each (segment, cycle, level, layer) has a fixed slot,
        so a step that runs other cycles or segments than the prefill would read another call's keys."""
        layout = (segments, self.H_cycles, self.L_cycles, self.config.L_layers, self.config.H_layers)
        recorded = getattr(cache, "hrm_layout", None)
        if recorded is None:
            cache.hrm_layout = layout  # type: ignore[attr-defined]
        elif recorded != layout:
            raise RuntimeError(
                f"KV cache: filled with (segments, H_cycles, L_cycles, L_layers, H_layers) = {recorded}, but this "
                f"step runs {layout}; every step must make the prefill's attention calls"
            )
        slots = self.cache_slot(segments, 0, 0, "L")  # the first slot after the last segment's
        fixed = getattr(cache, "layer_class_to_replicate", None) is None
        if fixed and len(cache.layers) < slots:
            raise ValueError(
                f"KV cache: {len(cache.layers)} layers for {slots} attention calls per step (one slot per "
                "(segment, H cycle, L cycle, level, layer)); build it from the model's config"
            )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        prefix_mask: torch.Tensor | None = None,
        cache_columns: torch.Tensor | None = None,
        num_segments: int | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """The states the LM head reads, [B, S, hidden], after `num_segments` (default halt_max_steps) fresh
        segments, as `last_hidden_state`, with the cache.

        Give `input_ids` [B, S] or `inputs_embeds` [B, S, hidden] (standing for `embed_tokens(input_ids)`).
        Without a cache, `attention_mask` [B, S] marks the real tokens and `token_type_ids` [B, S] (1 = prompt
        token) makes the prompt bidirectional when config.prefix_lm (ignored otherwise). With a transformers
        `Cache` (`past_key_values`, or `cache`, its name in recent transformers; `use_cache` makes a
        `DynamicCache`), the inputs are only the new positions, `attention_mask` covers the cache's keys (see
        `_cached_views`, `cache_columns` the columns a static cache writes at), and `prefix_mask` [B, P] or, at
        the prefill, `token_type_ids` mark the prompt.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("the HRM takes exactly one of input_ids or inputs_embeds")
        cache = kwargs.get("cache")
        cache = past_key_values if cache is None else cache
        if use_cache and cache is None:
            cache = DynamicCache()
        if cache is not None and not self.config.causal:
            raise ValueError("the KV cache needs causal attention (causal=true); pass use_cache=False")
        shape_ids = input_ids
        if shape_ids is None:  # the mask and position helpers read only the shape and device
            assert inputs_embeds is not None
            shape_ids = inputs_embeds.new_zeros(inputs_embeds.shape[:2], dtype=torch.long)
        segments = num_segments or self.config.halt_max_steps
        if cache is None:
            batch = {"input_ids": shape_ids}
            if attention_mask is not None:
                batch["attention_mask"] = attention_mask
            if token_type_ids is None and prefix_mask is not None:  # generated columns are not prompt
                width = shape_ids.shape[1] - prefix_mask.shape[1]
                token_type_ids = F.pad(prefix_mask.long(), (0, width), value=0)
            if token_type_ids is not None:
                batch["token_type_ids"] = token_type_ids
            if position_ids is not None:
                batch["position_ids"] = position_ids
            _, position_ids, attn_mask, _ = self._batch_views(batch)
        else:
            self._check_cache_layout(cache, segments)
            if prefix_mask is None and token_type_ids is not None:
                prefix_mask = token_type_ids == 1
            position_ids, attn_mask = self._cached_views(
                shape_ids, attention_mask, position_ids, prefix_mask, cache, cache_columns
            )
        assert position_ids is not None
        batch_size, seq_len = shape_ids.shape
        carry = self.reset_carry(
            torch.ones(batch_size, dtype=torch.bool, device=shape_ids.device),
            self.empty_carry(batch_size, seq_len, shape_ids.device),
        )
        # Per-token exits (set_exit_threshold) in one-token cached steps; the prefill runs every call.
        exits = None
        if self.exit_threshold is not None and cache is not None and seq_len == 1:
            exits = DecodeExits(
                self.exit_threshold, shape_ids.shape, shape_ids.device, cache_columns, self.exit_skip_calls
            )
        hidden_states = carry.z_H
        for segment in range(segments):  # earlier segments only feed the carry
            if exits is not None:
                exits.final_segment = segment == segments - 1
            carry, hidden_states = self.forward_segment(
                carry,
                input_ids,
                position_ids,
                attn_mask,
                cache,
                segment,
                inputs_embeds,
                continued=segment > 0 and self.config.gate_later_segments,
                exits=exits,
            )
        if exits is not None:
            self.exit_stats[0] += exits.layer_evals.numel()
            self.exit_stats[1] += int(exits.layer_evals.sum())
            self.exit_skipped_layers += exits.skipped_layers
        output = BaseModelOutputWithPast(last_hidden_state=hidden_states)
        if cache is not None:
            output[_cache_field(BaseModelOutputWithPast)] = cache
        return output


class HrmCodegenForCausalLM(HrmCodegenPreTrainedModel, GenerationMixin):
    """The HRM as a transformers causal LM: the backbone `model` (`HrmCodegenModel`) and the LM head, `lm_head`,
    or the embedding table when tie_word_embeddings.

    `forward(input_ids=..., attention_mask=..., cache=...)` returns the logits of halt_max_steps fresh segments
    (what `generate`, evaluation and trainers such as TRL use); `forward(carry, batch)` runs one ACT segment
    per call (upstream's interface: `initial_carry`, deep supervision, the Q-head).
    """

    def __init__(self, config: HRMConfig | Mapping[str, Any]):  # noqa: D107
        config = _as_config(config)
        super().__init__(config)
        self.config: HRMConfig
        # Built before the head and handed to the backbone: the random draws stay those of upstream's single `inner`
        # module, and so does the parameter order within each optimizer group (a saved optimizer state resumes;
        # not with train.decay_embeddings, where the table and the head now come in the other order).
        embed_tokens = CastedEmbedding(
            config.vocab_size,
            config.hidden_size,
            1.0 / math.sqrt(config.hidden_size),
            config.forward_torch_dtype,
        )
        # Tied: the head reads embed_tokens' table (no lm_head parameter).
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else CastedLinear(config.hidden_size, config.vocab_size, bias=False)
        )
        self.model = HrmCodegenModel(config, embed_tokens)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        """The head's module: `lm_head`, or with tie_word_embeddings the embedding table (its `weight` is the
        table); logits = hidden states @ weight.T either way."""
        return self.lm_head if self.lm_head is not None else self.model.embed_tokens

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """LM-head logits: `lm_head`, or the embedding table when tie_word_embeddings."""
        if self.lm_head is not None:
            return self.lm_head(hidden_states)
        table = self.model.embed_tokens.embedding_weight
        return F.linear(hidden_states, table.to(hidden_states.dtype))

    @property
    def cycles(self) -> tuple[int, int]:
        """(H_cycles, L_cycles) the forward runs now: the config's unless `set_cycles` changed them."""
        return self.model.H_cycles, self.model.L_cycles

    def set_cycles(self, H_cycles: int, L_cycles: int) -> None:  # noqa: N803 - upstream's key names
        """Run `H_cycles` x `L_cycles` from now on (a cycles schedule, test-time recurrence); the parameters
        do not depend on the cycle counts. A bp_steps above these cycles' steps backpropagates through all
        (bp_steps 0, in the config and in the forward). The config follows, so a cache built from it
        (`StaticCache(config=...)`) has the slots they need."""
        for key, value in (("H_cycles", H_cycles), ("L_cycles", L_cycles)):
            if int(value) < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        self.model.H_cycles, self.model.L_cycles = int(H_cycles), int(L_cycles)
        self.config.H_cycles, self.config.L_cycles = int(H_cycles), int(L_cycles)
        # The config stays valid: a bp_steps above these cycles' steps is full backpropagation, bp_steps 0; the
        # forward's bp_steps agrees (a bp warm-up sets its own after this).
        target = self.__dict__.setdefault("_config_bp_steps", self.config.bp_steps)
        self.config.bp_steps = 0 if target > self.config.max_bp_steps else target
        self.model.bp_steps = self.config.bp_steps

    @property
    def configured_bp_steps(self) -> int:
        """The config's bp_steps as built (set_cycles may lower config.bp_steps to 0 for fewer cycles)."""
        return self.__dict__.get("_config_bp_steps", self.config.bp_steps)

    @property
    def bp_steps(self) -> int:
        """Gradient-carrying level evaluations now: config.bp_steps unless the bp warm-up set another."""
        return self.model.bp_steps

    @bp_steps.setter
    def bp_steps(self, value: int) -> None:
        check_bp_steps(value, *self.cycles)
        self.model.bp_steps = int(value)

    def set_exit_threshold(self, threshold: float | None) -> None:
        """Decode with per-token exits (config.exit_gate): in every one-token cached step a token stops its
        recurrence after the first L step whose exit probability exceeds `threshold` (1.0 never exits early: the
        fixed-cycle output); None turns exits off. Resets `exit_stats`."""
        if threshold is not None:
            if not self.config.exit_gate:
                raise ValueError(
                    "exit threshold: this HRM has no exit gate (arch.exit_gate=false); train one with "
                    "arch.exit_gate=true to decode with per-token exits"
                )
            if not 0.0 <= float(threshold) <= 1.0:
                raise ValueError(f"exit threshold must be between 0 and 1, got {threshold}")
            threshold = float(threshold)
        self.model.exit_threshold = threshold
        self.model.exit_stats = [0, 0]
        self.model.exit_skipped_layers = 0

    @property
    def full_layer_evals_per_token(self) -> int:
        """Layer evaluations per token of a forward that runs every call: halt_max_steps segments."""
        return self.config.halt_max_steps * self.config.layer_evals_per_segment

    def exit_summary(self) -> dict[str, float | int | None]:
        """Decoding with exits since `set_exit_threshold`: the one-token steps' tokens, their layer evaluations
        (those a real exit runs) and the mean per token, beside the full count; `skipped_layer_evals`: the layer
        evaluations of calls no row of its batch ran (at batch 1 every exit's saving, in larger batches only calls
        all rows had left; the other calls compute every row and mask)."""
        tokens, evals = self.model.exit_stats
        return {
            "threshold": self.model.exit_threshold,
            "decode_tokens": tokens,
            "layer_evals": evals,
            "mean_layer_evals_per_token": evals / tokens if tokens else None,
            "full_layer_evals_per_token": self.full_layer_evals_per_token,
            "skipped_layer_evals": self.model.exit_skipped_layers,
        }

    def segments_forward(
        self,
        batch: dict[str, torch.Tensor],
        segments: int,
        detach_carry: bool = True,
        exit_points: bool = False,
    ) -> dict[str, Any]:
        """`segments` segments of one batch from a fresh carry, the carry passed on (detached or not): the logits
        after each (`segment_logits`, deep supervision), and with `exit_points` every L step's `ExitPoint`."""
        ids, pos, attn_mask, _ = self.model._batch_views(batch)
        batch_size, seq_len = ids.shape
        carry = self.model.reset_carry(
            torch.ones(batch_size, dtype=torch.bool, device=ids.device),
            self.model.empty_carry(batch_size, seq_len, ids.device),
        )
        points: list[ExitPoint] | None = [] if exit_points else None
        logits = []
        for segment in range(segments):
            carry, states = self.model.forward_segment(
                carry,
                ids,
                pos,
                attn_mask,
                continued=segment > 0 and self.config.gate_later_segments,
                detach=detach_carry,
                exit_points=points,
            )
            logits.append(self.head(states))
        return {"segment_logits": logits, "exit_points": points}

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> HierarchicalReasoningModel_ACTV1Carry:
        """A carry in which every sequence is halted, so the first `forward` loads `batch` and resets."""
        batch_size, seq_len = batch["input_ids"].shape
        device = batch["input_ids"].device
        return HierarchicalReasoningModel_ACTV1Carry(
            inner_carry=self.model.empty_carry(batch_size, seq_len, device),
            steps=torch.zeros(batch_size, dtype=torch.int32, device=device),
            halted=torch.ones(batch_size, dtype=torch.bool, device=device),
            current_data={k: torch.zeros_like(v) for k, v in batch.items()},
        )

    def forward(
        self,
        carry: HierarchicalReasoningModel_ACTV1Carry | torch.Tensor | None = None,
        batch: dict[str, torch.Tensor] | None = None,
        *,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        prefix_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache_columns: torch.Tensor | None = None,
        return_dict: bool | None = None,
        segments: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """`forward(carry, batch)`: one ACT segment (returns (new carry, outputs)); `forward(batch=..., segments=M,
        ...)`: `segments_forward` (deep supervision, the exit gate's training). Otherwise a causal LM step
        (`model(input_ids)` too): the backbone's states (`HrmCodegenModel.forward`, which takes the other
        arguments) through the head, for the last `logits_to_keep` positions (0: all; or a tensor of indices),
        a loss with `labels` (next-token cross-entropy, -100 ignored), and the cache when one is used."""
        if isinstance(carry, torch.Tensor) and batch is None and input_ids is None:
            carry, input_ids = None, carry  # the transformers call model(input_ids)
        if segments is not None:
            if batch is None or carry is not None:
                raise ValueError(
                    "the segments forward takes a batch and no carry: model(batch=..., segments=M)"
                )
            return self.segments_forward(batch, segments, **kwargs)
        if carry is not None or batch is not None:
            if not isinstance(carry, HierarchicalReasoningModel_ACTV1Carry) or batch is None:
                raise ValueError("the ACT forward takes both carry and batch: model(carry, batch)")
            return self.act_forward(carry, batch)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            inputs_embeds=inputs_embeds,
            token_type_ids=token_type_ids,
            prefix_mask=prefix_mask,
            cache_columns=cache_columns,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.head(hidden_states[:, keep])
        loss = None
        if labels is not None:
            shifted = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            loss = F.cross_entropy(shifted, labels[:, 1:].reshape(-1), ignore_index=-100)
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        output = CausalLMOutputWithPast(loss=loss, logits=logits)
        cache = outputs.get(_cache_field(BaseModelOutputWithPast))
        if cache is not None:
            output[_cache_field(CausalLMOutputWithPast)] = cache
        return output

    def act_forward(self, carry: HierarchicalReasoningModel_ACTV1Carry, batch: dict[str, torch.Tensor]):
        """One ACT segment: halted sequences restart on `batch`; returns (new carry, outputs)."""
        cfg = self.config
        inner_carry = self.model.reset_carry(carry.halted, carry.inner_carry)
        steps = torch.where(carry.halted, 0, carry.steps)
        current_data = {
            k: torch.where(carry.halted.view((-1,) + (1,) * (v.ndim - 1)), batch[k], v)
            for k, v in carry.current_data.items()
        }
        ids, pos, attn_mask, last_index = self.model._batch_views(current_data)
        continued = ~carry.halted if cfg.gate_later_segments else False  # rows going on from their carry
        inner_carry, hidden_states = self.model.forward_segment(
            inner_carry, ids, pos, attn_mask, continued=continued
        )
        outputs: dict[str, torch.Tensor] = {"logits": self.head(hidden_states)}
        q = self.model.q_logits(hidden_states, last_index) if cfg.enable_q_head else None
        if q is not None:
            outputs["q_halt_logits"], outputs["q_continue_logits"] = q

        with torch.no_grad():
            steps = steps + 1
            is_last_step = steps >= cfg.halt_max_steps
            halted = is_last_step
            if self.training and q is not None and cfg.halt_max_steps > 1:
                q_halt, q_continue = q
                halted = halted | (q_halt > q_continue)
                explore = torch.rand_like(q_halt) < cfg.halt_exploration_prob
                min_halt_steps = explore * torch.randint_like(steps, low=2, high=cfg.halt_max_steps + 1)
                halted = halted & (steps >= min_halt_steps)
                _, next_states = self.model.forward_segment(
                    inner_carry, ids, pos, attn_mask, continued=bool(cfg.gate_later_segments)
                )
                next_halt, next_continue = self.model.q_logits(next_states, last_index)
                outputs["target_q_continue"] = torch.sigmoid(
                    torch.where(is_last_step, next_halt, torch.maximum(next_halt, next_continue))
                )
        return HierarchicalReasoningModel_ACTV1Carry(inner_carry, steps, halted, current_data), outputs

    def lm_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        num_segments: int | None = None,
        cache: Cache | None = None,
        logits_to_keep: int = 0,
        prefix_mask: torch.Tensor | None = None,
        cache_columns: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Plain LM use: logits [B, S, vocab] after `num_segments` (default halt_max_steps) fresh segments
        (`HrmCodegenModel.forward` describes the arguments; `logits_to_keep` > 0 keeps the last that many)."""
        return self(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            num_segments=num_segments,
            cache=cache,
            logits_to_keep=logits_to_keep,
            prefix_mask=prefix_mask,
            cache_columns=cache_columns,
        ).logits

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        prefix_mask: torch.Tensor | None = None,
        use_cache: bool | None = True,
        logits_to_keep: int | None = None,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """One decoding step's inputs: the positions not yet cached, the mask over the cache's keys (for a static
        cache the whole buffer, with the columns written at: constant shapes, so a compiled step compiles once),
        their positions, and the prompt marks. Prompts are left-padded, as transformers expects. `cache` is
        transformers' name for the cache (`generate(cache=StaticCache(...))` passes a caller's own)."""
        cache = cache if cache is not None else kwargs.get("past_key_values")
        past = int(cache.get_seq_length()) if cache is not None else 0
        new_ids = input_ids[:, past:]
        new = new_ids.shape[1]
        if attention_mask is None:  # transformers may drop a mask of ones; the static cache needs one
            attention_mask = torch.ones_like(input_ids)
        # fresh strides: a slice's row stride grows with the sequence, and a compiled step guards on it
        new_ids = new_ids.clone(memory_format=torch.contiguous_format)
        inputs: dict[str, Any] = {"input_ids": new_ids, "use_cache": use_cache, "cache": cache}
        if attention_mask is not None:
            if cache is not None and cache.is_compileable:
                width = int(_max_cache_length(cache))
                attention_mask = F.pad(attention_mask, (0, width - attention_mask.shape[1]), value=0)
                inputs["cache_columns"] = torch.arange(past, past + new, device=input_ids.device)
            inputs["attention_mask"] = attention_mask
        if position_ids is None and attention_mask is not None:  # real tokens before each position
            position_ids = default_position_ids(input_ids, attention_mask)[:, past : past + new]
        if position_ids is not None:  # rows that finished keep stepping on pad tokens: keep them in the table
            inputs["position_ids"] = position_ids[:, -new:].clamp(max=self.config.seq_len - 1)
        if prefix_mask is not None:
            inputs["prefix_mask"] = prefix_mask
        elif token_type_ids is not None and past == 0:  # the prompt's marks; later columns are generated text
            inputs["prefix_mask"] = token_type_ids == 1
        if logits_to_keep is not None:
            inputs["logits_to_keep"] = logits_to_keep
        return inputs


HierarchicalReasoningModel_ACTV1 = HrmCodegenForCausalLM  # upstream's name for the ACT model


def _max_cache_length(cache: Cache) -> int:
    """The key columns of a static cache (`get_max_length` in recent transformers, `get_max_cache_shape` before)."""
    getter = getattr(cache, "get_max_length", None) or getattr(cache, "get_max_cache_shape")  # noqa: B009
    return int(getter())
