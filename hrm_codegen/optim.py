"""AdamW with decoupled weight-decay groups, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from hrm_codegen.models.layers import CastedEmbedding


def _is_embedding(module: nn.Module) -> bool:
    return isinstance(module, nn.Embedding | CastedEmbedding)


def param_groups(
    model: nn.Module,
    weight_decay: float,
    decay_embeddings: bool = False,
    decay_norms_and_biases: bool = False,
) -> list[dict]:
    """Split trainable parameters into a decayed and an undecayed AdamW group.

    Matrices of linear layers decay; embedding tables decay only with `decay_embeddings`; 1-D parameters
    (norm scales, biases, gates) decay only with `decay_norms_and_biases`. A parameter with an `lr_scale`
    attribute goes to an extra group whose learning rate `build_optimizer` multiplies by it.
    """
    embedding_params = {
        id(p) for m in model.modules() if _is_embedding(m) for p in m.parameters(recurse=False)
    }
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if id(param) in embedding_params:
            wanted = decay_embeddings
        elif param.ndim < 2:
            wanted = decay_norms_and_biases
        else:
            wanted = True
        (decay if wanted else no_decay).append(param)
    groups = [
        {"params": [p for p in decay if not hasattr(p, "lr_scale")], "weight_decay": weight_decay},
        {"params": [p for p in no_decay if not hasattr(p, "lr_scale")], "weight_decay": 0.0},
    ]
    # Parameters that carry an `lr_scale` (the HRM's recurrence gates) get a group of their own per scale.
    scaled: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for param in decay + no_decay:
        if hasattr(param, "lr_scale"):
            scaled.setdefault((float(param.lr_scale), any(param is p for p in decay)), []).append(param)
    for (scale, decayed), params in scaled.items():
        groups.append({"params": params, "weight_decay": weight_decay if decayed else 0.0, "lr_scale": scale})
    return groups


def build_optimizer(
    model: nn.Module,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.95),
    weight_decay: float = 0.1,
    eps: float = 1e-8,
    decay_embeddings: bool = False,
    decay_norms_and_biases: bool = False,
) -> torch.optim.AdamW:
    """AdamW over `param_groups(model, ...)`."""
    groups = param_groups(model, weight_decay, decay_embeddings, decay_norms_and_biases)
    for group in groups:
        if "lr_scale" in group:
            group["lr"] = lr * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup to 1 over `warmup_steps`, then cosine decay to `min_lr_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following `warmup_cosine`."""
    schedule = partial(
        warmup_cosine, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
