"""Export a checkpoint as a Hugging Face directory: `save_pretrained`, then a check of the logits.

The HRM is a transformers model (`HrmCodegenForCausalLM`, registered for the Auto classes when `hrm_codegen`
is imported), so an export of an HRM checkpoint is its `save_pretrained` directory:

    config.json                  HRMConfig (model_type hrm_codegen) with `auto_map`
    hrm_act_v1.py, layers.py,    the model code as it is in this package (transformers copies the model's module
    configuration_hrm.py         and its relative imports), for `trust_remote_code` users who lack the package
    model.safetensors            the weights, under the model's own parameter names
    generation_config.json       bos/eos/pad ids
    tokenizer files              the checkpoint's tokenizer (and its fingerprint.txt)

A transformers-family checkpoint (the Llama baseline) is already a save_pretrained directory (`<step>/hf/`)
and is copied as is. With `verify`, the export is loaded back with `trust_remote_code=True` (its shipped code)
and its logits compared with the checkpoint's, within a tolerance set by the forward dtype.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from hrm_codegen.families.base import save_hf
from hrm_codegen.models.hrm_act_v1 import HrmCodegenForCausalLM

# |exported - checkpoint| <= ATOL + RTOL * |checkpoint|, by the forward dtype: the two compute the same ops, so
# only kernel choices differ; half precision rounds at 2^-8 (bf16) / 2^-11 (fp16) of a value.
TOLERANCE = {"float32": (1e-5, 1e-4), "float16": (1e-2, 1e-2), "bfloat16": (5e-2, 3e-2)}


class ExportError(RuntimeError):
    """The exported directory cannot be written, or does not reproduce the checkpoint's logits."""


@dataclass
class ExportResult:
    """What `export_hf` wrote: the directory, the family, the source step and the largest logit difference."""

    out: Path
    family: str
    source: Path
    max_abs_diff: float | None = None


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; pass force=True (--force) to write into it")
    out.mkdir(parents=True, exist_ok=True)


def export_hf(ckpt: str | Path, out: str | Path, *, force: bool = False, verify: bool = True) -> ExportResult:
    """Write a transformers-loadable directory for the checkpoint `ckpt` (a run, step or weights path)."""
    from hrm_codegen.checkpoint import verify_export
    from hrm_codegen.inference import checkpoint_family, load_checkpoint
    from hrm_codegen.runs import resolve_checkpoint

    out = Path(out).expanduser()
    step = resolve_checkpoint(ckpt)
    family = checkpoint_family(step)
    hf_dir = step / "hf" if step.is_dir() else None
    if hf_dir is not None and hf_dir.is_dir():
        verify_export(hf_dir)
    loaded = load_checkpoint(step)
    if not isinstance(loaded.model, PreTrainedModel):
        raise ExportError(f"arch.name={family}: no Hugging Face export for {type(loaded.model).__name__}")
    _prepare_out(out, force)
    if family != "hrm" and hf_dir is not None and hf_dir.is_dir():
        shutil.copytree(hf_dir, out, dirs_exist_ok=True)
        return ExportResult(out, family, step)
    save_hf(loaded.model, loaded.tokenizer, out)
    diff = (
        verify_logits(loaded.model, out)
        if verify and isinstance(loaded.model, HrmCodegenForCausalLM)
        else None
    )
    return ExportResult(out, family, step, diff)


def verify_logits(model: HrmCodegenForCausalLM, out: Path) -> float:
    """Load the export with its shipped code (`trust_remote_code=True`) and compare its logits with `model`'s
    on a small padded batch; raise ExportError beyond the forward dtype's tolerance. Returns the max |diff|."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    auto_map = json.loads((out / "config.json").read_text()).get("auto_map", {})
    if "AutoModelForCausalLM" not in auto_map:
        raise ExportError(
            f"{out}/config.json has no auto_map for AutoModelForCausalLM: the model code is not shipped"
        )
    # The shipped class itself (AutoModelForCausalLM would pick this package's registered class in this process).
    shipped: Any = get_class_from_dynamic_module(auto_map["AutoModelForCausalLM"], str(out))
    exported = shipped.from_pretrained(str(out))
    generator = torch.Generator().manual_seed(0)
    length = min(16, model.config.seq_len)
    device = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (2, length), generator=generator).to(device)
    mask = torch.ones_like(ids)
    mask[1, : length // 2] = 0
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits.float()
        got = exported.to(device).eval()(input_ids=ids, attention_mask=mask).logits.float()
    atol, rtol = TOLERANCE[model.config.forward_dtype]
    excess = (expected - got).abs() - (atol + rtol * expected.abs())
    diff = float((expected - got).abs().max())
    if not bool((excess <= 0).all()):  # NaN fails too
        raise ExportError(
            f"{out}: the exported model's logits differ from the checkpoint's by up to {diff:.3g}, beyond the "
            f"{model.config.forward_dtype} tolerance (atol {atol:g}, rtol {rtol:g})"
        )
    return diff
