"""The HRM's one config schema: `HRMConfig`, a transformers `PretrainedConfig` (model_type `hrm_codegen`).

Its keys and defaults follow upstream `config/arch/hrm_v1.yaml` plus the codegen keys; `HRM_KEYS` lists them
(Hydra's `arch` schema of the `hrm` family and the checkpoint's `config.yaml` use exactly these). transformers'
own keys (`bos_token_id`, `architectures`, ...) ride along when the model is saved with `save_pretrained`.

This module imports only torch and transformers: `save_pretrained` ships it, with `layers.py` and
`hrm_act_v1.py`, for `trust_remote_code` users who lack this package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from transformers import PretrainedConfig

ATTN_BACKENDS = ("auto", "sdpa", "eager", "flash_attn")

# Every HRM key and its default (upstream's model, bit for bit, when left as they are).
HRM_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50257,
    "seq_len": 512,
    "batch_size": 1,  # kept for upstream config compatibility; the model does not depend on it
    "H_cycles": 2,
    "L_cycles": 2,
    "H_layers": 4,
    "L_layers": 4,
    "hidden_size": 512,
    "expansion": 4.0,
    "num_heads": 8,
    "pos_encodings": "rope",
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "halt_max_steps": 1,
    "halt_exploration_prob": 0.1,
    "forward_dtype": "float32",
    "puzzle_emb_ndim": 0,
    "num_puzzle_identifiers": 0,
    "causal": True,
    "enable_q_head": False,
    "attn_backend": "auto",
    # PrefixLM: tokens with token_type_ids == 1 (BOS and the prompt) attend bidirectionally within their prompt.
    "prefix_lm": False,
    # Level evaluations (H and L steps together) that carry gradient; 2 = upstream's 1-step gradient.
    "bp_steps": 2,
    "norm_type": "post",  # post (upstream) or pre (HRM-Text: pre-norm blocks, each level ends with a norm)
    # What real (retrofitted) checkpoints need; each off by default, so the defaults stay upstream's model.
    "num_key_value_heads": None,  # grouped-query attention; null = num_heads
    "intermediate_size": None,  # the SwiGLU width; null = from `expansion` as upstream
    "attention_bias": False,  # biases on the q, k, v projections (Qwen2)
    "norm_weights": False,  # RMSNorms with a learnable scale (a source's norms); false = scale-free
    "final_norm": "levels",  # pre-norm: "levels" (each level ends with a norm) or "head" (one, before the head)
    "scale_embeddings": True,  # multiply the token embeddings by sqrt(hidden_size) (upstream)
    "tie_word_embeddings": False,  # the LM head reads the embedding table
    "zero_init_states": False,  # z_H and z_L start at zero instead of the H_init / L_init vectors
    # Function-preserving recurrence: every level call after a level's first in a segment is gated,
    # z <- z + gate * (level(z + injection) - z) with a zero-initialised gate vector per level, so a retrofitted
    # model computes its source at any cycle count until training opens the gates. The gates learn with the
    # learning rate times recurrence_gate_lr_scale (AdamW moves a parameter ~lr per step; a bare gate would
    # barely open in a short fine-tune, and a scale inside the forward would inflate its gradient over the
    # global clipping norm).
    "recurrence_gates": False,
    "recurrence_gate_lr_scale": 100.0,
    # Gates read as max(gate, 0): a gated call then moves the state part of the way towards the level's output and
    # never past its start, so extra cycles relax towards the level's fixed point instead of stepping away from it
    # (a free gate learns negative entries in about half its channels, which repeated cycles amplify).
    "recurrence_gate_nonneg": False,
    # With recurrence_gates: the first calls of a segment after the first (which start from the carried states) are
    # gated too, so with closed gates every segment returns the first one's states (deep supervision on a retrofit).
    "gate_later_segments": False,
    # Learned halting (Ouro's exit gate): a linear head on the (normalised) L state after each L step gives each
    # token's probability that another step no longer lowers its loss; decoding with `set_exit_threshold` stops a
    # token's recurrence once it exceeds the threshold.
    "exit_gate": False,
}
HRM_KEYS = tuple(HRM_DEFAULTS)


def max_bp_steps(h_cycles: int, l_cycles: int) -> int:
    """The level evaluations of H_cycles x L_cycles (an L step each, plus an H call per H cycle): bp_steps' bound."""
    return h_cycles * (l_cycles + 1)


def check_bp_steps(bp_steps: int, h_cycles: int, l_cycles: int) -> None:
    """Raise ValueError unless bp_steps is 0 (full backpropagation) or 2 <= bp_steps <= H_cycles * (L_cycles + 1)."""
    most = max_bp_steps(h_cycles, l_cycles)
    if bp_steps != 0 and not 2 <= bp_steps <= most:
        raise ValueError(
            f"bp_steps must be between 2 (the 1-step gradient) and H_cycles * (L_cycles + 1) = {most} "
            f"(full backpropagation), or 0 (full backpropagation at any cycle count), got {bp_steps}"
        )


class HRMConfig(PretrainedConfig):
    """The HRM's configuration (keys: `HRM_DEFAULTS`), validated when built.

    `num_hidden_layers` counts the model's KV-cache slots, one per attention call of a forward:
    halt_max_steps x H_cycles x (L_cycles x L_layers + H_layers), so transformers' caches (`DynamicCache`,
    `StaticCache(config=...)`) hold one layer per (segment, H cycle, L cycle, level, layer) call. It follows
    the cycle keys and is not a setting of its own. `max_position_embeddings` mirrors `seq_len`.
    """

    model_type = "hrm_codegen"

    if TYPE_CHECKING:  # the keys' types for type checkers (set from HRM_DEFAULTS in __init__)
        vocab_size: int
        seq_len: int
        batch_size: int
        H_cycles: int
        L_cycles: int
        H_layers: int
        L_layers: int
        hidden_size: int
        expansion: float
        num_heads: int
        pos_encodings: str
        rms_norm_eps: float
        rope_theta: float
        halt_max_steps: int
        halt_exploration_prob: float
        forward_dtype: str
        puzzle_emb_ndim: int
        num_puzzle_identifiers: int
        causal: bool
        enable_q_head: bool
        attn_backend: str
        prefix_lm: bool
        bp_steps: int
        norm_type: str
        num_key_value_heads: int | None
        intermediate_size: int | None
        attention_bias: bool
        norm_weights: bool
        final_norm: str
        scale_embeddings: bool
        tie_word_embeddings: bool
        zero_init_states: bool
        recurrence_gates: bool
        recurrence_gate_lr_scale: float
        recurrence_gate_nonneg: bool
        gate_later_segments: bool
        exit_gate: bool

    def __init__(self, **kwargs: Any) -> None:
        for key in ("num_hidden_layers", "max_position_embeddings"):  # derived: never taken from the input
            kwargs.pop(key, None)
        values = {key: kwargs.pop(key, default) for key, default in HRM_DEFAULTS.items()}
        tie = values.pop("tie_word_embeddings")
        for key, value in values.items():
            setattr(self, key, value)
        super().__init__(**kwargs)
        self.tie_word_embeddings = tie
        self.validate_hrm()

    @classmethod
    def from_arch(cls, config: Mapping[str, Any]) -> HRMConfig:
        """Build and validate a config from a plain mapping of HRM keys (unknown keys are an error)."""
        unknown = sorted(set(config) - set(HRM_KEYS))
        if unknown:
            raise ValueError(f"unknown HRM config key(s) {unknown}; expected a subset of {sorted(HRM_KEYS)}")
        return cls(**dict(config))

    def arch_dict(self) -> dict[str, Any]:
        """The HRM keys and their values (what `from_arch` and Hydra's `arch` take)."""
        return {key: getattr(self, key) for key in HRM_KEYS}

    @property
    def num_hidden_layers(self) -> int:  # type: ignore[override]
        return self.halt_max_steps * self.layer_evals_per_segment

    @num_hidden_layers.setter
    def num_hidden_layers(self, value: int) -> None:  # transformers may assign it; the cycle keys decide
        pass

    @property
    def max_position_embeddings(self) -> int:
        return self.seq_len

    @max_position_embeddings.setter
    def max_position_embeddings(self, value: int) -> None:
        pass

    def validate_hrm(self) -> None:
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
        if self.recurrence_gate_nonneg and not self.recurrence_gates:
            raise ValueError(
                "recurrence_gate_nonneg=true constrains the recurrence gates, which are off; "
                "set recurrence_gates=true or recurrence_gate_nonneg=false"
            )
        if self.gate_later_segments and not self.recurrence_gates:
            raise ValueError(
                "gate_later_segments=true gates the first calls of later segments through the recurrence gates; "
                "set recurrence_gates=true or gate_later_segments=false"
            )
        if self.prefix_lm and self.attn_backend == "flash_attn":
            raise ValueError(
                "prefix_lm=true needs an explicit attention mask, which FlashAttention cannot take; "
                "set attn_backend to auto or sdpa (SDPA with the prefix mask) or prefix_lm=false"
            )

    validate = validate_hrm  # the name the rest of the project calls

    @property
    def kv_heads(self) -> int:
        """Key/value heads: num_key_value_heads, or num_heads without grouped-query attention."""
        return self.num_key_value_heads or self.num_heads

    @property
    def forward_torch_dtype(self) -> torch.dtype:
        """The torch dtype of the forward pass (`forward_dtype`)."""
        return getattr(torch, self.forward_dtype)

    @property
    def layer_evals_per_segment(self) -> int:
        """Transformer-block evaluations per token in one ACT segment."""
        return self.H_cycles * (self.L_cycles * self.L_layers + self.H_layers)

    @property
    def max_bp_steps(self) -> int:
        """The bp_steps of full backpropagation through a segment: every H and L step."""
        return max_bp_steps(self.H_cycles, self.L_cycles)
