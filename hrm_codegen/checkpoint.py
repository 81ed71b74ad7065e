"""Checkpoints: atomic save of a training step, verified loading, resume, and loading a model for inference.

Layout of one run (see checkpoints/README.md):

    checkpoints/<run>/latest                 text file naming the newest step directory
    checkpoints/<run>/step_<N>/meta.json     format marker, step, tokenizer fingerprint, size + sha256 of every file
                              model.safetensors, optimizer.pt, scheduler.pt, rng.pt, train_state.json,
                              config.yaml (resolved), tokenizer/ (+ fingerprint.txt), [act_carry.safetensors],
                              [whatever the caller's `extra_files` hook writes, e.g. the baseline's hf/]

A step is written into a hidden temporary directory and renamed into place, so a crash never leaves a half
checkpoint; `latest` is replaced atomically after the rename. Files from the `extra_files` hook are written
into the temporary directory too, so they are part of the atomic write and listed (and verified) in meta.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from hrm_codegen.models.hrm_act_v1 import (
    HierarchicalReasoningModel_ACTV1Carry,
    HierarchicalReasoningModel_ACTV1InnerCarry,
)

FORMAT = "hrm-codegen-checkpoint"
FORMAT_VERSION = 1
META_FILE = "meta.json"
LATEST_FILE = "latest"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
TRAIN_STATE_FILE = "train_state.json"
CARRY_FILE = "act_carry.safetensors"
STEP_PREFIX = "step_"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


class CheckpointError(ValueError):
    """A checkpoint path is missing, truncated, corrupt or not one of ours."""


def step_dir_name(step: int) -> str:
    """Directory name of the checkpoint taken after `step` optimizer steps."""
    return f"{STEP_PREFIX}{step}"


def _step_of(path: Path) -> int | None:
    suffix = path.name[len(STEP_PREFIX) :]
    return int(suffix) if path.name.startswith(STEP_PREFIX) and suffix.isdigit() else None


def list_steps(run_dir: str | Path) -> list[Path]:
    """Complete step directories of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    steps = [
        p for p in run_dir.iterdir() if p.is_dir() and _step_of(p) is not None and (p / META_FILE).is_file()
    ]
    return sorted(steps, key=lambda p: _step_of(p) or 0)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model_state: Mapping[str, torch.Tensor],
    config: DictConfig | Mapping[str, Any],
    tokenizer: Any,
    optimizer_state: dict | None = None,
    scheduler_state: dict | None = None,
    rng_state: Any = None,
    train_state: dict[str, Any] | None = None,
    act_carry: Mapping[str, torch.Tensor] | None = None,
    keep_last: int | None = None,
    extra_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write `run_dir/step_<step>/` atomically, point `latest` at it, and keep only the last `keep_last` steps.

    `extra_files(directory)` may add files and directories of its own (not the checkpoint's names) to the
    step: it is called with the temporary directory after the checkpoint's files are written and before
    meta.json lists every file, so its output is renamed into place with the rest and verified on load.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / step_dir_name(step)
    for stale in run_dir.glob(f".tmp_{STEP_PREFIX}*"):  # left by a crash during an earlier save
        shutil.rmtree(stale)
    tmp = run_dir / f".tmp_{final.name}_{os.getpid()}"
    tmp.mkdir()
    tensors = {name: t.detach().cpu().contiguous() for name, t in model_state.items()}
    save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
    if scheduler_state is not None:
        torch.save(scheduler_state, tmp / "scheduler.pt")
    if rng_state is not None:
        torch.save(rng_state, tmp / "rng.pt")
    if act_carry:
        save_file({k: v.detach().cpu().contiguous() for k, v in act_carry.items()}, str(tmp / CARRY_FILE))
    (tmp / TRAIN_STATE_FILE).write_text(json.dumps({"step": step, **(train_state or {})}, indent=2) + "\n")
    config_node = config if isinstance(config, DictConfig) else OmegaConf.create(dict(config))
    (tmp / CONFIG_FILE).write_text(OmegaConf.to_yaml(config_node, resolve=True))
    tokenizer.save(tmp / TOKENIZER_DIR)
    if extra_files is not None:
        extra_files(tmp)
    files = {
        str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
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
        if _sha256(path) != info["sha256"]:
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


def latest_step_dir(run_dir: str | Path) -> Path | None:
    """The step directory `run_dir/latest` points at, or None when the run has no checkpoint yet."""
    latest = Path(run_dir) / LATEST_FILE
    if not latest.is_file():
        return None
    target = Path(run_dir) / latest.read_text().strip()
    if not target.is_dir():
        raise CheckpointError(f"{latest} points at {target.name}, which does not exist")
    return target


def resolve_checkpoint(path: str | Path) -> Path:
    """Map a user's `--ckpt` to a step directory or a weights file (a run directory means its `latest`)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_file() and path.name == LATEST_FILE:
        path = path.parent
    if path.is_dir():
        if (path / META_FILE).is_file():
            return path
        latest = latest_step_dir(path)
        if latest is not None:
            return latest
        raise CheckpointError(
            f"{path} is not a checkpoint: expected a step directory with {META_FILE} "
            f"(checkpoints/<run>/step_<N>), a run directory with a `{LATEST_FILE}` file, or a weights file"
        )
    if path.suffix not in WEIGHT_SUFFIXES:
        raise CheckpointError(
            f"{path}: expected a weights file ending in one of {WEIGHT_SUFFIXES} or a step directory"
        )
    return path


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


def load_model_weights(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint's weights into `model`, failing with the missing/unexpected names when they do not fit."""
    state = load_weights(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        detail = "; ".join(
            f"{label} {names[:5]}{' ...' if len(names) > 5 else ''}"
            for label, names in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", wrong_shape),
            )
            if names
        )
        raise CheckpointError(
            f"weights in {path} do not fit the {type(model).__name__} being built: {detail}"
        )
    model.load_state_dict(state)


def load_training_state(step_dir: str | Path, verify: bool = True) -> dict[str, Any]:
    """Optimizer, scheduler, RNG, train-state and ACT-carry contents of a step directory (verified first)."""
    step_dir = Path(step_dir)
    read_meta(step_dir, verify=verify)
    state: dict[str, Any] = {"train_state": json.loads((step_dir / TRAIN_STATE_FILE).read_text())}
    for name in ("optimizer", "scheduler", "rng"):
        file = step_dir / f"{name}.pt"
        state[name] = torch.load(file, map_location="cpu", weights_only=True) if file.is_file() else None
    carry = step_dir / CARRY_FILE
    state["act_carry"] = load_file(str(carry)) if carry.is_file() else None
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


def carry_tensors(carry: HierarchicalReasoningModel_ACTV1Carry, prefix: str = "") -> dict[str, torch.Tensor]:
    """The HRM's ACT carry as flat CPU tensors named `<prefix>z_H`, `<prefix>data.labels`, ..."""
    tensors = {
        "z_H": carry.inner_carry.z_H,
        "z_L": carry.inner_carry.z_L,
        "steps": carry.steps,
        "halted": carry.halted,
        **{f"data.{k}": v for k, v in carry.current_data.items()},
    }
    return {prefix + k: v.detach().cpu() for k, v in tensors.items()}


def carry_from_tensors(
    tensors: Mapping[str, torch.Tensor], prefix: str = "", device: torch.device | str = "cpu"
) -> HierarchicalReasoningModel_ACTV1Carry | None:
    """The carry `carry_tensors(carry, prefix)` saved, or None when `tensors` has none under `prefix`."""
    t = {k[len(prefix) :]: v.to(device) for k, v in tensors.items() if k.startswith(prefix)}
    if not t:
        return None
    return HierarchicalReasoningModel_ACTV1Carry(
        inner_carry=HierarchicalReasoningModel_ACTV1InnerCarry(z_H=t["z_H"], z_L=t["z_L"]),
        steps=t["steps"],
        halted=t["halted"],
        current_data={k[len("data.") :]: v for k, v in t.items() if k.startswith("data.")},
    )


def _load_config(config: str | Path | DictConfig | Mapping[str, Any] | None, weights: Path) -> DictConfig:
    if config is None:
        beside = weights.parent / CONFIG_FILE
        if not beside.is_file():
            raise CheckpointError(
                f"{weights} is a bare weights file and no {CONFIG_FILE} lies next to it: pass config=<config.yaml>"
            )
        config = beside
    if isinstance(config, DictConfig):
        return config
    if isinstance(config, Mapping):
        return OmegaConf.create(dict(config))
    config = Path(config)
    if not config.is_file():
        raise CheckpointError(f"config file {config} does not exist")
    loaded = OmegaConf.load(config)
    if not isinstance(loaded, DictConfig) or "arch" not in loaded:
        raise CheckpointError(f"{config}: expected a training config with an `arch` section")
    return loaded


def load_model_for_inference(
    path: str | Path,
    tokenizer: Any = None,
    config: str | Path | DictConfig | Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, Any]:
    """(model in eval mode, tokenizer) from a step directory, a run directory or a weights file.

    A step directory supplies its config.yaml and tokenizer/ (fingerprint verified). A bare weights file needs
    `config` (a config.yaml path or mapping) or a config.yaml next to it, and `tokenizer` or a tokenizer/ next to it
    (else the config's `tokenizer.name_or_path`).
    """
    from hrm_codegen.tokenization import check_fingerprint, load_tokenizer
    from hrm_codegen.training import build_model

    resolved = resolve_checkpoint(path)
    if resolved.is_dir():
        meta = read_meta(resolved)
        cfg = _load_config(config if config is not None else resolved / CONFIG_FILE, resolved / WEIGHTS_FILE)
        expected_fingerprint = meta["tokenizer_fingerprint"]
        where = str(resolved / META_FILE)
        weights = resolved / WEIGHTS_FILE
        tokenizer_dir = resolved / TOKENIZER_DIR
    else:
        cfg = _load_config(config, resolved)
        expected_fingerprint = OmegaConf.select(cfg, "tokenizer.fingerprint")
        where = "the config's tokenizer.fingerprint"
        weights = resolved
        tokenizer_dir = resolved.parent / TOKENIZER_DIR
    if tokenizer is None:
        source = tokenizer_dir if tokenizer_dir.is_dir() else OmegaConf.select(cfg, "tokenizer.name_or_path")
        if source is None:
            raise CheckpointError(
                f"no tokenizer for {resolved}: pass tokenizer= or add a {TOKENIZER_DIR}/ next to it"
            )
        tokenizer = load_tokenizer(source)
    if expected_fingerprint:
        check_fingerprint(expected_fingerprint, tokenizer, where)
    vocab_size = OmegaConf.select(cfg, "arch.vocab_size") or tokenizer.vocab_size
    model = build_model(cfg, vocab_size)
    load_model_weights(model, weights)
    return model.to(device).eval(), tokenizer
