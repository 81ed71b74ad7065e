"""Families whose model is a transformers causal LM: the Llama baseline (`arch.name=transformer`) and any
outside `AutoModelForCausalLM` (`pretrained`, used by inference loading for `evaluate.py --model`).

A step of such a family stores its weights once, in the save_pretrained layout in `<step dir>/hf/`, which plain
transformers loads with `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import MISSING
from torch import nn
from transformers import (
    CompileConfig,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
)

from hrm_codegen.families.base import (
    WEIGHTS_FILE,
    Generated,
    GenerationRequest,
    ModelFamily,
    register_family,
    tail_has_stop,
)
from hrm_codegen.families.hrm import HRMArchConfig
from hrm_codegen.flops import llama_flops_per_token
from hrm_codegen.generation import next_tokens
from hrm_codegen.models.baseline import build_baseline, check_baseline_packing

HF_DIR = "hf"  # the save_pretrained directory inside a step directory
# Written into the config.json of a model started from a pretrained one (train.init_from): its steps rebuild
# the architecture from `<step>/hf/config.json`, not from `arch`.
PRETRAINED_SOURCE_KEY = "hrm_codegen_init_from"


class _StopOnGeneratedText(StoppingCriteria):
    """Stops a row when the text it generated (never the prompt) ends with a stop string."""

    def __init__(self, prompt_width: int, stops: tuple[str, ...], decode: Callable[[list[int]], str]):
        self.prompt_width, self.stops, self.decode = prompt_width, stops, decode

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_width :].tolist()
        done = [tail_has_stop(ids, self.stops, self.decode) for ids in new]
        return cast(torch.BoolTensor, torch.tensor(done, dtype=torch.bool, device=input_ids.device))


class _PerRowSampler(LogitsProcessor):
    """Samples each row's next token with that row's own generator (the HRM's sampler, `next_tokens`) and
    leaves only that token possible, so greedy `generate` emits it: a completion depends on its own seed alone,
    never on the other rows of its batch (transformers' sampling draws every row from one global RNG)."""

    def __init__(
        self, seeds: tuple[int, ...], temperature: float, top_k: int, top_p: float, device: torch.device
    ):
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        tokens = next_tokens(scores.float(), True, self.temperature, self.top_k, self.top_p, self.generators)
        chosen = torch.full_like(scores, float("-inf"))
        return cast(torch.FloatTensor, chosen.scatter_(1, tokens[:, None], 0.0))


def load_tied_weights(model: nn.Module, file: Path) -> None:
    """Load a save_pretrained safetensors file into `model`; tied parameters may be absent from it."""
    from hrm_codegen.checkpoint import CheckpointError, load_weights

    state = load_weights(file)
    expected = model.state_dict()
    loaded_ptrs = {expected[k].data_ptr() for k in state if k in expected}
    missing = [k for k in expected if k not in state and expected[k].data_ptr() not in loaded_ptrs]
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in state if k in expected and state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"weights in {file} do not fit the {type(model).__name__} being built: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )
    model.load_state_dict(state, strict=False)


class TransformersFamily(ModelFamily):
    """Shared behaviour of transformers causal LMs: logits, saving in `hf/`, loading, HF `generate`."""

    can_init_from_pretrained = True
    model_class: type | None = None  # the class init_from_pretrained accepts (None: any causal LM)

    def init_from_pretrained(self, source: str, config: dict[str, Any]) -> nn.Module:
        """Weights and architecture of a save_pretrained directory or Hub id, in float32 (master weights)."""
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(
                f"train.init_from={source}: not a checkpoint of this launcher, and no transformers causal LM "
                f"loads from it ({first})"
            ) from err
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
        """save_pretrained layout in `<step>/hf/` (config.json, weights, generation config, tokenizer).

        The special-token ids go into the generation config and config.json, except pad_token_id in
        config.json, which would make the embedding of GPT-2's EOS (= its pad token) untrainable when the
        export is fine-tuned further.
        """
        hf_model = cast(PreTrainedModel, model)
        hf_model.config.bos_token_id, hf_model.config.eos_token_id = tokenizer.bos_id, tokenizer.eos_id
        hf_model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id
        )
        hf_model.save_pretrained(directory / HF_DIR, state_dict=dict(state))
        tokenizer.save(directory / HF_DIR)

    def load_weights(self, model: nn.Module, path: Path) -> None:
        """From a step directory (its `hf/`, or the `model.safetensors` of older steps) or a weights file."""
        if path.is_dir():
            old = path / WEIGHTS_FILE
            path = old if old.is_file() else path / HF_DIR / WEIGHTS_FILE
        load_tied_weights(model, path)

    def generate(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        request: GenerationRequest,
    ) -> Generated:
        """transformers' `generate` (its KV cache); stop strings see only the generated tokens."""
        r = request
        max_new_tokens = r.max_new_tokens
        limit = self.max_length(model)
        if limit is not None:
            max_new_tokens = max(1, min(max_new_tokens, limit - input_ids.shape[1]))
        # Sampling: one generator per row (or one for the batch when a single seed is given) picks each token;
        # greedy decoding over the processed scores then emits it.
        sampling: dict[str, Any] = {"do_sample": False}
        if r.do_sample:
            seeds = r.seeds or (int(torch.randint(0, 2**62, ()).item()),)
            if len(seeds) not in (1, input_ids.shape[0]):
                raise ValueError(
                    f"got {len(seeds)} seeds for {input_ids.shape[0]} rows; pass one or one per row"
                )
            sampler = _PerRowSampler(seeds, r.temperature, r.top_k, r.top_p, input_ids.device)
            sampling["logits_processor"] = LogitsProcessorList([sampler])
        criteria = None
        if r.stop_strings:
            if r.decode is None:
                raise ValueError("stop_strings need a decode function for the generated tokens")
            criteria = StoppingCriteriaList(
                [_StopOnGeneratedText(input_ids.shape[1], r.stop_strings, r.decode)]
            )
        options = hf_generate_options(r.options, input_ids.device)
        with torch.no_grad():
            out = model.generate(  # type: ignore[operator]
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                pad_token_id=r.pad_token_id,
                eos_token_id=r.eos_token_id,
                stopping_criteria=criteria,
                **sampling,
                **options,
            )
        completions, reasons = [], []
        for ids in out[:, input_ids.shape[1] :].tolist():
            eos_at = ids.index(r.eos_token_id) if r.eos_token_id in ids else None
            head = ids[:eos_at] if eos_at is not None else ids[:max_new_tokens]
            end = _stop_end(head, r)
            if end is not None:
                completions.append(head[:end])
                reasons.append("stop_string")
            else:
                completions.append(head)
                reasons.append("eos" if eos_at is not None else "length")
        return Generated(completions, reasons)


def hf_generate_options(options: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """transformers `generate` keyword arguments from `GenerationRequest.options`.

    `compile` (ours) becomes transformers' own: True is `cache_implementation="static"` (unless given) with a
    `compile_config` (CUDA graphs on CUDA, plain inductor elsewhere, forced on the CPU, where transformers
    would not compile by itself); False is `disable_compile=True`. Other keys (`cache_implementation`, ...)
    pass through as they are.
    """
    out = dict(options)
    compile_flag = out.pop("compile", None)
    if compile_flag:
        out.setdefault("cache_implementation", "static")
        if "compile_config" not in out:
            config = CompileConfig(mode="reduce-overhead" if device.type == "cuda" else "default")
            config._compile_all_devices = True  # type: ignore[assignment]
            out["compile_config"] = config
    elif compile_flag is not None:
        out["disable_compile"] = True
    return out


def _stop_end(ids: list[int], r: GenerationRequest) -> int | None:
    """The length of the shortest prefix of `ids` whose text holds a stop string, or None (no stop string)."""
    if not r.stop_strings or r.decode is None:
        return None
    text = r.decode(ids)
    if not any(s in text for s in r.stop_strings):
        return None
    for end in range(1, len(ids) + 1):
        if tail_has_stop(ids[:end], r.stop_strings, r.decode):
            return end
    return len(ids)


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
