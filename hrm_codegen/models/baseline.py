"""The transformer baseline: a Llama-style decoder (`transformers.LlamaForCausalLM`) sized from an HRM config.

Two sizes: `match="params"` has H_layers + L_layers layers, about the HRM's parameter count (Llama's RMSNorms
carry a learned scale, 2 per layer plus the final norm, which the HRM's do not: (2 * layers + 1) * hidden
extra parameters); `match="compute"` has as many layers as the HRM evaluates per token,
H_cycles * (L_cycles * L_layers + H_layers) * halt_max_steps. Packed training blocks (`data.pack`) are kept
apart through their restarting position_ids (`check_baseline_packing` says when that cannot work).
"""

from __future__ import annotations

from typing import Any

import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from hrm_codegen.models.configuration_hrm import HRM_KEYS, HRMConfig

MATCHES = ("params", "compute")
ATTN_IMPLEMENTATIONS = {"auto": None, "sdpa": "sdpa", "eager": "eager", "flash_attn": "flash_attention_2"}
BASELINE_KEYS = (
    "name",
    "match",
    "num_hidden_layers",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "initializer_range",
)


def swiglu_intermediate_size(hidden_size: int, expansion: float) -> int:
    """The HRM's SwiGLU width: round(expansion * hidden * 2/3) rounded up to a multiple of 256."""
    return -(round(expansion * hidden_size * 2 / 3) // -256) * 256


def baseline_num_layers(hrm_cfg: HRMConfig, match: str) -> int:
    """Decoder layers of the baseline that matches the HRM in parameters or in layer evaluations per token."""
    if match == "params":
        return hrm_cfg.H_layers + hrm_cfg.L_layers
    if match == "compute":
        return hrm_cfg.layer_evals_per_segment * hrm_cfg.halt_max_steps
    raise ValueError(f"match must be one of {MATCHES}, got {match!r}")


def llama_config_from_hrm(
    hrm_cfg: HRMConfig | dict[str, Any],
    match: str = "params",
    vocab_size: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    num_hidden_layers: int | None = None,
    initializer_range: float = 0.02,
) -> LlamaConfig:
    """A LlamaConfig with the HRM's width, heads (grouped-query too), MLP size, RoPE, norm and head settings and a
    matched depth."""
    cfg = hrm_cfg if isinstance(hrm_cfg, HRMConfig) else HRMConfig.from_arch(dict(hrm_cfg))
    if cfg.pos_encodings != "rope":
        raise ValueError(
            f"the transformer baseline uses RoPE; pos_encodings={cfg.pos_encodings!r} is not supported"
        )
    if not cfg.causal:
        raise ValueError("the transformer baseline is a causal decoder; causal=false is not supported")
    layers = num_hidden_layers if num_hidden_layers is not None else baseline_num_layers(cfg, match)
    if layers < 1:
        raise ValueError(f"num_hidden_layers must be >= 1, got {layers}")
    settings: dict[str, Any] = {
        "vocab_size": vocab_size if vocab_size is not None else cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size
        or swiglu_intermediate_size(cfg.hidden_size, cfg.expansion),
        "num_hidden_layers": layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.hidden_size // cfg.num_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.seq_len,
        "initializer_range": initializer_range,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,  # transformers 5 folds it into rope_parameters
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.attention_bias,  # Llama puts it on o_proj too; the HRM on q, k, v only
        "mlp_bias": False,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
    }
    config = LlamaConfig(**settings)
    attn_implementation = ATTN_IMPLEMENTATIONS[cfg.attn_backend]
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    return config


def masks_packed_positions() -> bool:
    """Whether the installed transformers builds block-diagonal causal masks from restarting position_ids.

    transformers' mask utilities do this for the sdpa, eager and flex implementations when the model gets
    `position_ids` and no attention mask (`masking_utils.find_packed_sequence_indices`); older releases
    mask a plain causal triangle, so packed examples would attend to each other.
    """
    try:
        from transformers import masking_utils
    except ImportError:
        return False
    return hasattr(masking_utils, "find_packed_sequence_indices")


def check_baseline_packing(cfg_dict: dict[str, Any]) -> None:
    """Raise ValueError (one line, naming the key) when the baseline cannot train on packed blocks."""
    backend = cfg_dict.get("attn_backend", "auto")
    if backend == "flash_attn":
        raise ValueError(
            "data.pack=true with arch.name=transformer needs arch.attn_backend auto, sdpa or eager, not "
            "flash_attn: transformers' flash_attention_2 keeps packed examples apart only in a batch of one row"
        )
    if not masks_packed_positions():
        raise ValueError(
            f"data.pack=true with arch.name=transformer: the installed transformers {transformers.__version__} "
            "cannot mask packed examples from their position_ids; upgrade transformers or set data.pack=false"
        )


def build_baseline(cfg_dict: dict[str, Any]) -> LlamaForCausalLM:
    """Build the baseline from a flat mapping: HRM config keys plus `match` and the optional baseline keys.

    Baseline keys: `name` (ignored), `match` ("params" or "compute", default "params"), `num_hidden_layers`
    (overrides the matched depth), `bos_token_id`, `eos_token_id`, `pad_token_id`, `initializer_range`.
    """
    hrm_keys = set(HRM_KEYS)
    unknown = sorted(set(cfg_dict) - hrm_keys - set(BASELINE_KEYS))
    if unknown:
        raise ValueError(
            f"unknown transformer-baseline config key(s) {unknown}; expected HRM keys {sorted(hrm_keys)} "
            f"or baseline keys {list(BASELINE_KEYS)}"
        )
    hrm_cfg = HRMConfig.from_arch({k: v for k, v in cfg_dict.items() if k in hrm_keys})
    extra = {k: cfg_dict[k] for k in BASELINE_KEYS if k in cfg_dict and k != "name"}
    return LlamaForCausalLM(llama_config_from_hrm(hrm_cfg, **extra))
