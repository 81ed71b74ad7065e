"""Retrofitted recurrence: a pretrained decoder-only transformer (Llama, SmolLM2, Mistral-style, Qwen2) as the HRM.

The L stack takes source layers [A, B), the H stack [C, D) (layers outside both are dropped). With zero initial
states, one cycle each, L = [0, k) and H = [k, n), the HRM computes its source exactly: the first L step sees
0 + 0 + x (the embeddings), the first H step sees 0 + z_L, and the head reads the source's final norm of z_H.
More cycles make it recurrent; `recurrence_gates` (on by default) gate every level call after the first with a
zero-initialised vector, so the converted model still equals its source at the target cycle counts (when no
layer is dropped) until fine-tuning opens the gates.

The source's RMSNorm scales become learnable norm weights of the port (`norm_weights`), not folded into the
next linear layers: folding is exact only up to rounding, would untie a tied head (the final norm folded into
the embedding table), and would change the parameters AdamW sees, so the identity-retrofit control would no
longer fine-tune like its source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from hrm_codegen.checkpoint import CheckpointError, check_weights_fit, save_checkpoint
from hrm_codegen.families import get_family
from hrm_codegen.models.hrm_act_v1 import HierarchicalReasoningModel_ACTV1, HRMConfig
from hrm_codegen.pretrained_sources import SOURCE_FILE
from hrm_codegen.tokenization import CodeTokenizer

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
RETROFIT_FILE = "retrofit.json"
IDENTITY_TOLERANCE = 1e-4  # max |logit difference| allowed against the source where the model must equal it


class RetrofitError(ValueError):
    """A source or layer split the conversion cannot take; the message names what and where."""


@dataclass(frozen=True)
class LayerSplit:
    """Source layers of the L stack [l_start, l_stop) and of the H stack [h_start, h_stop), and the cycles."""

    l_start: int
    l_stop: int
    h_start: int
    h_stop: int
    H_cycles: int = 1  # noqa: N815 - the HRM's config key
    L_cycles: int = 1  # noqa: N815

    def check(self, num_layers: int) -> None:
        """Raise RetrofitError unless both ranges are non-empty, inside [0, num_layers) and disjoint."""
        for name, start, stop in (("L", self.l_start, self.l_stop), ("H", self.h_start, self.h_stop)):
            if not 0 <= start < stop <= num_layers:
                raise RetrofitError(
                    f"--{name.lower()}-layers {start}:{stop} is not a non-empty range of the source's "
                    f"{num_layers} layers (0 <= start < stop <= {num_layers})"
                )
        if self.l_start < self.h_stop and self.h_start < self.l_stop:
            raise RetrofitError(
                f"--l-layers {self.l_start}:{self.l_stop} and --h-layers {self.h_start}:{self.h_stop} overlap; "
                "each source layer goes to one stack at most"
            )
        for key in ("H_cycles", "L_cycles"):
            if getattr(self, key) < 1:
                raise RetrofitError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")

    def keeps_every_layer_in_order(self, num_layers: int) -> bool:
        """L then H cover every source layer, in the source's order: the identity mapping."""
        return self.l_start == 0 and self.l_stop == self.h_start and self.h_stop == num_layers

    @property
    def layer_evals(self) -> int:
        """Transformer-layer evaluations per token."""
        return self.H_cycles * (self.L_cycles * (self.l_stop - self.l_start) + (self.h_stop - self.h_start))


def parse_range(text: str, flag: str) -> tuple[int, int]:
    """`A:B` -> (A, B) (a RetrofitError naming `flag` otherwise)."""
    parts = text.split(":")
    try:
        start, stop = (int(p) for p in parts)
    except ValueError:
        raise RetrofitError(f"{flag} {text!r}: expected START:STOP, two integers (e.g. 0:15)") from None
    return start, stop


def default_split(num_layers: int, H_cycles: int = 1, L_cycles: int = 1) -> LayerSplit:  # noqa: N803
    """L = the first half of the layers, H = the rest."""
    half = num_layers // 2
    return LayerSplit(0, half, half, num_layers, H_cycles, L_cycles)


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    theta = theta if theta is not None else getattr(config, "rope_theta", None)
    if theta is None:
        raise RetrofitError(f"{config.model_type} config has no rope_theta")
    kind = params.get("rope_type", "default") if isinstance(params, dict) else "default"
    scaling = getattr(config, "rope_scaling", None)
    if kind != "default" or (isinstance(scaling, dict) and scaling.get("rope_type", "default") != "default"):
        raise RetrofitError(
            f"the source uses RoPE type {kind!r}/{scaling!r}; the HRM port has plain RoPE only (rope_type default)"
        )
    return float(theta)


def check_source(model: nn.Module) -> Any:
    """The source's config after checking it is a decoder-only model the port can compute exactly."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if config is None or model_type not in SUPPORTED_MODEL_TYPES:
        raise RetrofitError(
            f"unsupported source architecture {model_type!r} ({type(model).__name__}): retrofit takes a "
            f"decoder-only causal LM of type {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    hidden, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    if head_dim * heads != hidden:
        raise RetrofitError(f"head_dim={head_dim} x {heads} heads != hidden_size={hidden}: not supported")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise RetrofitError(f"hidden_act={config.hidden_act!r}: the port's MLP is SwiGLU (silu)")
    if getattr(config, "mlp_bias", False):
        raise RetrofitError("mlp_bias=true: the port's MLP has no biases")
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True):
        raise RetrofitError(
            f"sliding-window attention (sliding_window={window}): the port attends to all keys"
        )
    _rope_theta(config)
    return config


def _has_attention_bias(model: nn.Module) -> bool:
    return any(name.endswith("self_attn.q_proj.bias") for name, _ in model.named_parameters())


def hrm_config(
    model: nn.Module, split: LayerSplit, gates: bool = True, seq_len: int | None = None
) -> HRMConfig:
    """The HRM config that holds `model`'s layers as `split` says."""
    config = check_source(model)
    split.check(config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    return HRMConfig.from_arch(
        {
            "vocab_size": config.vocab_size,
            "seq_len": seq_len or config.max_position_embeddings,
            "H_cycles": split.H_cycles,
            "L_cycles": split.L_cycles,
            "H_layers": split.h_stop - split.h_start,
            "L_layers": split.l_stop - split.l_start,
            "hidden_size": config.hidden_size,
            "num_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads or config.num_attention_heads,
            "intermediate_size": config.intermediate_size,
            "attention_bias": _has_attention_bias(model),
            "rms_norm_eps": float(config.rms_norm_eps),
            "rope_theta": _rope_theta(config),
            "norm_type": "pre",
            "final_norm": "head",
            "norm_weights": True,
            "scale_embeddings": False,
            "tie_word_embeddings": tied,
            "zero_init_states": True,
            "recurrence_gates": gates and (split.H_cycles > 1 or split.L_cycles > 1),
            "bp_steps": 0,  # a pretrained stack learns through every step it runs
            "forward_dtype": "float32",
        }
    )


def _layer_state(source: dict[str, torch.Tensor], src: int, dst: str, bias: bool) -> dict[str, torch.Tensor]:
    """Our block `dst` (e.g. model.L_level.layers.0) from the source's layer `src`."""
    p = f"model.layers.{src}."
    state = {
        f"{dst}.self_attn.qkv_proj.weight": torch.cat(
            [source[p + f"self_attn.{n}_proj.weight"] for n in ("q", "k", "v")]
        ),
        f"{dst}.self_attn.o_proj.weight": source[p + "self_attn.o_proj.weight"],
        f"{dst}.mlp.gate_up_proj.weight": torch.cat(
            [source[p + "mlp.gate_proj.weight"], source[p + "mlp.up_proj.weight"]]
        ),
        f"{dst}.mlp.down_proj.weight": source[p + "mlp.down_proj.weight"],
        f"{dst}.attn_norm.weight": source[p + "input_layernorm.weight"],
        f"{dst}.mlp_norm.weight": source[p + "post_attention_layernorm.weight"],
    }
    if bias:
        state[f"{dst}.self_attn.qkv_proj.bias"] = torch.cat(
            [source[p + f"self_attn.{n}_proj.bias"] for n in ("q", "k", "v")]
        )
    return state


def convert(model: nn.Module, split: LayerSplit, gates: bool = True, seq_len: int | None = None):
    """(HRM with the source's weights, its HRMConfig): every tensor copied, none initialised at random
    except the zero gates."""
    config = hrm_config(model, split, gates, seq_len)
    source = {k: v.detach().to(torch.float32) for k, v in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {
        "model.embed_tokens.embedding_weight": source["model.embed_tokens.weight"],
        "model.norm.weight": source["model.norm.weight"],
    }
    if not config.tie_word_embeddings:
        state["lm_head.weight"] = source["lm_head.weight"]
    for level, start, stop in (("L", split.l_start, split.l_stop), ("H", split.h_start, split.h_stop)):
        for i, src in enumerate(range(start, stop)):
            state.update(_layer_state(source, src, f"model.{level}_level.layers.{i}", config.attention_bias))
    hrm = HierarchicalReasoningModel_ACTV1(config)
    fresh = [k for k in hrm.state_dict() if k.endswith((".gate", "H_init", "L_init"))]  # no source tensor
    try:
        check_weights_fit(state, hrm, f"the converted {type(model).__name__}", may_lack=fresh)
    except CheckpointError as err:
        raise RetrofitError(str(err)) from None
    hrm.load_state_dict(state, strict=False)
    return hrm.eval(), config


@torch.no_grad()
def max_logit_difference(hrm: nn.Module, source: nn.Module, input_ids: torch.Tensor) -> float:
    """max |HRM logits - source logits| on `input_ids` [B, S] (no padding), both in fp32."""
    ours = hrm.lm_forward(input_ids)  # type: ignore[operator]
    theirs = source(input_ids=input_ids).logits
    return float((ours.float() - theirs.float()).abs().max())


def preserves_function(config: HRMConfig, split: LayerSplit, num_layers: int) -> bool:
    """Whether the converted model must equal its source: every layer kept in order, and one cycle each or
    closed gates on the extra cycles."""
    one_cycle = split.H_cycles == 1 and split.L_cycles == 1
    return split.keeps_every_layer_in_order(num_layers) and (one_cycle or config.recurrence_gates)


def retrofit(
    model: nn.Module,
    hf_tokenizer: Any,
    split: LayerSplit,
    out: str | Path,
    source_info: dict[str, Any],
    gates: bool = True,
    seq_len: int | None = None,
) -> Path:
    """Convert `model` and write `out/step_0` as a checkpoint of family `hrm`; returns the step directory.

    Where the conversion must preserve the source's function, the logits are compared on a probe batch first
    and nothing is written when they differ by more than IDENTITY_TOLERANCE.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise RetrofitError(f"--out {out} exists and is not empty; choose a new run directory")
    hrm, config = convert(model, split, gates, seq_len)
    num_layers = check_source(model).num_hidden_layers
    tokenizer = CodeTokenizer(hf_tokenizer, source_info.get("source", "source"))
    generator = torch.Generator().manual_seed(0)
    probe = torch.randint(0, min(config.vocab_size, tokenizer.vocab_size), (2, 16), generator=generator)
    delta = max_logit_difference(hrm, model.eval(), probe)
    exact = preserves_function(config, split, num_layers)
    if exact and delta > IDENTITY_TOLERANCE:
        raise RetrofitError(
            f"the converted HRM differs from its source by {delta:.3g} (> {IDENTITY_TOLERANCE}) where it must "
            "equal it; nothing written"
        )
    source_record = Path(str(source_info.get("source", ""))) / SOURCE_FILE  # fetch_pretrained's provenance
    if source_record.is_file():
        source_info = {**source_info, "fetched": json.loads(source_record.read_text())}
    record = {
        **source_info,
        "split": {"L": [split.l_start, split.l_stop], "H": [split.h_start, split.h_stop]},
        "H_cycles": split.H_cycles,
        "L_cycles": split.L_cycles,
        "source_layers": num_layers,
        "layer_evals_per_token": split.layer_evals,
        "recurrence_gates": config.recurrence_gates,
        "function_preserving": exact,
        "probe_max_abs_logit_diff": delta,
    }
    run_config = _run_config(config, tokenizer, source_info.get("source", ""))

    def extra(step_dir: Path) -> None:
        get_family("hrm").save_weights(hrm, hrm.state_dict(), tokenizer, step_dir)
        (step_dir / RETROFIT_FILE).write_text(json.dumps(record, indent=2) + "\n")

    save_checkpoint(
        out,
        0,
        config=run_config,
        tokenizer=tokenizer,
        train_state={"total_steps": 0, "retrofit": record},
        extra_files=extra,
    )
    return out / "step_0"


def _run_config(config: HRMConfig, tokenizer: CodeTokenizer, source: str):
    """A full training config (the launcher's defaults) whose arch is the retrofitted HRM."""
    from hrm_codegen.train_config import compose_config

    cfg = compose_config(["arch=hrm_v1", "run_name=retrofit"])
    arch = {"name": "hrm", **config.arch_dict()}
    cfg.arch = OmegaConf.create(arch)
    cfg.tokenizer.name_or_path = str(source)
    cfg.tokenizer.fingerprint = tokenizer.fingerprint
    cfg.train.max_steps = 0
    cfg.data.seq_len = min(config.seq_len, 2048)
    return cfg
