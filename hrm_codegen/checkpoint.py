"""Checkpoints: atomic save of a training step, verified loading of its files, resume state.

Layout of one step (the run directory around it belongs to `hrm_codegen.runs`; see checkpoints/README.md):

    checkpoints/<run>/step_<N>/meta.json     format marker, step, tokenizer fingerprint, size + sha256 of every file
                              the weights, once, as the model family writes them (model.safetensors, or
                              hf/ in the save_pretrained layout for transformers families),
                              optimizer.pt, scheduler.pt, rng.pt, train_state.json, config.yaml (resolved),
                              tokenizer/ (+ fingerprint.txt), [family_state.safetensors]

A step is written into a hidden temporary directory and renamed into place, so a crash never leaves a half
checkpoint; `latest` is replaced atomically after the rename. Files from the `extra_files` hook (the family's
weights) are written into the temporary directory too, so they are part of the atomic write and listed (and
verified) in meta.json. Loading a model for inference lives in `hrm_codegen.inference`.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from hrm_codegen.datasets.cache import file_sha256
from hrm_codegen.runs import (
    CONFIG_FILE,
    LATEST_FILE,
    META_FILE,
    STEP_PREFIX,
    TRAIN_STATE_FILE,
    CheckpointError,
    latest_step_dir,
    list_steps,
    resolve_checkpoint,
    step_dir_name,
)

__all__ = [
    "CONFIG_FILE",
    "CheckpointError",
    "latest_step_dir",
    "list_steps",
    "resolve_checkpoint",
    "step_dir_name",
]

FORMAT = "hrm-codegen-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
STATE_FILE = "family_state.safetensors"  # the model family's training-time state (e.g. the HRM's ACT carry)
OLD_STATE_FILE = "act_carry.safetensors"  # its name in steps written before the family seam


def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    config: DictConfig | Mapping[str, Any],
    tokenizer: Any,
    optimizer_state: dict | None = None,
    scheduler_state: dict | None = None,
    rng_state: Any = None,
    train_state: dict[str, Any] | None = None,
    family_state: Mapping[str, torch.Tensor] | None = None,
    keep_last: int | None = None,
    extra_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write `run_dir/step_<step>/` atomically, point `latest` at it, and keep only the last `keep_last` steps.

    The model's weights are written by `extra_files(directory)` (the family's `save_weights`), which may add
    files and directories of its own (not the checkpoint's names) to the step: it is called with the temporary
    directory after the checkpoint's files are written and before meta.json lists every file, so its output is
    renamed into place with the rest and verified on load.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / step_dir_name(step)
    for stale in run_dir.glob(f".tmp_{STEP_PREFIX}*"):  # left by a crash during an earlier save
        shutil.rmtree(stale)
    tmp = run_dir / f".tmp_{final.name}_{os.getpid()}"
    tmp.mkdir()
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
    if scheduler_state is not None:
        torch.save(scheduler_state, tmp / "scheduler.pt")
    if rng_state is not None:
        torch.save(rng_state, tmp / "rng.pt")
    if family_state:
        save_file({k: v.detach().cpu().contiguous() for k, v in family_state.items()}, str(tmp / STATE_FILE))
    (tmp / TRAIN_STATE_FILE).write_text(json.dumps({"step": step, **(train_state or {})}, indent=2) + "\n")
    config_node = config if isinstance(config, DictConfig) else OmegaConf.create(dict(config))
    (tmp / CONFIG_FILE).write_text(OmegaConf.to_yaml(config_node, resolve=True))
    tokenizer.save(tmp / TOKENIZER_DIR)
    if extra_files is not None:
        extra_files(tmp)
    files = {
        str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(tmp.rglob("*"))
        if p.is_file()
    }
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "step": step,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "files": files,
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    latest_tmp = run_dir / f".{LATEST_FILE}.tmp"
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, run_dir / LATEST_FILE)
    if keep_last:
        for old in list_steps(run_dir)[:-keep_last]:
            shutil.rmtree(old)
    return final


def read_meta(step_dir: str | Path, verify: bool = True) -> dict[str, Any]:
    """The checkpoint's meta.json; with `verify`, every listed file is checked for size and sha256."""
    step_dir = Path(step_dir)
    meta_path = step_dir / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(
            f"{step_dir} is not an hrm-codegen checkpoint: {META_FILE} is missing (an unfinished or foreign "
            "directory); expected checkpoints/<run>/step_<N>/ as written by scripts/train_codegen.py"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_path} is corrupt: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not an hrm-codegen checkpoint (format is not {FORMAT!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: checkpoint format version {meta.get('version')}, expected {FORMAT_VERSION}"
        )
    if verify:
        _verify_files(step_dir, meta["files"])
    return meta


def _verify_files(step_dir: Path, files: dict[str, Any]) -> None:
    """Check each listed file of a step directory for presence, size and sha256."""
    for name, info in files.items():
        path = step_dir / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {step_dir} is incomplete: {name} is missing")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(
                f"checkpoint {step_dir} is truncated or corrupt: {name} has {size} bytes, expected {info['bytes']}"
            )
        if file_sha256(path) != info["sha256"]:
            raise CheckpointError(f"checkpoint {step_dir} is corrupt: {name} does not match its sha256")


def verify_export(directory: str | Path) -> bool:
    """Verify a directory inside a step directory (the baseline's `hf/`) against the step's meta.json.

    True when the step's meta.json lists the directory's files and they all match; False when the directory
    is not part of one of our checkpoints (any save_pretrained folder); CheckpointError when a file is
    missing, truncated or corrupt.
    """
    directory = Path(directory).expanduser().resolve()
    if not (directory.parent / META_FILE).is_file():
        return False
    prefix = f"{directory.name}/"
    files = {
        k: v for k, v in read_meta(directory.parent, verify=False)["files"].items() if k.startswith(prefix)
    }
    if not files:
        return False
    _verify_files(directory.parent, files)
    return True


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a .pt/.bin file read with `weights_only=True` (a bare state dict,
    or one nested under "model" / "state_dict")."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise CheckpointError(
            f"cannot read weights from {path} (truncated or not a weights file): {err}"
        ) from err
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def check_weights_fit(
    state: Mapping[str, torch.Tensor],
    model: nn.Module,
    where: str | Path,
    may_lack: Collection[str] = (),
) -> None:
    """Raise CheckpointError unless the tensors `state` (read from `where`) fit `model`'s state dict: one message
    naming the missing, unexpected and wrong-shape names (saved vs built shape). Names in `may_lack` (e.g. tied
    parameters a file leaves out) may be missing."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state) - set(may_lack))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        detail = "; ".join(
            f"{label} {names[:5]}{' ...' if len(names) > 5 else ''}"
            for label, names in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape (saved vs built)", wrong_shape),
            )
            if names
        )
        raise CheckpointError(
            f"weights in {where} do not fit the {type(model).__name__} being built: {detail}"
        )


def load_model_weights(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint's weights into `model`, failing with the missing/unexpected names when they do not fit."""
    state = load_weights(path)
    check_weights_fit(state, model, path)
    model.load_state_dict(state)


def load_training_state(step_dir: str | Path, verify: bool = True) -> dict[str, Any]:
    """Optimizer, scheduler, RNG, train-state and family-state contents of a step directory (verified first)."""
    step_dir = Path(step_dir)
    read_meta(step_dir, verify=verify)
    state: dict[str, Any] = {"train_state": json.loads((step_dir / TRAIN_STATE_FILE).read_text())}
    for name in ("optimizer", "scheduler", "rng"):
        file = step_dir / f"{name}.pt"
        state[name] = torch.load(file, map_location="cpu", weights_only=True) if file.is_file() else None
    files = [step_dir / STATE_FILE, step_dir / OLD_STATE_FILE]
    state["family_state"] = next((load_file(str(f)) for f in files if f.is_file()), None)
    return state


def capture_rng_state() -> dict[str, Any]:
    """This process's Python, torch CPU and CUDA random states."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what `capture_rng_state` returned."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
