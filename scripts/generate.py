"""Try a model by hand: write the code for a task of your own, streamed as it is generated, then (with --test)
run it against your asserts in the sandbox.

    python scripts/generate.py --ckpt checkpoints/retrofit_L15x2_ft "Write a function to reverse a string." \
        --test "assert reverse_string('abc') == 'cba'"
    python scripts/generate.py --model sources/smollm2-135m-instruct --prompt-format chat "Write a function ..."
    python scripts/generate.py --ckpt checkpoints/retrofit_L15x2_ft --arch-override L_cycles=1 --quantize fp16 "..."

--arch-override KEY=VALUE changes the checkpoint's arch at test time (e.g. L_cycles=1: the HRM at one L cycle, the
source's 30 layer evaluations per token); --halt-threshold T decodes an HRM trained with an exit gate with
per-token exits (each token stops after the first L step whose exit probability exceeds T) and reports the layer
evaluations per token it ran.

The task is rendered as an MBPP problem in the prompt format (default: the one the checkpoint was trained in),
so a model fine-tuned here sees what it saw in training. Decoding is greedy unless --temperature > 0.
"""

from __future__ import annotations

import argparse
import sys

import torch

from hrm_codegen.completions import ModelCompletions, SamplingConfig, available_cpus
from hrm_codegen.datasets.protocols import FORMATS, mbpp_task_problem
from hrm_codegen.execution import Sandbox, SandboxLimits
from hrm_codegen.generation import cut_at_stop
from hrm_codegen.inference import load_checkpoint, load_pretrained, parse_arch_overrides
from hrm_codegen.quantization import METHODS, quantize_weights
from hrm_codegen.runs import trained_data_config


class PrintStream:
    """A streamer for `generate`: prints the completion as it grows, never past a stop string (the last few
    characters wait until no stop string can start there)."""

    def __init__(self, decode, stops: tuple[str, ...]):
        self.decode, self.stops = decode, stops
        self.ids: list[int] = []
        self.printed, self.seen_prompt = 0, False
        self.hold = max((len(s) for s in stops), default=0)

    def _show(self, final: bool) -> None:
        text = cut_at_stop(self.decode(self.ids), self.stops)
        end = len(text) if final else max(self.printed, len(text) - self.hold)
        sys.stdout.write(text[self.printed : end])
        sys.stdout.flush()
        self.printed = end

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:  # the first call carries the prompt
            self.seen_prompt = True
            return
        self.ids += value.reshape(-1).tolist()
        self._show(final=False)

    def end(self) -> None:
        self._show(final=True)
        sys.stdout.write("\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("task", help="what the function should do, as an MBPP task's text")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--ckpt", help="a run or step directory of this launcher")
    what.add_argument("--model", help="a transformers causal LM (directory or Hub id)")
    parser.add_argument("--test", action="append", default=[], help="an assert (repeatable): shown and run")
    parser.add_argument("--prompt-format", choices=tuple(FORMATS), help="default: the checkpoint's own")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quantize", choices=METHODS, help="CPU: fp16, int8, int8_dynamic, int8_smooth or int4 weights"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: the CPUs available)")
    parser.add_argument(
        "--arch-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="--ckpt: a test-time arch change (repeatable), e.g. L_cycles=1",
    )
    parser.add_argument(
        "--halt-threshold",
        type=float,
        metavar="T",
        help="--ckpt, an HRM with an exit gate: per-token exits at exit probability T (0-1)",
    )
    parser.add_argument(
        "--prompt-lookup",
        type=int,
        default=0,
        metavar="N",
        help="greedy prompt lookup decoding with up to N draft tokens (the same tokens, fewer steps; 0 = off)",
    )
    args = parser.parse_args(argv)
    if args.prompt_lookup < 0 or (args.prompt_lookup and args.temperature > 0):
        parser.error("--prompt-lookup takes N >= 0 and decodes greedily (--temperature 0)")
    if (args.arch_override or args.halt_threshold is not None) and not args.ckpt:
        parser.error("--arch-override and --halt-threshold apply to --ckpt (a run of this launcher)")
    try:
        args.arch_overrides = parse_arch_overrides(args.arch_override, "--arch-override")
    except ValueError as err:
        parser.error(str(err))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or available_cpus())
    try:
        loaded = (
            load_checkpoint(args.ckpt, device="cpu", arch_overrides=args.arch_overrides)
            if args.ckpt
            else load_pretrained(args.model)
        )
        if args.halt_threshold is not None:
            if not hasattr(loaded.model, "set_exit_threshold"):
                raise ValueError(
                    f"--halt-threshold: {args.ckpt} is not an HRM (per-token exits are the HRM's)"
                )
            loaded.model.set_exit_threshold(args.halt_threshold)
        fmt = args.prompt_format or (
            (trained_data_config(args.ckpt).get("prompt_format") or "native") if args.ckpt else "native"
        )
        if args.quantize:
            quantize_weights(loaded.model, args.quantize, tokenizer=loaded.tokenizer)
        problem = mbpp_task_problem(args.task, args.test, fmt, loaded.tokenizer)
    except (ValueError, OSError) as err:
        print(f"generate.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    stops = tuple(problem.stop_sequences)
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed, stop_strings=stops
    )
    source = ModelCompletions.from_loaded(loaded, sampling, progress=False, bos=FORMATS[fmt].bos)
    source.options = {"streamer": PrintStream(source.decode, stops)}
    if args.prompt_lookup:
        source.options["prompt_lookup"] = args.prompt_lookup
    print(f"--- {loaded.source}, prompt format {fmt} ---", file=sys.stderr)
    completion = source([problem], [[0]])[0][0]
    record = source.last_records[0][0]
    print(f"--- {record['num_tokens']} tokens, stopped by {record['finish_reason']} ---", file=sys.stderr)
    if args.halt_threshold is not None:
        exits = loaded.model.exit_summary()
        mean = exits["mean_layer_evals_per_token"]
        print(
            f"--- per-token exits at {args.halt_threshold}: "
            f"{'-' if mean is None else f'{mean:.1f}'} of {exits['full_layer_evals_per_token']} layer evaluations "
            "per generated token (the prompt runs them all) ---",
            file=sys.stderr,
        )
    if args.test:
        with Sandbox(SandboxLimits(timeout_s=10.0), workers=1) as sandbox:
            result = sandbox.submit(problem.program(completion)).result()
        verdict = "passed" if result.passed else f"failed: {result.status} {result.detail}".strip()
        print(f"--- your {len(args.test)} assert(s): {verdict} ---", file=sys.stderr)


if __name__ == "__main__":
    main()
