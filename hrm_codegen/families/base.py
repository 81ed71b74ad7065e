"""What a model family is: one object that builds, trains, saves, loads and decodes one kind of model.

Everything outside `hrm_codegen/families/` (the Trainer, checkpoints, inference loading, the evaluator) talks
to a model only through its family, found by name (`arch.name`) in the registry. Adding a family is adding
one module that defines a `ModelFamily` subclass and calls `register_family`, plus its `configs/arch/` file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hrm_codegen.checkpoint import (
    WEIGHTS_FILE,  # a step's weights, for families without a transformers layout
)
from hrm_codegen.generation import generate, max_positions, tail_has_stop
from hrm_codegen.losses_codegen import LossOutput, codegen_loss

__all__ = ["tail_has_stop"]

HF_DIR = "hf"  # the save_pretrained directory inside a step directory


@dataclass(frozen=True)
class GenerationRequest:
    """How to decode: greedy unless `do_sample`; stop at EOS, at a stop string or after `max_new_tokens`.

    Stop strings are matched in the generated text only (never across the prompt boundary); `decode`
    turns generated ids into text for that. `seeds`: one seed per row (sampling independent of batching),
    or one for the batch, or none (torch's global RNG).
    """

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    eos_token_id: int | None = None
    pad_token_id: int = 0
    stop_strings: tuple[str, ...] = ()
    decode: Callable[[list[int]], str] | None = None
    seeds: tuple[int, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)  # family-specific (e.g. cache, compile)


@dataclass
class Generated:
    """The one generation contract: per row, the new token ids (up to the one that stopped it, EOS left
    out) and why it stopped: "eos", "stop_string" or "length" (max_new_tokens or the model's positions)."""

    completion_ids: list[list[int]]
    finish_reasons: list[str]
    compile_seconds: float | None = None  # wall time of a first compiled step in this call (compile included)


class TrainState:
    """Training-time state a family keeps between optimizer steps for one micro-batch slot.

    Stateless families use this base class as is. A stateful one (the HRM's ACT carry) overrides all four
    methods; the Trainer and the checkpoint code only call them and save `state_dict()` as tensors.
    `fixed_shape`: batches must keep one [B, seq_len] shape (a state carried across steps needs it).
    """

    fixed_shape: bool = False

    def prepare(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
        """Get ready for the next forward on `batch` (e.g. start a fresh carry for halted sequences)."""

    def targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The labels the next forward trains on."""
        return batch["labels"]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What must be checkpointed to resume bit-exactly (empty: nothing)."""
        return {}

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], device: torch.device | str) -> None:
        """Put back what `state_dict` returned."""


class ModelFamily:
    """Base class of the model families; subclasses override what differs. See the module docstring."""

    name: str = ""
    description: str = ""

    # -- config and model
    def arch_schemas(self) -> dict[str, type]:
        """Structured schemas of the family's `configs/arch/` files, by ConfigStore name (`arch/<name>`)."""
        return {}

    def check(self, config: dict[str, Any]) -> None:
        """Raise ValueError naming a bad key or value of the family's config (`arch` without `name`)."""
        with torch.device("meta"):
            self.build(config)

    def check_packing(self, config: dict[str, Any]) -> None:
        """Raise ValueError (one line) when the model cannot keep packed examples apart (data.pack=true)."""

    def build(self, config: dict[str, Any]) -> nn.Module:
        """The model, freshly initialised, from its config mapping (vocab_size filled in)."""
        raise NotImplementedError

    # Whether train.init_from may name an outside transformers model (see is_pretrained_source).
    can_init_from_pretrained: bool = False

    def init_from_pretrained(self, source: str, config: dict[str, Any]) -> nn.Module:
        """The model with the weights of a pretrained `source` (train.init_from for families that can)."""
        raise ValueError(
            f"arch.name={self.name} cannot start from a pretrained model directory or Hub id ({source}); "
            "train.init_from takes a checkpoint of this launcher for this family"
        )

    # -- training
    def lm_logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Plain next-token logits [B, S, V] of a batch (validation loss)."""
        return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits

    def new_train_state(self, config: dict[str, Any], train: Any = None) -> TrainState:
        """A fresh training-time state for one micro-batch slot (`train`: the run's `train` settings, when known)."""
        return TrainState()

    def prepare_training(self, model: nn.Module, train: Any) -> None:
        """Set up `model` for training under the run's `train` settings before its optimizer is built (which
        parameters train, at which learning-rate scale). No-op here."""

    def compile_for_training(self, model: nn.Module) -> None:
        """`train.compile=true`: compile the training forward in place (`nn.Module.compile`, inductor; the
        parameter names and the state dict stay as they are). A family may compile a smaller part instead."""
        model.compile()

    def before_step(self, model: nn.Module, step: int, total_steps: int, cfg: Any) -> dict[str, Any] | None:
        """Called by the Trainer before optimizer step `step` (0-based) of `total_steps`, with the unwrapped
        model and the whole run config: a family's schedules (e.g. the HRM's bp_steps warm-up). What it returns is
        logged with the step's metrics (e.g. the HRM's random cycles). No-op here."""

    def forward_loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], state: TrainState, loss_type: str
    ) -> LossOutput:
        """One training forward and its loss terms (after `state.prepare(model, batch)`)."""
        return codegen_loss({"logits": self.lm_logits(model, batch)}, batch["labels"], loss_type)

    def report_lines(self, config: dict[str, Any], total_params: int) -> list[str]:
        """Extra lines for the dry-run report."""
        return []

    def flops_per_token(self, config: dict[str, Any], seq_len: int) -> dict[str, float]:
        """Analytic training FLOPs per token (`forward`, `train`), for equal-compute comparisons."""
        raise NotImplementedError(f"arch.name={self.name} has no FLOPs model")

    # -- saving and loading
    def save_weights(
        self, model: nn.Module, state: Mapping[str, torch.Tensor], tokenizer: Any, directory: Path
    ) -> None:
        """Write the weights (from the full `state`, also under FSDP) into a step directory, once."""
        from safetensors.torch import save_file

        tensors = {name: t.detach().cpu().contiguous() for name, t in state.items()}
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})

    def build_for_checkpoint(self, config: dict[str, Any], path: Path) -> nn.Module:
        """The model whose weights `path` (a step directory or weights file) holds: `build(config)`, unless the
        family can tell the architecture from the step itself (a run started from a pretrained model)."""
        return self.build(config)

    def load_weights(self, model: nn.Module, path: Path) -> None:
        """Load weights saved by `save_weights` (a step directory) or a bare weights file into `model`."""
        from hrm_codegen.checkpoint import load_model_weights

        load_model_weights(model, path)

    # -- inference
    def max_length(self, model: nn.Module) -> int | None:
        """Positions the model can take (prompt plus completion), when it has a limit (the HRM's seq_len is its
        config's max_position_embeddings): what decoding stops at."""
        return max_positions(model)

    def generate(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        request: GenerationRequest,
    ) -> Generated:
        """Decode left-padded prompts [B, P]; one `Generated` row per prompt row. Every family's model is a
        transformers causal LM, so this is transformers' `generate` (`decode_request`) unless overridden."""
        return decode_request(model, input_ids, attention_mask, request)


def decode_request(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    request: GenerationRequest,
    prefix_mask: torch.Tensor | None = None,
) -> Generated:
    """Decode a family's `GenerationRequest` with `generation.generate` (one seed per row when given)."""
    r = request
    options = dict(r.options)
    seeds: Any = list(r.seeds) if len(r.seeds) > 1 else (r.seeds[0] if r.seeds else None)
    out = generate(
        model,
        input_ids,
        attention_mask,
        max_new_tokens=r.max_new_tokens,
        do_sample=r.do_sample,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        eos_token_id=r.eos_token_id,
        pad_token_id=r.pad_token_id,
        stop_strings=r.stop_strings,
        tokenizer=r.decode,
        seed=seeds if r.do_sample else None,
        prefix_mask=prefix_mask,
        compile=bool(options.pop("compile", False)),
        **options,
    )
    return Generated(out.completion_ids, out.finish_reasons, out.compile_seconds)


def step_weights_file(path: Path) -> Path:
    """The weights of a step directory: `<step>/hf/model.safetensors` (the save_pretrained layout), or the
    `model.safetensors` of steps written before it; a weights file as it is."""
    if not path.is_dir():
        return path
    old = path / WEIGHTS_FILE
    return old if old.is_file() else path / HF_DIR / WEIGHTS_FILE


def save_hf(model: Any, tokenizer: Any, out: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """`save_pretrained` with the tokenizer's special ids in the config and generation config, and the tokenizer.

    pad_token_id stays out of config.json: it would make the embedding of GPT-2's EOS (= its pad token)
    untrainable when the export is fine-tuned further. `state`: the weights to write (the full state under FSDP).
    """
    model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_id, tokenizer.eos_id
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id
    )
    seq_len = getattr(model.config, "seq_len", None)  # the HRM's positions
    if seq_len is not None:
        tokenizer.hf.model_max_length = seq_len  # the context harnesses truncate prompts to
    model.save_pretrained(out, state_dict=state)
    tokenizer.save(out)


FAMILIES: dict[str, ModelFamily] = {}


def is_pretrained_source(source: str | Path) -> bool:
    """Whether `train.init_from` names an outside transformers model rather than a checkpoint of this launcher:
    a save_pretrained directory (config.json, no meta.json, no `latest`), or a Hub id `owner/name` when no such
    local path exists."""
    path = Path(source).expanduser()
    if path.is_dir():
        return (path / "config.json").is_file() and not any(
            (path / name).is_file() for name in ("meta.json", "latest")
        )
    text = str(source)
    return not path.exists() and text.count("/") == 1 and not text.startswith((".", "/", "~"))


# Arch keys a transformers config holds under another name.
HF_CONFIG_NAMES = {"num_heads": "num_attention_heads", "seq_len": "max_position_embeddings"}


def arch_from_hf_config(hf_config: Any, arch: Mapping[str, Any]) -> dict[str, Any]:
    """`arch` (a family's arch keys) with each key a transformers config also holds taken from `hf_config`: under
    its own name, or transformers' (`HF_CONFIG_NAMES`); `rope_theta` also from `rope_parameters`."""
    out = dict(arch)
    rope = getattr(hf_config, "rope_parameters", None)
    for key in arch:
        if key == "name":
            continue
        value = getattr(hf_config, HF_CONFIG_NAMES.get(key, key), None)
        if value is None and key == "rope_theta" and isinstance(rope, dict):
            value = rope.get("rope_theta")
        if isinstance(value, list | tuple):
            value = list(value)
        if isinstance(value, bool | int | float | str | list):
            out[key] = value
    return out


def register_family(family: ModelFamily) -> ModelFamily:
    """Make `family` available under `family.name` (as `arch.name`); a second family of one name is refused."""
    if not family.name:
        raise ValueError(f"{type(family).__name__} has no name")
    existing = FAMILIES.get(family.name)
    if existing is not None and type(existing) is not type(family):
        raise ValueError(
            f"a model family named {family.name!r} is already registered ({type(existing).__name__})"
        )
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> ModelFamily:
    """The registered family `name`, or a ValueError listing the known ones."""
    if name not in FAMILIES:
        raise ValueError(
            f"arch.name={name!r} is not a known model family; expected one of {sorted(FAMILIES)}"
        )
    return FAMILIES[name]


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters by top-level component (wrapper prefixes `inner.` / `model.` skipped), plus `total`."""
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        parts = name.split(".")
        component = parts[1] if parts[0] in ("inner", "model") and len(parts) > 2 else parts[0]
        counts[component] = counts.get(component, 0) + param.numel()
    counts["total"] = sum(counts.values())
    return counts


def params_sha256(model: nn.Module) -> str:
    """Sha256 over a model's state dict (names and fp32 values): equal on data-parallel replicas in sync."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
