"""Analytic training FLOPs per token of the HRM, HRM-Text and the Llama baseline (matmuls only; norms and
activations ignored).

Conventions: a matmul with N weights costs 2N FLOPs per token forward and 4N backward; causal attention over a
sequence of S tokens costs 2 * 2 * hidden * (S + 1) / 2 per token per layer forward (QK^T and AV over the
average context). The HRM runs most of its layer evaluations under `no_grad`, so those count forward only: only
the `arch.bp_steps` level evaluations that carry gradient (the last H and L steps, `gradient_steps`) count backward.
"""

from __future__ import annotations

from transformers import HrmTextConfig, LlamaConfig

from hrm_codegen.models.baseline import swiglu_intermediate_size
from hrm_codegen.models.hrm_act_v1 import HRMConfig, gradient_steps


def block_params(hidden_size: int, intermediate_size: int, kv_fraction: float = 1.0) -> int:
    """Matmul weights of one block: q, k, v, o projections plus the three SwiGLU matrices.

    `kv_fraction` (grouped-query attention): key/value heads over query heads; k and v shrink by it.
    """
    attention = (2 + 2 * kv_fraction) * hidden_size * hidden_size
    return round(attention) + 3 * hidden_size * intermediate_size


def attention_flops(hidden_size: int, seq_len: int) -> float:
    """Forward FLOPs per token of one causal attention's score and value products."""
    return 2.0 * hidden_size * (seq_len + 1)


def hrm_flops_per_token(cfg: HRMConfig, seq_len: int | None = None) -> dict[str, float]:
    """Training FLOPs per token of one ACT segment, split into the no-grad (forward-only) and trained parts.

    The trained part is the level evaluations within `cfg.bp_steps` (forward and backward) plus the LM head.
    """
    seq_len = seq_len or cfg.seq_len
    hidden = cfg.hidden_size
    intermediate = cfg.intermediate_size or swiglu_intermediate_size(hidden, cfg.expansion)
    layer_forward = 2.0 * block_params(hidden, intermediate, cfg.kv_heads / cfg.num_heads)
    layer_forward += attention_flops(hidden, seq_len)
    h_grad, l_grad = gradient_steps(cfg.bp_steps, cfg.H_cycles, cfg.L_cycles)
    trained_layers = l_grad * cfg.L_layers + h_grad * cfg.H_layers
    no_grad_layers = cfg.layer_evals_per_segment - trained_layers
    no_grad = no_grad_layers * layer_forward
    trained = 3.0 * trained_layers * layer_forward + 6.0 * cfg.vocab_size * hidden
    return {"no_grad": no_grad, "trained": trained, "total": no_grad + trained}


def llama_flops_per_token(config: LlamaConfig, seq_len: int) -> dict[str, float]:
    """Training FLOPs per token of a LlamaForCausalLM: 6 * matmul weights (lm_head included) plus attention."""
    hidden = config.hidden_size
    kv_fraction = (config.num_key_value_heads or config.num_attention_heads) / config.num_attention_heads
    layer_forward = 2.0 * block_params(hidden, config.intermediate_size, kv_fraction)
    layer_forward += attention_flops(hidden, seq_len)
    trained = 3.0 * config.num_hidden_layers * layer_forward + 6.0 * config.vocab_size * hidden
    return {"no_grad": 0.0, "trained": trained, "total": trained}


def hrm_text_bp_cycles(config: HrmTextConfig) -> list[int]:
    """Per H cycle, the trailing L cycles that propagate gradients, as HrmTextModel pads `L_bp_cycles`."""
    raw = list(config.L_bp_cycles or [])
    padded = [1] * max(0, config.H_cycles - len(raw)) + raw
    return [max(0, min(padded[h] if h < len(padded) else 1, config.L_cycles)) for h in range(config.H_cycles)]


def hrm_text_flops_per_token(config: HrmTextConfig, seq_len: int) -> dict[str, float]:
    """Training FLOPs per token of an HrmTextForCausalLM.

    Each H cycle runs the L stack L_cycles times and the H stack once (stacks of `num_layers_per_stack` layers;
    attention has a fifth, gating projection). Every H-stack call and the last `L_bp_cycles[h]` L-stack calls
    of H cycle h are differentiated (forward + backward = 3x forward); the other L-stack calls run under no_grad
    (forward only). The LM head is trained; the embedding lookup costs nothing.
    """
    hidden, layers = config.hidden_size, config.num_layers_per_stack or 1
    heads_width = config.num_attention_heads * (config.head_dim or hidden // config.num_attention_heads)
    matmul_weights = 5 * hidden * heads_width + 3 * hidden * config.intermediate_size
    layer_forward = 2.0 * matmul_weights + 2.0 * heads_width * (seq_len + 1)
    grad_l_calls = sum(hrm_text_bp_cycles(config))
    trained_calls = config.H_cycles + grad_l_calls
    no_grad_calls = config.H_cycles * config.L_cycles - grad_l_calls
    no_grad = no_grad_calls * layers * layer_forward
    trained = 3.0 * trained_calls * layers * layer_forward + 6.0 * config.vocab_size * hidden
    return {"no_grad": no_grad, "trained": trained, "total": no_grad + trained}
