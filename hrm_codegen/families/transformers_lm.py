"""Families whose model is a transformers causal LM: the Llama baseline (`arch.name=transformer`) and any
outside `AutoModelForCausalLM` (`pretrained`, used by inference loading for `evaluate.py --model`).

A step of such a family stores its weights once, in the save_pretrained layout in `<step dir>/hf/`, which plain
transformers loads with `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import MISSING
from torch import nn
from transformers import PreTrainedModel

from hrm_codegen.families.base import (
    HF_DIR,
    ModelFamily,
    register_family,
    save_hf,
    step_weights_file,
)
from hrm_codegen.families.hrm import HRMArchConfig
from hrm_codegen.flops import llama_flops_per_token
from hrm_codegen.models.baseline import build_baseline, check_baseline_packing

# Written into the config.json of a model started from a pretrained one (train.init_from): its steps rebuild
# the architecture from `<step>/hf/config.json`, not from `arch`.
PRETRAINED_SOURCE_KEY = "hrm_codegen_init_from"


def load_tied_weights(model: nn.Module, file: Path) -> None:
    """Load a save_pretrained safetensors file into `model`; tied parameters may be absent from it."""
    from hrm_codegen.checkpoint import check_weights_fit, load_weights

    state = load_weights(file)
    expected = model.state_dict()
    loaded = {expected[k].data_ptr() for k in state if k in expected}
    tied = [k for k in expected if k not in state and expected[k].data_ptr() in loaded]
    check_weights_fit(state, model, file, may_lack=tied)
    model.load_state_dict(state, strict=False)


class TransformersFamily(ModelFamily):
    """Shared behaviour of transformers causal LMs: logits, saving in `hf/`, loading, HF `generate`."""

    can_init_from_pretrained = True
    model_class: type | None = None  # the class init_from_pretrained accepts (None: any causal LM)

    def init_from_pretrained(self, source: str, config: dict[str, Any]) -> nn.Module:
        """Weights and architecture of a save_pretrained directory or Hub id, in float32 (master weights)."""
        from hrm_codegen.pretrained_sources import load_causal_lm

        model = load_causal_lm(source, what="train.init_from (not a checkpoint of this launcher)")
        if self.model_class is not None and not isinstance(model, self.model_class):
            raise ValueError(
                f"train.init_from={source} holds a {type(model).__name__}; arch.name={self.name} trains a "
                f"{self.model_class.__name__}"
            )
        setattr(model.config, PRETRAINED_SOURCE_KEY, str(source))
        return cast(nn.Module, model)

    def build_for_checkpoint(self, config: dict[str, Any], path: Path) -> nn.Module:
        """From `<step>/hf/config.json` when the run started from a pretrained model, else `build(config)`."""
        from transformers import AutoConfig, AutoModelForCausalLM

        hf_config = path / HF_DIR / "config.json"
        if (
            path.is_dir()
            and hf_config.is_file()
            and json.loads(hf_config.read_text()).get(PRETRAINED_SOURCE_KEY)
        ):
            return cast(
                nn.Module, AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path / HF_DIR))
            )
        return self.build(config)

    def lm_logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of a transformers causal LM (right padding is masked by the attention mask).

        A packed batch (with `segment_ids`) passes its position_ids, which restart per example, no attention
        mask and no cache: transformers then builds a block-diagonal causal mask (padding tokens, all at
        position 0, each see only themselves and carry no labels).
        """
        if "segment_ids" in batch:
            return model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
            ).logits
        return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits

    def report_lines(self, config: dict[str, Any], total_params: int) -> list[str]:
        return [f"  (arch.name={self.name} has no Q-head flag)"]

    def save_weights(
        self, model: nn.Module, state: Mapping[str, torch.Tensor], tokenizer: Any, directory: Path
    ) -> None:
        """save_pretrained layout in `<step>/hf/` (config.json, weights, generation config, tokenizer)."""
        save_hf(cast(PreTrainedModel, model), tokenizer, directory / HF_DIR, dict(state))

    def load_weights(self, model: nn.Module, path: Path) -> None:
        """From a step directory (its `hf/`, or the `model.safetensors` of older steps) or a weights file."""
        load_tied_weights(model, step_weights_file(path))


def _transformer_arch_schema() -> type:
    """An overlay on HRMArchConfig adding the baseline keys (hrm_codegen/models/baseline.py).

    Listed after an HRM arch in a defaults list, it leaves that arch's values as they are (its inherited keys
    are MISSING, which a merge does not write) and makes `match`, `num_hidden_layers` and `initializer_range`
    known keys.
    """
    hints = typing.get_type_hints(HRMArchConfig)
    specs: list[tuple[str, Any, Any]] = [
        (f.name, hints[f.name], field(default=MISSING)) for f in dataclasses.fields(HRMArchConfig)
    ]
    specs += [
        ("match", str, field(default="params")),
        ("num_hidden_layers", int | None, field(default=None)),
        ("initializer_range", float, field(default=0.02)),
    ]
    return dataclasses.make_dataclass("TransformerArchConfig", specs, bases=(HRMArchConfig,))


TransformerArchConfig = _transformer_arch_schema()


class LlamaBaselineFamily(TransformersFamily):
    """The Llama baseline, parameter- or compute-matched to an HRM config (`models/baseline.py`)."""

    name = "transformer"
    description = "Llama baseline (transformers), matched to an HRM config"

    def arch_schemas(self) -> dict[str, type]:
        return {"transformer_schema": TransformerArchConfig}

    def check_packing(self, config: dict[str, Any]) -> None:
        check_baseline_packing(config)

    def build(self, config: dict[str, Any]) -> nn.Module:
        return build_baseline(config)

    def flops_per_token(self, config: dict[str, Any], seq_len: int) -> dict[str, float]:
        with torch.device("meta"):
            llama = build_baseline(config)
        flops = llama_flops_per_token(llama.config, seq_len)
        return {"train": flops["total"], **flops}


class PretrainedFamily(TransformersFamily):
    """Any outside transformers causal LM (`evaluate.py --model DIR_OR_HUB_ID`); inference only."""

    name = "pretrained"
    description = "a transformers AutoModelForCausalLM loaded with from_pretrained"

    def build(self, config: dict[str, Any]) -> nn.Module:
        raise ValueError("arch.name=pretrained is for evaluating outside models; train with train.init_from")


TRANSFORMER = register_family(LlamaBaselineFamily())
PRETRAINED = register_family(PretrainedFamily())
