"""Train an HRM (or a baseline) on MBPP: a Hydra front end over `hrm_codegen.training`.

    python scripts/train_codegen.py arch=tiny train.max_steps=200 train.lr=3e-4
    python scripts/train_codegen.py -m train.lr=1e-4,3e-4                  # a sweep
    python scripts/train_codegen.py experiment=mbpp_cpu_demo resume=auto
    python scripts/train_codegen.py experiment=rl_mbpp train.init_from=RUN      # GSPO with TRL (hrm_codegen/rl.py)
    python scripts/train_codegen.py --config configs/codegen_base.yaml --dry-run
    accelerate launch --multi_gpu --num_processes 2 scripts/train_codegen.py arch=tiny   # CPU without CUDA: gloo

`--config PATH` and `--dry-run` are shorthands for Hydra's `--config-path/--config-name` and `dry_run=true`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from hrm_codegen.train_config import CONFIG_DIR, register_configs


def translate_argv(argv: list[str]) -> list[str]:
    """Rewrite `--config PATH` into `--config-path DIR --config-name NAME` and `--dry-run` into `dry_run=true`."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--config" or arg.startswith("--config="):
            value = arg.split("=", 1)[1] if "=" in arg else next(args, "")
            path = Path(value).expanduser().resolve()
            if not path.is_file():
                sys.exit(f"error: --config {value}: no such config file")
            out += ["--config-path", str(path.parent), "--config-name", path.stem]
        elif arg == "--dry-run":
            out.append("dry_run=true")
        else:
            out.append(arg)
    return out


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="codegen_base")
def main(cfg: DictConfig) -> None:
    """Run one training job (or one job of a sweep) and turn expected failures into a one-line error."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        cfg.run_name = f"{cfg.run_name}_{hydra_cfg.job.num}"
    # Imported here so that a bad override fails in Hydra before the heavy training imports.
    from hrm_codegen.training import TrainingStopped, run

    try:
        result = run(cfg)
    except (ValueError, FileNotFoundError, ConnectionError, TrainingStopped) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    if isinstance(result, str):
        print(result)
    elif result["is_main_process"]:
        print(f"done: step {result['step']}, run directory {result['run_dir']}")


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *translate_argv(sys.argv[1:])]
    register_configs()
    main()
