"""The training budget of a recurrence recipe (experiment=recurrence_mbpp_pairs by default): its optimizer steps, its
analytic training FLOPs per token (every step at the cycles it draws, both deep-supervision segments, the exit gate's
read-outs) against the post-trained source's (the retrofit's layers at one cycle), and the source's steps at equal
training FLOPs, for `experiment=posttrain_mbpp_pairs train.max_steps=N`.

    python scripts/recurrence_budget.py                                  # the recipe as it is (needs its data)
    python scripts/recurrence_budget.py train.epochs=2 --steps 200       # overrides; --steps skips counting the data
"""

from __future__ import annotations

import argparse
import math
import sys

from hrm_codegen.datasets.assembly import build_datasets
from hrm_codegen.datasets.batching import BatchOrder
from hrm_codegen.recurrence import training_budget
from hrm_codegen.tokenization import load_tokenizer
from hrm_codegen.train_config import compose_config, resolve_arch_from_init, validate_config


def main(argv: list[str] | None = None) -> None:
    """Print the budget table of the composed recipe."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--experiment", default="recurrence_mbpp_pairs", help="the HRM recipe (configs/experiment)"
    )
    parser.add_argument(
        "--steps", type=int, help="the run's optimizer steps (default: from its data and epochs)"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the recipe (KEY=VALUE)")
    args = parser.parse_args(argv)
    try:
        cfg = resolve_arch_from_init(compose_config([f"experiment={args.experiment}", *args.overrides]))
        validate_config(cfg)
        steps = args.steps or cfg.train.max_steps
        if not steps:
            tokenizer = load_tokenizer(cfg.tokenizer.name_or_path)
            train, _ = build_datasets(cfg, tokenizer, use_cache=False)
            order = BatchOrder(len(train), cfg.train.global_batch_size, cfg.seed)  # type: ignore[arg-type]
            steps = max(1, math.ceil(cfg.train.epochs * order.steps_per_epoch))
        budget = training_budget(cfg, int(steps))
    except (ValueError, OSError) as err:
        sys.exit(f"recurrence_budget.py: error: {err}")
    print(
        f"{args.experiment}: {budget['steps']} steps of {cfg.train.global_batch_size} x {cfg.data.seq_len} tokens"
    )
    print(f"  HRM training FLOPs per token     {budget['hrm_flops_per_token']:.4g}")
    print(
        f"  source training FLOPs per token  {budget['source_flops_per_token']:.4g}  (ratio {budget['ratio']:.3f})"
    )
    print(f"  source steps at equal FLOPs      {budget['source_steps_equal_flops']}  (train.max_steps)")


if __name__ == "__main__":
    main()
