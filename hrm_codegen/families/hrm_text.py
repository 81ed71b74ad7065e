"""The HRM-Text family (`arch.name=hrm_text`): transformers' own `HrmTextForCausalLM` behind the seam.

HRM-Text (Sapient, 2026) is an HRM for text: an H and an L stack of pre-norm decoder layers (gated attention,
SwiGLU, scale-free RMSNorm), `H_cycles` x (`L_cycles` L-stack calls + one H-stack call) per forward, no ACT. Two
config keys change training but not the weights: `L_bp_cycles` (per H cycle, how many trailing L cycles
propagate gradients; the rest run under no_grad) and `prefix_lm` (prompt tokens, `token_type_ids == 1`, attend
to each other bidirectionally; everything else is causal). The model, its cache and its masks are the
library's; this module only maps our `arch` keys onto `HrmTextConfig` and feeds it `token_type_ids`.

Training passes the batch's `token_type_ids` (1 on the prompt tokens, BOS included) when prefix_lm is on;
a batch without them (corpus data) trains plainly causal. Generation marks every real prompt token as prefix,
so the prefill attends bidirectionally over the prompt and decoding continues causally with the KV cache.
Packed blocks keep examples apart as the Llama baseline's do (restarting position_ids, no attention mask):
transformers ANDs the packed-sequence mask over the prefix overlay, so one example's prompt never sees another's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from transformers import HrmTextConfig, HrmTextForCausalLM

from hrm_codegen.checkpoint import CheckpointError, check_weights_fit
from hrm_codegen.families.base import Generated, GenerationRequest, register_family
from hrm_codegen.families.transformers_lm import HF_DIR, TransformersFamily
from hrm_codegen.flops import hrm_text_flops_per_token
from hrm_codegen.models.baseline import ATTN_IMPLEMENTATIONS, check_baseline_packing, swiglu_intermediate_size


@dataclass
class HrmTextArchConfig:
    """The `arch` keys of the HRM-Text family (configs/arch/hrm_text.yaml documents each)."""

    name: str = "hrm_text"
    vocab_size: int | None = None  # null: from the tokenizer
    seq_len: int = 512  # max_position_embeddings
    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0  # SwiGLU width as the HRM's: swiglu_intermediate_size(hidden_size, expansion)
    intermediate_size: int | None = None  # set to override the width computed from expansion
    num_layers_per_stack: int = 4
    H_cycles: int = 2
    L_cycles: int = 2
    L_bp_cycles: list[int] = field(default_factory=lambda: [2])
    prefix_lm: bool = True
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    embedding_scale: float | None = None  # null: 1 / initializer_range (the library's default)
    tie_word_embeddings: bool = False
    attn_backend: str = "auto"  # auto (sdpa) | sdpa | eager | flash_attn (only with prefix_lm=false)


ARCH_KEYS = {f.name for f in dataclasses.fields(HrmTextArchConfig)}


def hrm_text_config(config: dict[str, Any]) -> HrmTextConfig:
    """The `HrmTextConfig` of an arch mapping (our keys, `name` optional); a ValueError names a bad key."""
    unknown = sorted(set(config) - ARCH_KEYS)
    if unknown:
        raise ValueError(f"unknown hrm_text config key(s) {unknown}; expected {sorted(ARCH_KEYS)}")
    a = HrmTextArchConfig(**{k: v for k, v in config.items() if k != "name"})
    if a.vocab_size is None:
        raise ValueError("hrm_text: vocab_size is not set (it comes from the tokenizer)")
    for key in ("seq_len", "hidden_size", "num_heads", "num_layers_per_stack", "H_cycles", "L_cycles"):
        if getattr(a, key) < 1:
            raise ValueError(f"hrm_text: {key} must be >= 1, got {getattr(a, key)}")
    if a.hidden_size % a.num_heads:
        raise ValueError(f"hrm_text: hidden_size {a.hidden_size} is not divisible by num_heads {a.num_heads}")
    bp = list(a.L_bp_cycles)
    if len(bp) > a.H_cycles or any(not 0 <= n <= a.L_cycles for n in bp):
        raise ValueError(
            f"hrm_text: L_bp_cycles={bp} must list at most H_cycles={a.H_cycles} numbers in 0..L_cycles="
            f"{a.L_cycles} (per H cycle, the trailing L cycles that get gradients; left-padded with 1)"
        )
    if a.attn_backend not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"hrm_text: attn_backend must be one of {sorted(ATTN_IMPLEMENTATIONS)}")
    if a.attn_backend == "flash_attn" and a.prefix_lm:
        raise ValueError(
            "hrm_text: attn_backend=flash_attn cannot draw the PrefixLM mask; set prefix_lm=false"
        )
    intermediate = a.intermediate_size or swiglu_intermediate_size(a.hidden_size, a.expansion)
    hf = HrmTextConfig(
        vocab_size=a.vocab_size,
        hidden_size=a.hidden_size,
        intermediate_size=intermediate,
        num_hidden_layers=a.num_layers_per_stack,  # the library rewrites it to the cache-slot count
        num_attention_heads=a.num_heads,
        head_dim=a.hidden_size // a.num_heads,
        max_position_embeddings=a.seq_len,
        initializer_range=a.initializer_range,
        rms_norm_eps=a.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": a.rope_theta},
        tie_word_embeddings=a.tie_word_embeddings,
        H_cycles=a.H_cycles,
        L_cycles=a.L_cycles,
        L_bp_cycles=bp,
        embedding_scale=a.embedding_scale,
        prefix_lm=a.prefix_lm,
    )  # no pad_token_id: GPT-2's pad is its EOS, whose embedding must stay trainable
    implementation = ATTN_IMPLEMENTATIONS[a.attn_backend]
    if implementation is not None:
        hf._attn_implementation = implementation
    return hf


def _hf_model(model: nn.Module) -> HrmTextForCausalLM:
    """The HrmTextForCausalLM inside a data-parallel wrapper, or `model` itself."""
    return cast(HrmTextForCausalLM, getattr(model, "module", model))


class HrmTextFamily(TransformersFamily):
    """transformers' HrmTextForCausalLM: prefix-LM training and generation; weights in `<step>/hf/`."""

    name = "hrm_text"
    description = "HRM-Text (transformers HrmTextForCausalLM): H/L stacks, L_bp_cycles gradients, PrefixLM"
    model_class = HrmTextForCausalLM

    def arch_schemas(self) -> dict[str, type]:
        return {"hrm_text_schema": HrmTextArchConfig}

    def check(self, config: dict[str, Any]) -> None:
        hrm_text_config(config)

    def check_packing(self, config: dict[str, Any]) -> None:
        try:
            check_baseline_packing(config)
        except ValueError as err:
            raise ValueError(str(err).replace("arch.name=transformer", "arch.name=hrm_text")) from None

    def build(self, config: dict[str, Any]) -> nn.Module:
        return HrmTextForCausalLM(hrm_text_config(config))

    def load_weights(self, model: nn.Module, path: Path) -> None:
        """From a step's `hf/` through `from_pretrained`: transformers stores HRM-Text in Sapient's layout (fused
        g/q/k/v and gate/up projections) and converts it on load; a bare weights file loads as is."""
        hf_dir = path / HF_DIR
        if not (path.is_dir() and (hf_dir / "config.json").is_file()):
            super().load_weights(model, path)
            return
        saved, info = cast(Any, HrmTextForCausalLM).from_pretrained(
            hf_dir, dtype=torch.float32, output_loading_info=True
        )
        bad = {
            k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v
        }
        if bad:
            raise CheckpointError(
                f"weights in {hf_dir} are incomplete or do not fit their config.json: {bad}"
            )
        state = saved.state_dict()
        check_weights_fit(state, model, hf_dir)
        model.load_state_dict(state)

    def lm_logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits without a cache; with prefix_lm the batch's `token_type_ids` (absent: plain causal)."""
        extra: dict[str, Any] = {"use_cache": False}
        if _hf_model(model).config.prefix_lm and "token_type_ids" in batch:
            extra["token_type_ids"] = batch["token_type_ids"]
        if "segment_ids" in batch:
            return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], **extra).logits
        return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), **extra).logits

    def flops_per_token(self, config: dict[str, Any], seq_len: int) -> dict[str, float]:
        flops = hrm_text_flops_per_token(hrm_text_config(config), seq_len)
        return {"train": flops["total"], **flops}

    def report_lines(self, config: dict[str, Any], total_params: int) -> list[str]:
        hf = hrm_text_config(config)
        evals = hf.H_cycles * (hf.L_cycles + 1) * (hf.num_layers_per_stack or 1)
        return [
            f"  hrm_text: {evals} layer evaluations per token, L_bp_cycles={list(hf.L_bp_cycles or [])}, "
            f"prefix_lm={hf.prefix_lm}"
        ]

    def generate(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        request: GenerationRequest,
    ) -> Generated:
        """transformers' generate; with prefix_lm every real prompt token is prefix (bidirectional prefill)."""
        if _hf_model(model).config.prefix_lm and "token_type_ids" not in request.options:
            prefix = attention_mask.to(dtype=torch.long)
            request = dataclasses.replace(request, options={**request.options, "token_type_ids": prefix})
        return super().generate(model, input_ids, attention_mask, request)


HRM_TEXT = register_family(HrmTextFamily())
