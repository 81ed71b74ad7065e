"""Rejection-sampling fine-tuning (expert iteration) of a run on MBPP train, with the sandbox reward.

    python scripts/rejection_sample.py --init checkpoints/retrofit_L15x2_ft --out checkpoints/rs_L15x2 \\
        --rounds 2 --num-samples 8 --temperature 0.8 [KEY=VALUE ...]
    python scripts/evaluate.py --ckpt checkpoints/rs_L15x2/round_2/run --output outputs/eval/rs_L15x2

Each round samples --num-samples completions of every MBPP train task from the current run, keeps the distinct
ones that pass the task's asserts in the sandbox, and fine-tunes the run on them (configs/experiment/rs_mbpp.yaml;
the KEY=VALUE arguments are Hydra overrides of that recipe, e.g. train.epochs=2); the next round samples from the
result. OUT/round_<r>/ holds the samples, pairs.jsonl, the run and manifest.json (counts, tokens, wall times);
OUT/manifest.json names the final run. Running the same command again resumes: finished rounds are skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import NoReturn

import torch

from hrm_codegen.completions import available_cpus
from hrm_codegen.datasets.mbpp import DEFAULT_PATH
from hrm_codegen.quantization import METHODS as QUANTIZE_METHODS
from hrm_codegen.rejection_sampling import MANIFEST_FILE, RejectionSamplingConfig, run_rounds

INTERRUPTED_STATUS = 130  # 128 + SIGINT
DEFAULTS = RejectionSamplingConfig(init="", output_dir="")


def fail(message: str, status: int = 2) -> NoReturn:
    """Print a one-line error and exit."""
    print(f"rejection_sample.py: error: {message}", file=sys.stderr)
    sys.exit(status)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.error = fail  # type: ignore[method-assign]
    parser.add_argument("--init", required=True, help="the run (or step directory) round 1 samples from")
    parser.add_argument("--out", required=True, help="output directory: rounds, manifests, runs")
    parser.add_argument("--rounds", type=int, default=DEFAULTS.rounds, help="rounds in all (default 1)")
    parser.add_argument("--num-samples", type=int, default=DEFAULTS.num_samples, help="completions per task")
    parser.add_argument("--temperature", type=float, default=DEFAULTS.temperature)
    parser.add_argument("--top-p", type=float, default=DEFAULTS.top_p)
    parser.add_argument("--top-k", type=int, default=DEFAULTS.top_k, help="0 = off")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens)
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="round r samples with seed + r - 1")
    parser.add_argument(
        "--max-per-task", type=int, help="distinct passing completions kept per task (default all)"
    )
    parser.add_argument(
        "--mix-reference", action="store_true", help="add MBPP's own train solutions to every round's pairs"
    )
    parser.add_argument("--mbpp", default=str(DEFAULT_PATH), help=f"MBPP jsonl (default {DEFAULT_PATH})")
    parser.add_argument("--limit", type=int, help="only the first N train tasks")
    parser.add_argument("--timeout", type=float, default=DEFAULTS.timeout_s, help="seconds per program")
    parser.add_argument("--workers", type=int, help="parallel sandboxes (default: CPU count)")
    parser.add_argument("--batch-size", type=int, help="sequences per generate call (default: by device)")
    parser.add_argument("--threads", type=int, help="torch threads (default: the CPUs this process may use)")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="for sampling"
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_METHODS,
        help="the sampling model's weights (e.g. fp16: fp32's greedy passes at 1.4x the speed here); training stays fp32",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of experiment=rs_mbpp")
    args = parser.parse_args(argv)
    for override in args.overrides:
        if "=" not in override:
            fail(f"{override!r} is not a KEY=VALUE override of the fine-tuning recipe")
    if args.threads is not None and args.threads < 1:
        fail(f"--threads must be >= 1, got {args.threads}")
    return args


def settings_of(args: argparse.Namespace) -> RejectionSamplingConfig:
    """The rejection-sampling settings the arguments give."""
    return RejectionSamplingConfig(
        init=args.init,
        output_dir=args.out,
        rounds=args.rounds,
        num_samples=args.num_samples,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        max_per_task=args.max_per_task,
        mix_reference=args.mix_reference,
        mbpp_path=args.mbpp,
        limit=args.limit,
        timeout_s=args.timeout,
        workers=args.workers,
        batch_size=args.batch_size,
        device=args.device,
        quantize=args.quantize,
        train_overrides=tuple(args.overrides),
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> None:
    """Run the rounds; expected mistakes (and a round with nothing to train on) end with one line and status 2,
    Ctrl-C with 130 (the finished samples and steps are kept for a resume)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # started in the background by a shell
        signal.signal(signal.SIGINT, signal.default_int_handler)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads or available_cpus())
    from hrm_codegen.training import TrainingStopped

    try:
        overall = run_rounds(settings_of(args))
    except (ValueError, OSError, TrainingStopped) as err:
        fail(str(err))
    except KeyboardInterrupt:
        print(
            "rejection_sample.py: interrupted; the finished samples and checkpoints are kept: run the same command "
            "again to resume",
            file=sys.stderr,
        )
        sys.exit(INTERRUPTED_STATUS)
    totals = overall["totals"]
    for manifest in overall["rounds"]:
        print(
            f"round {manifest['round']}: {manifest['passing']}/{manifest['samples']} samples passed, "
            f"{manifest['pairs']} pairs, {manifest['training_steps']} steps -> {manifest['checkpoint']}"
        )
    print(json.dumps({"totals": totals}))
    print(f"final run: {overall['final_run']}  manifest: {Path(args.out) / MANIFEST_FILE}")


if __name__ == "__main__":
    main()
