"""Hierarchical Reasoning Model (ACT v1) for autoregressive code generation.

A re-implementation of Sapient's HRM (sapientinc/HRM, Apache-2.0, `models/hrm/hrm_act_v1.py` at the
commit recorded in `UPSTREAM_COMMIT`) with upstream's parameter names and config keys, and these patches:
causal attention (`causal`), an `input_ids` embedding path without puzzle embeddings, the Q-head/ACT
halting behind `enable_q_head`, 1-D RoPE (or learned positions), and a KV cache for generation.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from hrm_codegen.models.layers import (
    ATTN_BACKENDS,
    Attention,
    CastedEmbedding,
    CastedLinear,
    KVCache,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    build_attn_mask,
    trunc_normal_init_,
)

UPSTREAM_COMMIT = "af3e8b1"  # sapientinc/HRM, 2025-07-31: the architecture this port follows


@dataclass
class HRMConfig:
    """Model configuration; keys and defaults follow upstream `config/arch/hrm_v1.yaml` plus the codegen keys."""

    vocab_size: int = 50257
    seq_len: int = 512
    batch_size: int = 1  # kept for upstream config compatibility; the model does not depend on it
    H_cycles: int = 2
    L_cycles: int = 2
    H_layers: int = 4
    L_layers: int = 4
    hidden_size: int = 512
    expansion: float = 4.0
    num_heads: int = 8
    pos_encodings: str = "rope"
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    halt_max_steps: int = 1
    halt_exploration_prob: float = 0.1
    forward_dtype: str = "float32"
    puzzle_emb_ndim: int = 0
    num_puzzle_identifiers: int = 0
    causal: bool = True
    enable_q_head: bool = False
    attn_backend: str = "auto"
    # PrefixLM: tokens with token_type_ids == 1 (BOS and the prompt) attend bidirectionally within their prompt.
    prefix_lm: bool = False
    # Level evaluations (H and L steps together) that carry gradient; 2 = upstream's 1-step gradient.
    bp_steps: int = 2
    norm_type: str = "post"  # post (upstream) or pre (HRM-Text: pre-norm blocks, each level ends with a norm)
    # What real (retrofitted) checkpoints need; each off by default, so the defaults stay upstream's model.
    num_key_value_heads: int | None = None  # grouped-query attention; null = num_heads
    intermediate_size: int | None = None  # the SwiGLU width; null = from `expansion` as upstream
    attention_bias: bool = False  # biases on the q, k, v projections (Qwen2)
    norm_weights: bool = False  # RMSNorms with a learnable scale (a source's norms); false = scale-free
    final_norm: str = (
        "levels"  # pre-norm: "levels" (each level ends with a norm) or "head" (one, before the head)
    )
    scale_embeddings: bool = True  # multiply the token embeddings by sqrt(hidden_size) (upstream)
    tie_word_embeddings: bool = False  # the LM head reads the embedding table
    zero_init_states: bool = False  # z_H and z_L start at zero instead of the H_init / L_init vectors
    # Function-preserving recurrence: every level call after a level's first in a segment is gated,
    # z <- z + gate * (level(z + injection) - z) with a zero-initialised gate vector per level, so a retrofitted
    # model computes its source at any cycle count until training opens the gates. The gates learn with the
    # learning rate times recurrence_gate_lr_scale (AdamW moves a parameter ~lr per step; a bare gate would
    # barely open in a short fine-tune, and a scale inside the forward would inflate its gradient over the
    # global clipping norm).
    recurrence_gates: bool = False
    recurrence_gate_lr_scale: float = 100.0

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> HRMConfig:
        """Build and validate a config from a plain mapping (unknown keys are an error)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown HRM config key(s) {unknown}; expected a subset of {sorted(known)}")
        cfg = cls(**config)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ValueError naming the offending key when the configuration cannot be built."""
        if self.puzzle_emb_ndim != 0:
            raise ValueError(
                f"puzzle_emb_ndim={self.puzzle_emb_ndim}: the code-generation port has no puzzle embeddings; "
                "set puzzle_emb_ndim to 0"
            )
        if self.pos_encodings not in ("rope", "learned"):
            raise ValueError(f"pos_encodings must be 'rope' or 'learned', got {self.pos_encodings!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        kv_heads = self.kv_heads
        if kv_heads < 1 or self.num_heads % kv_heads:
            raise ValueError(
                f"num_key_value_heads={kv_heads} must be >= 1 and divide num_heads={self.num_heads}"
            )
        if self.intermediate_size is not None and self.intermediate_size < 1:
            raise ValueError(f"intermediate_size must be >= 1 or null, got {self.intermediate_size}")
        if self.final_norm not in ("levels", "head"):
            raise ValueError(f"final_norm must be 'levels' or 'head', got {self.final_norm!r}")
        if self.final_norm == "head" and self.norm_type != "pre":
            raise ValueError("final_norm='head' is for norm_type='pre' (post-norm blocks end normalised)")
        if self.halt_max_steps < 1:
            raise ValueError(f"halt_max_steps must be >= 1, got {self.halt_max_steps}")
        if self.forward_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(
                f"forward_dtype must be float32, bfloat16 or float16, got {self.forward_dtype!r}"
            )
        if self.attn_backend not in ATTN_BACKENDS:
            raise ValueError(f"attn_backend must be one of {ATTN_BACKENDS}, got {self.attn_backend!r}")
        for key in ("H_cycles", "L_cycles", "H_layers", "L_layers", "vocab_size", "seq_len"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.norm_type not in ("post", "pre"):
            raise ValueError(f"norm_type must be 'post' or 'pre', got {self.norm_type!r}")
        check_bp_steps(self.bp_steps, self.H_cycles, self.L_cycles)
        if self.prefix_lm and self.attn_backend == "flash_attn":
            raise ValueError(
                "prefix_lm=true needs an explicit attention mask, which FlashAttention cannot take; "
                "set attn_backend to auto or sdpa (SDPA with the prefix mask) or prefix_lm=false"
            )

    @property
    def kv_heads(self) -> int:
        """Key/value heads: num_key_value_heads, or num_heads without grouped-query attention."""
        return self.num_key_value_heads or self.num_heads

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict view (what `HierarchicalReasoningModel_ACTV1(config_dict)` accepts)."""
        return asdict(self)

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype of the forward pass."""
        return getattr(torch, self.forward_dtype)

    @property
    def layer_evals_per_segment(self) -> int:
        """Transformer-block evaluations per token in one ACT segment."""
        return self.H_cycles * (self.L_cycles * self.L_layers + self.H_layers)

    @property
    def max_bp_steps(self) -> int:
        """The bp_steps of full backpropagation through a segment: every H and L step."""
        return self.H_cycles * (self.L_cycles + 1)


def check_bp_steps(bp_steps: int, h_cycles: int, l_cycles: int) -> None:
    """Raise ValueError unless bp_steps is 0 (full backpropagation) or 2 <= bp_steps <= H_cycles * (L_cycles + 1)."""
    most = h_cycles * (l_cycles + 1)
    if bp_steps != 0 and not 2 <= bp_steps <= most:
        raise ValueError(
            f"bp_steps must be between 2 (the 1-step gradient) and H_cycles * (L_cycles + 1) = {most} "
            f"(full backpropagation), or 0 (full backpropagation at any cycle count), got {bp_steps}"
        )


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


class HierarchicalReasoningModel_ACTV1ReasoningModule(nn.Module):
    """A stack of blocks that first adds its input injection to its state.

    `final_norm` (pre-norm models with final_norm='levels'): end with an RMSNorm, as HRM-Text's stacks do,
    so the states the levels pass on, and what the LM head reads, are normalised. `gate_lr_scale`
    (recurrence_gates): a zero-initialised `gate` vector, whose `lr_scale` attribute the optimizer multiplies its
    learning rate by; a gated call returns z + gate * (stack(z + injection) - z), so it changes nothing until
    training opens the gate.
    """

    def __init__(
        self,
        layers: list[HierarchicalReasoningModel_ACTV1Block],
        final_norm: RMSNorm | None = None,
        gate_lr_scale: float | None = None,
        hidden_size: int | None = None,
    ):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.final_norm = final_norm
        self.gate = None
        if gate_lr_scale is not None:
            assert hidden_size is not None, "a gated level needs hidden_size"
            self.gate = nn.Parameter(torch.zeros(hidden_size))
            self.gate.lr_scale = gate_lr_scale  # type: ignore[attr-defined] - read by hrm_codegen.optim

    def forward(
        self,
        hidden_states: torch.Tensor,
        input_injection: torch.Tensor,
        cache_key: tuple | None = None,
        gated: bool = False,
        **attn_kwargs,
    ) -> torch.Tensor:
        """`cache_key` (segment, H cycle, L cycle, level): the KV-cache slot of layer i is (*cache_key, i).

        `gated`: this call is not the level's first in the segment (the gate applies when there is one).
        """
        state = hidden_states
        hidden_states = hidden_states + input_injection
        for i, layer in enumerate(self.layers):
            layer_key = None if cache_key is None else (*cache_key, i)
            hidden_states = layer(hidden_states, cache_key=layer_key, **attn_kwargs)
        if self.final_norm is not None:
            hidden_states = self.final_norm(hidden_states)
        if gated and self.gate is not None:
            hidden_states = state + self.gate.to(hidden_states.dtype) * (hidden_states - state)
        return hidden_states


class HierarchicalReasoningModel_ACTV1_Inner(nn.Module):
    """One ACT segment: H_cycles x (L_cycles L-steps + one H-step), gradient through the last bp_steps."""

    def __init__(self, config: HRMConfig):
        super().__init__()
        self.config = config
        dtype = config.dtype
        embed_init_std = 1.0 / math.sqrt(config.hidden_size)
        self.embed_scale = math.sqrt(config.hidden_size) if config.scale_embeddings else 1.0

        self.embed_tokens = CastedEmbedding(config.vocab_size, config.hidden_size, embed_init_std, dtype)
        # Tied: the head reads embed_tokens' table (no lm_head parameter).
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else CastedLinear(config.hidden_size, config.vocab_size, bias=False)
        )
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
                blocks, norm, gate_lr_scale, config.hidden_size
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

    def _input_embeddings(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        embedding = self.embed_tokens(input_ids.to(torch.int32))
        if self.config.pos_encodings == "learned":
            if int(position_ids.max()) >= self.config.seq_len:
                raise ValueError(f"position {int(position_ids.max())} exceeds seq_len={self.config.seq_len}")
            embedding = 0.707106781 * (embedding + self.embed_pos(position_ids))
        return self.embed_scale * embedding

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """LM-head logits: `lm_head`, or the embedding table when tie_word_embeddings."""
        if self.lm_head is not None:
            return self.lm_head(hidden_states)
        table = self.embed_tokens.embedding_weight
        return torch.nn.functional.linear(hidden_states, table.to(hidden_states.dtype))

    def empty_carry(self, batch_size: int, seq_len: int, device: torch.device | None = None):
        """Uninitialised carry of shape [B, S, hidden]; reset it before use."""
        shape = (batch_size, seq_len, self.config.hidden_size)
        return HierarchicalReasoningModel_ACTV1InnerCarry(
            z_H=torch.empty(shape, dtype=self.config.dtype, device=device),
            z_L=torch.empty(shape, dtype=self.config.dtype, device=device),
        )

    def reset_carry(self, reset_flag: torch.Tensor, carry: HierarchicalReasoningModel_ACTV1InnerCarry):
        """Replace the carry of sequences where `reset_flag` [B] is set by H_init / L_init."""
        flag = reset_flag.view(-1, 1, 1)
        return HierarchicalReasoningModel_ACTV1InnerCarry(
            z_H=torch.where(flag, self.H_init.to(carry.z_H.dtype), carry.z_H),
            z_L=torch.where(flag, self.L_init.to(carry.z_L.dtype), carry.z_L),
        )

    def forward(
        self,
        carry: HierarchicalReasoningModel_ACTV1InnerCarry,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        last_index: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        logits_to_keep: int = 0,
        segment: int = 0,
    ):
        """Run one segment; returns (detached new carry, logits [B, S, vocab], (q_halt, q_continue) or None).

        `attn_mask` is a boolean [B, 1, S, K] mask (`build_attn_mask`), None for unpadded input;
        `logits_to_keep` > 0 computes logits for the last that many positions only.
        """
        attn_kwargs: dict[str, Any] = {"attn_mask": attn_mask, "kv_cache": kv_cache}
        if self.config.pos_encodings == "rope":
            attn_kwargs["cos_sin"] = self.rotary_emb(position_ids)
        x = self._input_embeddings(input_ids, position_ids)
        h_cycles, l_cycles = self.H_cycles, self.L_cycles

        z_H, z_L = carry.z_H, carry.z_L
        # Gradient only through the last `h_grad` H steps and the last `l_grad` L steps (bp_steps in all);
        # the default bp_steps=2 is upstream's 1-step gradient: the last L step and the last H step.
        h_grad, l_grad = gradient_steps(self.bp_steps, h_cycles, l_cycles)
        first_l_grad = h_cycles * l_cycles - l_grad
        for h_step in range(h_cycles):
            for l_step in range(l_cycles):
                l_index = h_step * l_cycles + l_step
                with _grad_if(l_index >= first_l_grad):
                    key = (segment, h_step, l_step, "L")
                    z_L = self.L_level(z_L, z_H + x, key, gated=l_index > 0, **attn_kwargs)
            with _grad_if(h_step >= h_cycles - h_grad):
                z_H = self.H_level(z_H, z_L, (segment, h_step, None, "H"), gated=h_step > 0, **attn_kwargs)

        new_carry = HierarchicalReasoningModel_ACTV1InnerCarry(z_H=z_H.detach(), z_L=z_L.detach())
        if self.norm is not None:
            z_H = self.norm(z_H)
        logits = self.head(z_H[:, -logits_to_keep:] if logits_to_keep else z_H)
        q = None
        if self.config.enable_q_head:
            if last_index is None:
                last_index = torch.full((z_H.shape[0],), z_H.shape[1] - 1, device=z_H.device)
            # Under causal attention only the last real token has seen the whole sequence.
            summary = z_H[torch.arange(z_H.shape[0], device=z_H.device), last_index]
            q_logits = self.q_head(summary).to(torch.float32)
            q = (q_logits[..., 0], q_logits[..., 1])
        return new_carry, logits, q


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


class HierarchicalReasoningModel_ACTV1(nn.Module):
    """HRM with the adaptive-computation-time wrapper; `forward(carry, batch)` runs one segment per call."""

    def __init__(self, config_dict: dict[str, Any] | HRMConfig):
        super().__init__()
        self.config = (
            config_dict if isinstance(config_dict, HRMConfig) else HRMConfig.from_dict(dict(config_dict))
        )
        self.config.validate()
        self.inner = HierarchicalReasoningModel_ACTV1_Inner(self.config)

    @property
    def cycles(self) -> tuple[int, int]:
        """(H_cycles, L_cycles) the forward runs now: the config's unless `set_cycles` changed them."""
        return self.inner.H_cycles, self.inner.L_cycles

    def set_cycles(self, H_cycles: int, L_cycles: int) -> None:  # noqa: N803 - upstream's key names
        """Run `H_cycles` x `L_cycles` from now on (a cycles schedule, test-time recurrence); the parameters
        do not depend on the cycle counts. A bp_steps above these cycles' steps backpropagates through all."""
        for key, value in (("H_cycles", H_cycles), ("L_cycles", L_cycles)):
            if int(value) < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        self.inner.H_cycles, self.inner.L_cycles = int(H_cycles), int(L_cycles)

    @property
    def bp_steps(self) -> int:
        """Gradient-carrying level evaluations now: config.bp_steps unless the bp warm-up set another."""
        return self.inner.bp_steps

    @bp_steps.setter
    def bp_steps(self, value: int) -> None:
        check_bp_steps(value, *self.cycles)
        self.inner.bp_steps = int(value)

    def _batch_views(self, data: dict[str, torch.Tensor], kv_cache: KVCache | None = None):
        """(input_ids, position_ids, attn_mask, last_index) for a batch dict.

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
        if kv_cache is not None:  # the caller (lm_forward) began the step: the mask covers the cache
            key_mask = kv_cache.key_mask
            assert key_mask is not None, "begin the cache step before _batch_views"
        if prefix is not None and prefix.shape[1] < key_mask.shape[1]:  # cached keys: earlier calls' prompt
            prefix = torch.cat(
                [prefix.new_zeros(prefix.shape[0], key_mask.shape[1] - prefix.shape[1]), prefix], 1
            )
        needs_mask = (
            kv_cache is not None or segment_ids is not None or prefix is not None or not bool(key_mask.all())
        )
        attn_mask = (
            build_attn_mask(key_mask, input_ids.shape[1], self.config.causal, segment_ids, prefix)
            if needs_mask
            else None
        )
        if kv_cache is not None:  # over the cache's key layout (a static cache: its whole buffer)
            attn_mask = kv_cache.widen_mask(attn_mask)
        last_index = last_real_index(mask) if mask is not None else None
        return input_ids, position_ids, attn_mask, last_index

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> HierarchicalReasoningModel_ACTV1Carry:
        """A carry in which every sequence is halted, so the first `forward` loads `batch` and resets."""
        batch_size, seq_len = batch["input_ids"].shape
        device = batch["input_ids"].device
        return HierarchicalReasoningModel_ACTV1Carry(
            inner_carry=self.inner.empty_carry(batch_size, seq_len, device),
            steps=torch.zeros(batch_size, dtype=torch.int32, device=device),
            halted=torch.ones(batch_size, dtype=torch.bool, device=device),
            current_data={k: torch.zeros_like(v) for k, v in batch.items()},
        )

    def forward(self, carry: HierarchicalReasoningModel_ACTV1Carry, batch: dict[str, torch.Tensor]):
        """One ACT segment: halted sequences restart on `batch`; returns (new carry, outputs)."""
        cfg = self.config
        inner_carry = self.inner.reset_carry(carry.halted, carry.inner_carry)
        steps = torch.where(carry.halted, 0, carry.steps)
        current_data = {
            k: torch.where(carry.halted.view((-1,) + (1,) * (v.ndim - 1)), batch[k], v)
            for k, v in carry.current_data.items()
        }
        views = self._batch_views(current_data)
        inner_carry, logits, q = self.inner(inner_carry, *views)
        outputs: dict[str, torch.Tensor] = {"logits": logits}
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
                _, _, next_q = self.inner(inner_carry, *views)
                assert next_q is not None
                next_halt, next_continue = next_q
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
        kv_cache: KVCache | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """Plain LM use: logits [B, S, vocab] after `num_segments` (default halt_max_steps) fresh segments.

        With `kv_cache`, `input_ids` are only the new positions; their keys/values are appended to the cache.
        `token_type_ids` (1 = prompt token) makes the prompt bidirectional when config.prefix_lm (ignored
        otherwise); with a cache, prefill the prompt with it and decode the new tokens without it.
        `logits_to_keep` > 0 returns logits for the last that many positions only (generation needs one).
        """
        batch = {"input_ids": input_ids}
        if attention_mask is not None:
            batch["attention_mask"] = attention_mask
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        if position_ids is not None:
            batch["position_ids"] = position_ids
        if kv_cache is not None:  # a new step: its positions' mask joins the cache's
            new_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            kv_cache.begin_step(new_mask.bool())
        ids, pos, attn_mask, last_index = self._batch_views(batch, kv_cache)
        batch_size, seq_len = ids.shape
        carry = self.inner.reset_carry(
            torch.ones(batch_size, dtype=torch.bool, device=ids.device),
            self.inner.empty_carry(batch_size, seq_len, ids.device),
        )
        segments = num_segments or self.config.halt_max_steps
        views = (ids, pos, attn_mask, last_index, kv_cache)
        # Earlier segments only feed the carry: skip most of their LM head.
        for segment in range(segments - 1):
            carry, _, _ = self.inner(carry, *views, logits_to_keep=1, segment=segment)
        _, logits, _ = self.inner(carry, *views, logits_to_keep=logits_to_keep, segment=segments - 1)
        return logits

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts by component (embeddings, H level, L level, LM head, Q-head)."""
        counts: dict[str, int] = {}
        for name, p in self.inner.named_parameters():
            component = name.split(".")[0]
            counts[component] = counts.get(component, 0) + p.numel()
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts
