"""SmoothQuant-style activation smoothing (Xiao et al., 2023), so int8 dynamic quantization keeps a model whose
activations have outlier channels (SmolLM2's do: int8 dynamic alone takes the retrofitted HRM from 9.2% to 1.4%
MBPP pass@1).

For every linear layer whose input is produced by something with one scale per channel, an input channel j is
divided by s_j where it is produced and multiplied back into the layer's weight column j. In exact arithmetic
the model computes the same function; the activations the int8 kernel quantizes lose their outliers, the
weights take a share of them. s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), with max|X_j| measured on
calibration text. Four producer / consumer pairs per pre-norm block, all folded into existing weights:

    the attention norm's weight        ->  the q, k, v projections (the HRM: its fused qkv_proj)
    the MLP norm's weight              ->  the gate and up projections (the HRM: gate_up_proj)
    the up projection's output rows    ->  the down projection (silu(gate) * up is linear in up)
    the v projection's output rows     ->  the o projection (attention output is linear in v; with grouped
                                           query heads, one scale per key-value channel)

and the final norm's weight -> the LM head (untied first: the embedding table stays as it was). Supported: the
HRM with pre-norm blocks and norm weights (a retrofit, HRM-Text-style models) and transformers' Llama, Qwen2 and
Mistral decoders; other models are refused with one line. Calibration text is the source of a few modules of
Python's standard library (`calibration_ids`): code with docstrings, not drawn from any benchmark.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hrm_codegen.models.hrm_act_v1 import HierarchicalReasoningModel_ACTV1Block

# Migration strength: 0.5 is the paper's default; on the retrofitted SmolLM2 HRM (int8 dynamic, per-channel
# weights, six MBPP validation solutions, an ad-hoc check) 0.7 lost least (loss +8% against +27% at 0.5, +10% at 0.8).
DEFAULT_ALPHA = 0.7
TRANSFORMERS_TYPES = ("llama", "qwen2", "mistral")  # RMSNorm computes weight * normed(x): foldable
CALIBRATION_MODULES = ("textwrap", "heapq", "bisect", "fractions", "statistics", "difflib")


@dataclass
class SmoothingGroup:
    """Linear layers reading one input (`consumers`) and how to divide that input's channels where it is
    produced (`divide(s)`); `tie` maps per-channel statistics onto the channels that must share a scale."""

    name: str
    consumers: list[nn.Linear]
    divide: Callable[[torch.Tensor], None]
    tie: Callable[[torch.Tensor], torch.Tensor] = lambda stat: stat


def calibration_ids(tokenizer, windows: int = 16, length: int = 256) -> list[torch.Tensor]:
    """`windows` token-id windows of `length` from the source of CALIBRATION_MODULES (deterministic for a
    Python version and tokenizer). `tokenizer`: a transformers tokenizer or this package's `CodeTokenizer`."""
    import importlib

    hf = getattr(tokenizer, "hf", tokenizer)
    text = "\n\n".join(inspect.getsource(importlib.import_module(name)) for name in CALIBRATION_MODULES)
    ids = torch.tensor(hf(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)
    count = min(windows, len(ids) // length)
    if count < 1:
        raise ValueError(f"calibration text has {len(ids)} tokens, fewer than one window of {length}")
    step = len(ids) // count
    return [ids[i * step : i * step + length] for i in range(count)]


def _scale_rows(linear: nn.Linear, rows: slice, s: torch.Tensor) -> None:
    linear.weight.data[rows] /= s[:, None]
    if linear.bias is not None:
        linear.bias.data[rows] /= s


def _divide_weight(norm: nn.Module) -> Callable[[torch.Tensor], None]:
    def divide(s: torch.Tensor) -> None:
        norm.weight.data /= s  # type: ignore[union-attr, operator]

    return divide


def _kv_tie(n_q: int, n_kv: int, head_dim: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """o_proj input channel (query head h, d) reads v channel (h // (n_q // n_kv), d): one scale per v channel."""

    def tie(stat: torch.Tensor) -> torch.Tensor:
        per_kv = stat.view(n_kv, n_q // n_kv, head_dim).amax(dim=1, keepdim=True)
        return per_kv.expand(n_kv, n_q // n_kv, head_dim).reshape(-1)

    return tie


def _v_rows_divider(linear: nn.Linear, rows_start: int, n_q: int, n_kv: int, head_dim: int):
    def divide(s: torch.Tensor) -> None:  # s over o_proj's input channels, equal within each query group
        per_kv = s.view(n_kv, n_q // n_kv, head_dim)[:, 0].reshape(-1)
        _scale_rows(linear, slice(rows_start, rows_start + n_kv * head_dim), per_kv)

    return divide


def _hrm_groups(block: HierarchicalReasoningModel_ACTV1Block, name: str) -> list[SmoothingGroup]:
    attn, mlp = block.self_attn, block.mlp
    n_q, n_kv, head_dim = attn.num_heads, attn.num_key_value_heads, attn.head_dim
    qkv, gate_up = attn.qkv_proj, mlp.gate_up_proj
    inter = gate_up.weight.shape[0] // 2
    assert isinstance(qkv, nn.Linear) and isinstance(gate_up, nn.Linear)
    assert isinstance(attn.o_proj, nn.Linear) and isinstance(mlp.down_proj, nn.Linear)
    return [
        SmoothingGroup(f"{name}.attn_norm", [qkv], _divide_weight(block.attn_norm)),
        SmoothingGroup(f"{name}.mlp_norm", [gate_up], _divide_weight(block.mlp_norm)),
        SmoothingGroup(
            f"{name}.mlp.down_proj",
            [mlp.down_proj],
            lambda s, gate_up=gate_up, inter=inter: _scale_rows(gate_up, slice(inter, 2 * inter), s),
        ),
        SmoothingGroup(
            f"{name}.self_attn.o_proj",
            [attn.o_proj],
            _v_rows_divider(qkv, (n_q + n_kv) * head_dim, n_q, n_kv, head_dim),
            _kv_tie(n_q, n_kv, head_dim),
        ),
    ]


def _decoder_groups(layer: Any, name: str, config: Any) -> list[SmoothingGroup]:
    attn, mlp = layer.self_attn, layer.mlp
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    n_q = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_q
    return [
        SmoothingGroup(
            f"{name}.input_layernorm",
            [attn.q_proj, attn.k_proj, attn.v_proj],
            _divide_weight(layer.input_layernorm),
        ),
        SmoothingGroup(
            f"{name}.post_attention_layernorm",
            [mlp.gate_proj, mlp.up_proj],
            _divide_weight(layer.post_attention_layernorm),
        ),
        SmoothingGroup(
            f"{name}.mlp.down_proj",
            [mlp.down_proj],
            lambda s, up=mlp.up_proj: _scale_rows(up, slice(None), s),
        ),
        SmoothingGroup(
            f"{name}.self_attn.o_proj",
            [attn.o_proj],
            _v_rows_divider(attn.v_proj, 0, n_q, n_kv, head_dim),
            _kv_tie(n_q, n_kv, head_dim),
        ),
    ]


def smoothing_groups(model: Any) -> list[SmoothingGroup]:
    """The producer / consumer pairs of `model` (its linear layers must be `nn.Linear`: quantization's
    `_plain_linear` swap, and the LM head untied first); ValueError naming what is unsupported."""
    config = getattr(model, "config", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    blocks = [
        (n, m) for n, m in model.named_modules() if isinstance(m, HierarchicalReasoningModel_ACTV1Block)
    ]
    groups: list[SmoothingGroup] = []
    if blocks:
        for name, block in blocks:
            if not block.pre_norm or block.attn_norm.weight is None:
                raise ValueError(
                    "activation smoothing needs pre-norm blocks with norm weights (norm_type=pre, "
                    f"norm_weights=true: a retrofit); {name} has "
                    f"{'post' if not block.pre_norm else 'scale-free'} norms"
                )
            groups += _hrm_groups(block, name)
        final = getattr(getattr(model, "model", None), "norm", None)
    else:
        model_type = getattr(config, "model_type", None)
        if model_type not in TRANSFORMERS_TYPES:
            raise ValueError(
                f"activation smoothing supports the HRM and transformers' {', '.join(TRANSFORMERS_TYPES)} "
                f"models; this model is {model_type or type(model).__name__}"
            )
        base = getattr(model, "model", None)
        for i, layer in enumerate(getattr(base, "layers", [])):
            groups += _decoder_groups(layer, f"model.layers.{i}", config)
        final = getattr(base, "norm", None)
    if isinstance(head, nn.Linear) and final is not None and getattr(final, "weight", None) is not None:
        if head.weight is model.get_input_embeddings().weight:
            raise ValueError("activation smoothing of a tied LM head needs it untied first")
        groups.append(SmoothingGroup("lm_head", [head], _divide_weight(final)))
    return groups


@torch.no_grad()
def smooth_activations(
    model: Any,
    calibration: Sequence[torch.Tensor],
    alpha: float = DEFAULT_ALPHA,
    skip: tuple[str, ...] = (),
) -> dict:
    """Fold SmoothQuant scales into `model` in place (see the module docstring); returns a record of what was
    done. `calibration`: 1-D token-id tensors, each run through the model alone (no padding); `skip`: name
    endings of groups left as they are (consumers that stay in fp32)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing alpha must be in [0, 1], got {alpha}")
    if not calibration:
        raise ValueError("activation smoothing needs calibration text (token ids); none was given")
    groups = [g for g in smoothing_groups(model) if not g.name.endswith(skip)]
    stats: dict[int, torch.Tensor] = {}

    def record(index: int):
        def hook(_module, args):
            x = args[0].detach().float()
            peak = x.abs().reshape(-1, x.shape[-1]).amax(dim=0)
            stats[index] = peak if index not in stats else torch.maximum(stats[index], peak)

        return hook

    handles = [g.consumers[0].register_forward_pre_hook(record(i)) for i, g in enumerate(groups)]
    was_training = model.training
    model.eval()
    try:
        for ids in calibration:
            model(input_ids=ids.reshape(1, -1).to(next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    ratios = []
    for i, group in enumerate(groups):
        if i not in stats:
            raise ValueError(f"activation smoothing: calibration never reached {group.name}")
        act = group.tie(stats[i]).clamp_min(1e-5)
        weight = torch.stack([c.weight.detach().abs().amax(dim=0) for c in group.consumers]).amax(0)
        weight = group.tie(weight)
        s = (act.pow(alpha) / weight.clamp_min(1e-5).pow(1 - alpha)).clamp_min(1e-5)
        ratios.append(float(act.max() / act.median()))
        group.divide(s)
        for consumer in group.consumers:
            consumer.weight.data *= s[None, :]
    return {
        "method": "smoothquant",
        "alpha": alpha,
        "groups": len(groups),
        "calibration_windows": len(calibration),
        "calibration_tokens": int(sum(len(ids) for ids in calibration)),
        "max_outlier_ratio": max(ratios),
    }
