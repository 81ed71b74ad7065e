"""Import weights from an upstream Sapient HRM (puzzle) checkpoint into the code-generation port."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from hrm_codegen.models.hrm_act_v1 import rename_legacy_key

logger = logging.getLogger(__name__)

# Upstream checkpoints are saved from `torch.compile(ACTLossHead(model))`, so keys may carry these prefixes.
_PREFIXES = ("_orig_mod.", "model.")


@dataclass
class UpstreamLoadReport:
    """What an upstream import loaded, skipped (with the reason) and left at its initial value."""

    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Human-readable multi-line summary."""
        lines = [f"loaded {len(self.loaded)} tensors from the upstream checkpoint"]
        lines += [f"  skipped {name}: {why}" for name, why in sorted(self.skipped.items())]
        lines += [f"  kept initial value (not in checkpoint): {name}" for name in self.missing]
        return "\n".join(lines)


def _own_name(raw_name: str, own: Collection[str]) -> str:
    """`raw_name` in this port: upstream's wrapper prefixes stripped one at a time until a name of `own` appears,
    upstream's `inner.*` renamed as this port's old names are (`rename_legacy_key`); when none appears, the name
    with every prefix stripped."""
    name = raw_name
    while True:
        candidate = rename_legacy_key(name)
        prefix = next((p for p in _PREFIXES if name.startswith(p)), None)
        if candidate in own or prefix is None:
            return candidate
        name = name[len(prefix) :]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from a safetensors file or a torch file (with `weights_only=True`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"upstream checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a state_dict (a dict of tensors)")
    return obj


def load_upstream_weights(
    model: nn.Module, source: str | Path | dict[str, torch.Tensor]
) -> UpstreamLoadReport:
    """Load every upstream tensor whose name and shape fit `model`; skip and report the rest, never raise.

    Puzzle embeddings, a Q-head the port does not have, and embeddings of another vocabulary or
    sequence length are skipped with a warning.
    """
    state = read_state_dict(source) if isinstance(source, (str, Path)) else source
    own = model.state_dict()
    report = UpstreamLoadReport()
    to_load: dict[str, torch.Tensor] = {}
    for raw_name, tensor in state.items():
        name = _own_name(raw_name, own)
        if "puzzle_emb" in name:
            report.skipped[raw_name] = "puzzle embeddings do not exist in the code-generation port"
        elif name not in own:
            report.skipped[raw_name] = "no parameter of that name here (e.g. q_head with enable_q_head=false)"
        elif not isinstance(tensor, torch.Tensor) or tensor.shape != own[name].shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            report.skipped[raw_name] = f"shape {got} does not match {tuple(own[name].shape)}"
        else:
            to_load[name] = tensor.to(own[name].dtype)
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = sorted(set(own) - set(to_load))
    if report.skipped or report.missing:
        logger.warning("upstream import: %s", report.summary())
    return report
