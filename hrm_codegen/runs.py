"""The run directory, one owner: its names, its steps, `latest`, train state, `finished`, metrics, wall time.

    checkpoints/<run>/latest             text file naming the newest step directory
    checkpoints/<run>/step_<N>/          one checkpoint (written by `hrm_codegen.checkpoint`)
    checkpoints/<run>/metrics.jsonl      one JSON object a line (`hrm_codegen.logging_utils`)
    checkpoints/<run>/wall_time.json     wall time of the command that trained the run (scripts/reproduce.py)

The Trainer, the checkpoint code, the evaluator's loading, `scripts/reproduce.py` and `scripts/plot_runs.py`
all use these functions instead of spelling file names themselves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hrm_codegen.logging_utils import METRICS_FILE, read_metrics

META_FILE = "meta.json"
LATEST_FILE = "latest"
CONFIG_FILE = "config.yaml"
TRAIN_STATE_FILE = "train_state.json"
WALL_TIME_FILE = "wall_time.json"
STEP_PREFIX = "step_"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")

__all__ = ["METRICS_FILE", "read_metrics"]


class CheckpointError(ValueError):
    """A checkpoint path is missing, truncated, corrupt or not one of ours."""


def step_dir_name(step: int) -> str:
    """Directory name of the checkpoint taken after `step` optimizer steps."""
    return f"{STEP_PREFIX}{step}"


def step_of(path: Path) -> int | None:
    """The step number of a step directory's name, or None for another name."""
    suffix = path.name[len(STEP_PREFIX) :]
    return int(suffix) if path.name.startswith(STEP_PREFIX) and suffix.isdigit() else None


def list_steps(run_dir: str | Path) -> list[Path]:
    """Complete step directories of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    steps = [
        p for p in run_dir.iterdir() if p.is_dir() and step_of(p) is not None and (p / META_FILE).is_file()
    ]
    return sorted(steps, key=lambda p: step_of(p) or 0)


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


def trained_data_config(ckpt: str | Path) -> dict[str, Any]:
    """The `data` section of the training config of a checkpoint (`--ckpt` as `resolve_checkpoint` takes it): what
    it was trained on and in which prompt format; empty when the step has no config file."""
    from omegaconf import OmegaConf

    resolved = resolve_checkpoint(ckpt)
    config = (resolved if resolved.is_dir() else resolved.parent) / CONFIG_FILE
    if not config.is_file():
        return {}
    data = OmegaConf.select(OmegaConf.load(config), "data", default=None)
    return dict(OmegaConf.to_container(data)) if data is not None else {}  # type: ignore[arg-type]


def read_train_state(step_dir: str | Path) -> dict[str, Any]:
    """A step's train_state.json: step, tokens_seen, total_steps (steps the run's config implies), ..."""
    return json.loads((Path(step_dir) / TRAIN_STATE_FILE).read_text())


def finished(run_dir: str | Path) -> bool:
    """True when the run's newest step is the last one its config implies (`epochs` or `max_steps`), or the
    step its `train.stop_after` ended it at.

    Steps saved since the train state carries `total_steps` answer from it; older steps from
    `train.max_steps` in their config.yaml (unknown for epoch-based runs: False).
    """
    step = latest_step_dir(run_dir)
    if step is None:
        return False
    state = read_train_state(step)
    if state.get("stop_after") and state["step"] >= state["stop_after"]:
        return True
    total = state.get("total_steps")
    if total is None:
        from omegaconf import OmegaConf

        total = OmegaConf.select(OmegaConf.load(Path(step) / CONFIG_FILE), "train.max_steps")
    return total is not None and state["step"] >= total


def write_wall_time(run_dir: str | Path, seconds: float, command: str) -> None:
    """Record the wall time of the command that trained the run."""
    (Path(run_dir) / WALL_TIME_FILE).write_text(
        json.dumps({"train_wall_s": seconds, "command": command}) + "\n"
    )


def read_wall_time(run_dir: str | Path) -> float | None:
    """The recorded training wall time in seconds, or None."""
    path = Path(run_dir) / WALL_TIME_FILE
    return json.loads(path.read_text())["train_wall_s"] if path.is_file() else None


def last_val_loss(run_dir: str | Path) -> float | None:
    """The last validation loss logged in the run's metrics, or None."""
    losses = [r["val_loss"] for r in read_metrics(run_dir) if "val_loss" in r]
    return losses[-1] if losses else None


def resume_step_dir(run_dir: Path | None, resume: str | None) -> Path | None:
    """The step directory a run resumes from: none, the run's `latest` (resume=auto), or a given one.

    A run directory that already holds checkpoints is never trained over silently: without `resume` it is an
    error naming the way to continue it.
    """
    if run_dir is None:
        return None
    latest = latest_step_dir(run_dir)
    if resume is None and latest is not None:
        raise ValueError(
            f"run directory {run_dir} already holds checkpoints (latest {latest.name}): pass resume=auto "
            "to continue it, or choose another run_name"
        )
    if resume is None or resume == "auto":
        return latest
    target = resolve_checkpoint(resume)
    if not target.is_dir():
        raise ValueError(f"resume={resume}: resuming needs a step directory; use train.init_from for weights")
    return target
