"""Run metrics: one JSON object a line in `<run dir>/metrics.jsonl`, and Weights & Biases when asked for."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hrm_codegen.jsonl import read_jsonl

METRICS_FILE = "metrics.jsonl"

LOGGERS = ("none", "jsonl", "wandb")


class MetricsLogger:
    """Appends metric records to metrics.jsonl (`kind` jsonl or wandb) and to a wandb run (`kind` wandb).

    wandb runs offline unless `mode` says otherwise or WANDB_API_KEY is set.
    """

    def __init__(
        self,
        kind: str,
        run_dir: str | Path,
        config: dict[str, Any] | None = None,
        run_name: str | None = None,
        project: str | None = None,
        entity: str | None = None,
        mode: str | None = None,
    ) -> None:
        if kind not in LOGGERS:
            raise ValueError(f"logger.name must be one of {LOGGERS}, got {kind!r}")
        self.path = Path(run_dir) / METRICS_FILE if kind != "none" else None
        self._wandb_run = None
        if kind == "wandb":
            try:
                import wandb  # type: ignore[import-not-found]
            except ImportError as err:
                raise ValueError('logger=wandb needs the wandb package: pip install -e ".[wandb]"') from err
            mode = mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
            self._wandb_run = wandb.init(
                project=project,
                entity=entity,
                name=run_name,
                config=config,
                dir=str(run_dir),
                mode=mode,
                resume="allow",
                id=run_name,
            )

    def log(self, record: dict[str, Any]) -> None:
        """Write one record (it should carry `step`)."""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        if self._wandb_run is not None:
            fields = {k: v for k, v in record.items() if k != "step" and isinstance(v, int | float)}
            self._wandb_run.log(fields, step=record.get("step"))

    def close(self) -> None:
        """Finish the wandb run, if any."""
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl, in order; a bad line raises ValueError naming file:line."""
    return [record for _, record in read_jsonl(Path(run_dir) / METRICS_FILE, what="metrics file")]
