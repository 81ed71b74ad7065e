"""Int8 weight quantization for CPU inference of any family's model (the HRM port, the Llama baseline).

`quantize_weights(model, "int8")` is weight-only int8 (per output channel, symmetric): torchao's
`Int8WeightOnlyConfig` when torchao imports (`pip install -e ".[quant]"`), else PyTorch's own
`torch._weight_int8pack_mm`. `"int8_dynamic"` is PyTorch's `quantize_dynamic` (int8 weights and per-token
dynamic int8 activations, fbgemm): on x86 CPUs the fastest of the three. Both act on `nn.Linear`; the HRM's
`CastedLinear` (fp32 master weights cast at call time) is first swapped for an `nn.Linear` holding the same
weight, which is exact for an fp32 forward pass. Embedding tables stay fp32 (a lookup reads one row).
"""

from __future__ import annotations

import importlib.util
from typing import Any, cast

import torch
from torch import nn

from hrm_codegen.models.layers import CastedLinear

METHODS = ("int8", "int8_dynamic")


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


def quantize_weights(model: nn.Module, method: str = "int8") -> nn.Module:
    """Quantize `model`'s linear layers in place for inference (`method`: "int8" or "int8_dynamic"); returns it.

    The model is put in eval mode; its weights no longer train. The LM head is quantized too.
    """
    if method not in METHODS:
        raise ValueError(f"quantization method must be one of {METHODS}, got {method!r}")
    _check_fp32(model)
    model.eval()
    _replace_linears(model, _plain_linear)
    if method == "int8_dynamic":
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
    """Bytes of a module's weights as stored (int8 data plus scales after quantization)."""
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
            total += weight.numel()  # int8
            per_channel = weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
            total += weight.q_per_channel_scales().numel() * 8 if per_channel else 8
    return total
