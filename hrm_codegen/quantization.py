"""Weight quantization for CPU inference of any family's model (the HRM port, the Llama baseline, any
transformers LM), through the one decoding path (`hrm_codegen.generation.generate`).

- `"fp16"`: fp16 weights, fp32 activations and accumulation (PyTorch's dynamic quantization with fbgemm's
  packed fp16 GEMM, x86): half the weight bytes of fp32, a relative error of about 2e-4 per layer; on the AVX2
  machine (one thread) 1.1-1.7x an fp32 layer at one row, 2x at 8 rows, 1.0-1.1x at 128. The retrofitted HRM
  keeps fp32's MBPP pass@1 exactly with it (the same 46 of 500 problems).
- `"int8"`: weight-only int8 (per output channel, symmetric): torchao's `Int8WeightOnlyConfig` when torchao
  imports (`pip install -e ".[quant]"`), else PyTorch's own `torch._weight_int8pack_mm`. Accurate (97% of the
  fp32 model's next-token choices on MBPP solutions), but neither has a fast AVX2 kernel: slower than fp32 there.
- `"int8_dynamic"`: PyTorch's `quantize_dynamic` (int8 weights and dynamically quantized int8 activations,
  fbgemm, x86 CPUs): the fastest CPU path measured here (2-3.5x an fp32 linear layer on the AVX2 machine), but
  its activations share one scale per tensor, which models with activation outliers do not survive: the
  retrofitted SmolLM2 HRM falls from 9.2% to 1.4% MBPP pass@1 (docs/benchmarks.md).
- `"int8_smooth"`: int8 dynamic with SmoothQuant's per-channel scales folded into the weights first
  (`hrm_codegen.smoothing`, calibrated on standard-library source text), int8 weights per output channel, and
  the MLP down projections in fp16 weights (`SMOOTH_FP16`): int8 dynamic's kernels for three quarters of each
  block's weights, the outlier channels moved from the activations into the weights.
- `"int4"`: weight-only int4, asymmetric in groups of 32 input channels (a scale and a minimum per group: the
  grid of llama.cpp's Q4_1), run by PyTorch's int4 CPU kernel `_weight_int4pack_mm_for_cpu` (the kernel behind
  torchao's former `Int4CPULayout`; torchao 0.18 ships no x86 CPU int4 layout of its own). That kernel is only
  fast on CPUs with AVX-512; on others (AVX2) it runs a reference loop some 40x slower than fp32, so there the
  layers keep the int4 values dequantized in fp32 weights, with a one-line notice: the pass@1 of int4 weights,
  the speed and memory of fp32 (`int4_backend`).

All act on `nn.Linear`; the HRM's `CastedLinear` (fp32 master weights cast at call time) is first swapped for an
`nn.Linear` holding the same weight, which is exact for an fp32 forward pass. Embedding tables stay fp32 (a
lookup reads one row); a tied LM head is quantized as a linear layer of its own (a copy of the table).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from hrm_codegen.models.layers import CastedLinear
from hrm_codegen.smoothing import DEFAULT_ALPHA, calibration_ids, smooth_activations

METHODS = ("fp16", "int8", "int8_dynamic", "int8_smooth", "int4")
INT4_GROUP_SIZE = 32
# int8_smooth keeps these layers in fp16 weights: the MLP's down projection reads silu(gate) * up, whose outliers
# smoothing does not tame (retrofitted HRM, six MBPP validation solutions, an ad-hoc check: loss +8% with it in
# int8, +1% without)
SMOOTH_FP16 = ("down_proj",)
FAST_INT4_CPUS = ("AVX512", "AVX512_BF16", "AVX512_VNNI", "ZVECTOR")


def torchao_available() -> bool:
    """Whether torchao is installed (its int8 weight-only path is then used)."""
    return importlib.util.find_spec("torchao") is not None


class Int8WeightOnlyLinear(nn.Module):
    """A linear layer with int8 weights [out, in] and one fp32 scale per output channel (no torchao)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
        self.weight_int8: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer(
            "weight_int8", torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        )
        self.register_buffer("scale", scale)
        self.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = torch._weight_int8pack_mm(  # pyright: ignore[reportPrivateImportUsage]
            x.reshape(-1, shape[-1]).float(), self.weight_int8, self.scale
        )
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], -1).to(x.dtype)


def int4_kernel_is_fast() -> bool:
    """Whether this CPU runs PyTorch's int4 kernel vectorized (AVX-512 builds of the ATen CPU kernels)."""
    return torch.backends.cpu.get_cpu_capability() in FAST_INT4_CPUS


class Int4WeightOnlyLinear(nn.Module):
    """A linear layer with int4 weights, asymmetric per group of `group_size` input channels.

    Each group stores a scale and an offset: w = (q - 8) * scale + zero with q in 0..15 (PyTorch's int4 packing
    convention). `packed=True` keeps the packed int4 weight for `_weight_int4pack_mm_for_cpu`; `packed=False`
    keeps the same int4 values dequantized in an fp32 weight (CPUs on which that kernel is slow, and layers whose
    output channels are not a multiple of 16, which the kernel's packing needs).
    """

    def __init__(self, linear: nn.Linear, group_size: int = INT4_GROUP_SIZE, packed: bool = True):
        super().__init__()
        out_features, in_features = linear.weight.shape
        if in_features % group_size:
            raise ValueError(
                f"int4: a linear layer with {in_features} input features is not a multiple of the group size "
                f"{group_size}"
            )
        weight = linear.weight.detach().float().reshape(out_features, in_features // group_size, group_size)
        low, high = weight.amin(-1, keepdim=True), weight.amax(-1, keepdim=True)
        scale = ((high - low) / 15).clamp_min(1e-8)
        q = torch.round((weight - low) / scale).clamp(0, 15)
        zero = low + 8 * scale
        # the kernel's packing takes whole tiles of 16 output channels; other layers keep the values in fp32
        self.group_size, self.packed = group_size, packed and out_features % 16 == 0
        self.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        )
        self.weight_int4: torch.Tensor
        self.scales_and_zeros: torch.Tensor
        self.weight: torch.Tensor
        if self.packed:
            ints = q.reshape(out_features, in_features).to(torch.int32)
            self.register_buffer("weight_int4", torch.ops.aten._convert_weight_to_int4pack_for_cpu(ints, 1))
            pairs = torch.stack([scale.squeeze(-1).t(), zero.squeeze(-1).t()], -1)  # [groups, out, 2]
            self.register_buffer("scales_and_zeros", pairs.contiguous())
        else:
            self.register_buffer("weight", ((q - 8) * scale + zero).reshape(out_features, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).float()
        if self.packed:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(
                flat, self.weight_int4, self.group_size, self.scales_and_zeros
            )
        else:
            out = flat @ self.weight.t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], -1).to(x.dtype)


def _untie_head(model: nn.Module) -> None:
    """Give a tied LM head a linear layer of its own, so that the head is quantized and the embedding table (a
    lookup) stays fp32: a transformers head sharing the table gets a copy of it; the HRM, whose tied head reads
    the table directly (`lm_head` None), gets an `lm_head` holding a copy."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    embed = getattr(model, "get_input_embeddings", lambda: None)()
    if head is None or embed is None:
        return
    if isinstance(head, nn.Linear) and head.weight is getattr(embed, "weight", None):
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    elif head is embed and getattr(model, "lm_head", False) is None:
        table = getattr(embed, "embedding_weight", None)
        table = table if table is not None else embed.weight
        vocab, hidden = table.shape
        linear = nn.Linear(hidden, vocab, bias=False, device="meta")
        linear.weight = nn.Parameter(table.detach().float().clone(), requires_grad=False)
        model.lm_head = linear


def _replace_linears(model: nn.Module, make) -> int:
    """Replace every child module for which `make(child)` returns a module; the count replaced."""
    count = 0
    for name, child in list(model.named_children()):
        new = make(child)
        if new is not None:
            setattr(model, name, new)
            count += 1
        else:
            count += _replace_linears(child, make)
    return count


def _plain_linear(module: nn.Module) -> nn.Linear | None:
    if not isinstance(module, CastedLinear):
        return None
    out_features, in_features = module.weight.shape
    linear = nn.Linear(in_features, out_features, bias=module.bias is not None, device="meta")
    linear.weight = nn.Parameter(module.weight.detach(), requires_grad=False)
    if module.bias is not None:
        linear.bias = nn.Parameter(module.bias.detach(), requires_grad=False)
    return linear


def _check_fp32(model: nn.Module) -> None:
    """Refuse models whose forward pass is not fp32 (the HRM's forward_dtype, else the weights' dtype)."""
    dtype = getattr(getattr(model, "config", None), "forward_dtype", None)
    if dtype is None:
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    if dtype != "float32":
        raise ValueError(f"int8 quantization is for fp32 CPU inference; this model runs in {dtype}")


def quantize_weights(
    model: nn.Module,
    method: str = "int8",
    int4_packed: bool | None = None,
    tokenizer: Any = None,
    calibration: Sequence[torch.Tensor] | None = None,
    smooth_alpha: float = DEFAULT_ALPHA,
) -> nn.Module:
    """Quantize `model`'s linear layers in place for CPU inference (`method`: one of METHODS); returns it.

    The model is put in eval mode; its weights no longer train. The LM head is quantized too. `int4_packed`:
    run int4 through PyTorch's int4 kernel (default: where that kernel is fast, `int4_kernel_is_fast`) or as
    dequantized fp32 weights. int8_smooth calibrates on `calibration` (token-id windows), by default
    `smoothing.calibration_ids(tokenizer)`, with `smooth_alpha`. `model.__dict__["quantization"]`, `["int4_backend"]` and `["smoothing"]` record what was
    done.
    """
    if method not in METHODS:
        raise ValueError(f"quantization method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "int8_smooth" and not calibration:
        if tokenizer is None:
            raise ValueError("int8_smooth needs the model's tokenizer (or calibration token ids)")
        calibration = calibration_ids(tokenizer)
    _check_fp32(model)
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"--quantize {method} is for CPU inference; the model is on {device}")
    model.eval()
    _replace_linears(model, _plain_linear)
    _untie_head(model)
    if method == "int4":
        packed = int4_kernel_is_fast() if int4_packed is None else int4_packed
        _replace_linears(
            model, lambda m: Int4WeightOnlyLinear(m, packed=packed) if isinstance(m, nn.Linear) else None
        )
        backend = "int4 kernel" if packed else "int4 values in fp32 weights"
        model.__dict__["int4_backend"] = backend
        if not packed:
            print(
                f"notice: int4: PyTorch's int4 CPU kernel is fast only with AVX-512 and this CPU has "
                f"{torch.backends.cpu.get_cpu_capability()}: the int4 weights run dequantized in fp32 (int4 "
                "accuracy, fp32 speed and memory)",
                file=sys.stderr,
            )
    elif method == "int8_smooth":
        model.__dict__["smoothing"] = smooth_activations(model, calibration or [], smooth_alpha, SMOOTH_FP16)
        from torch.ao.quantization.qconfig import float16_dynamic_qconfig as fp16
        from torch.ao.quantization.qconfig import per_channel_dynamic_qconfig as per_channel

        spec = {
            name: fp16 if name.endswith(SMOOTH_FP16) else per_channel
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear)
        }
        torch.ao.quantization.quantize_dynamic(model, spec, inplace=True)
    elif method == "fp16":
        torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.float16, inplace=True)
    elif method == "int8_dynamic":
        torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    elif torchao_available():
        from torchao.quantization import (  # pyright: ignore[reportMissingImports]  # optional extra "quant"
            Int8WeightOnlyConfig,
            quantize_,
        )

        quantize_(model, Int8WeightOnlyConfig())
    else:
        _replace_linears(model, lambda m: Int8WeightOnlyLinear(m) if isinstance(m, nn.Linear) else None)
    model.__dict__["quantization"] = method
    return model


def weight_bytes(module: nn.Module) -> int:
    """Bytes of a module's weights as stored (int8 data plus scales, or fp16, after quantization)."""
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        inner = getattr(tensor, "qdata", None)  # torchao Int8Tensor: data and scales
        if inner is not None:
            total += inner.numel() * inner.element_size()
            scale = getattr(tensor, "scale", None)
            total += 0 if scale is None else scale.numel() * scale.element_size()
        else:
            total += tensor.numel() * tensor.element_size()
    for child in module.modules():  # quantize_dynamic keeps its packed weights outside the parameters
        if getattr(child, "_packed_params", None) is not None and callable(getattr(child, "weight", None)):
            weight = cast(Any, child).weight()
            if not weight.is_quantized:  # fp16 weights (returned unpacked as fp32)
                total += weight.numel() * 2
                continue
            total += weight.numel()  # int8
            per_channel = weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
            total += weight.q_per_channel_scales().numel() * 8 if per_channel else 8
    return total
