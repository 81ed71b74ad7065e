"""Pass@k of a model (an HRM checkpoint or a transformers causal LM) or of a samples file on MBPP / HumanEval.

    python scripts/evaluate.py --ckpt checkpoints/run --output outputs/eval/run     # any run trained here
    python scripts/evaluate.py --model path/or/hub-id --num-samples 10 --k 1,10 --output DIR   # any transformers LM
    python scripts/evaluate.py --samples completions.jsonl --output DIR     # {"task_id", "completion"} lines
    python scripts/evaluate.py --prompt-format bigcode --write-prompts prompts.jsonl   # the prompts, no model
    python scripts/evaluate.py --ckpt checkpoints/run --repair-rounds 2 --output DIR   # self-repair (MBPP, MBPP+)

--prompt-format picks the protocol: native (this project's), bigcode (bigcode-evaluation-harness), lm-eval
(lm-evaluation-harness 0.4), chat (the tokenizer's chat template, EvalPlus's instruct prompt). The datasets
mbppplus / humanevalplus are EvalPlus's (Hub, or --data-file with a local jsonl/parquet copy).

Samples are appended to DIR/samples.jsonl as they finish; running again with the same DIR skips the samples
already there (DIR/eval_config.json must match), and DIR/summary.json holds the result. Ctrl-C (SIGINT) stops
at once, also when a shell started the evaluation in the background, killing the programs still running
(exit status 130); the finished samples stay in DIR/samples.jsonl for the next run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch

from hrm_codegen.completions import ModelCompletions, SamplingConfig, available_cpus, default_batch_size
from hrm_codegen.datasets.evalplus import exclude_train_overlap, train_overlap
from hrm_codegen.datasets.evalplus_source import JUDGE_MEMORY_MB, JUDGE_TIMEOUT_S, is_source_file
from hrm_codegen.datasets.mbpp import DEFAULT_PATH, SPLITS, load_mbpp
from hrm_codegen.datasets.problems import Problem
from hrm_codegen.datasets.protocols import (
    DATASETS,
    FORMATS,
    SanitizedProblem,
    build_problems,
    default_timeout_s,
    raw_format_notice,
    write_prompts,
)
from hrm_codegen.datasets.sources import load_rows
from hrm_codegen.evaluation import SAMPLES_FILE, SUMMARY_FILE, evaluate, evaluate_file, format_summary_table
from hrm_codegen.execution import SandboxLimits
from hrm_codegen.inference import load_checkpoint, load_pretrained, parse_arch_overrides
from hrm_codegen.quantization import METHODS as QUANTIZE_METHODS
from hrm_codegen.quantization import quantize_weights
from hrm_codegen.repair import SelfRepair
from hrm_codegen.runs import trained_data_config as checkpoint_data  # the training config's data section
from hrm_codegen.tokenization import load_tokenizer

RUN_CONFIG_FILE = "eval_config.json"
PROMPTS_FILE = "prompts.jsonl"
MODEL_TYPE_DEPRECATED = (
    "evaluate.py: --model-type is deprecated and ignored: --ckpt (a run of this launcher, its family read from "
    "the checkpoint) or --model (a transformers model) says what to load"
)
INTERRUPTED_STATUS = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C
TERMINATED_STATUS = 143  # 128 + SIGTERM


class Terminated(Exception):
    """SIGTERM arrived: unwinds like Ctrl-C, so the sandbox stops its programs and the samples file is kept."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


# Settings that change the samples: a resumed run must use the same ones.
PROBLEM_KEYS = ("source", "dataset", "split", "few_shot", "prompt_format", "data_file", "sanitize")
SAMPLING_KEYS = (
    "tokenizer",
    "temperature",
    "top_p",
    "top_k",
    "max_new_tokens",
    "seed",
    "quantize",
    "arch_overrides",
    "halt_threshold",  # recorded only when set (per-token exits of an HRM with an exit gate)
    "repair_rounds",  # recorded only when > 0, so the files of runs without self-repair stay as they were
)


def fail(message: str) -> NoReturn:
    """Print a one-line error and exit with status 2."""
    print(f"evaluate.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def arch_overrides_of(items: list[str]) -> dict[str, Any] | None:
    """The --arch-override KEY=VALUE items as a mapping (values parsed as YAML scalars); None when none."""
    try:
        return parse_arch_overrides(items, "--arch-override")
    except ValueError as err:
        fail(str(err))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.error = fail  # type: ignore[method-assign]
    source = parser.add_argument_group("what to evaluate (one of)")
    source.add_argument(
        "--model-type", help="deprecated and ignored: --ckpt or --model says what to load (and its family)"
    )
    source.add_argument(
        "--ckpt",
        help="a run of this launcher, any family: a step directory, a run directory (its latest), weights",
    )
    source.add_argument(
        "--model", help="an outside transformers causal LM: a save_pretrained directory or Hub id"
    )
    source.add_argument("--samples", help="score the completions of this jsonl file (task_id, completion)")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the checkpoint's / model's own)")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="--model: run modeling code shipped with the model"
    )
    parser.add_argument(
        "--arch-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="--ckpt: set a key of the checkpoint's arch before the model is built, e.g. L_cycles=3 (test-time "
        "cycles); repeatable; the value is a YAML scalar; keys that change parameter shapes cannot load",
    )
    parser.add_argument(
        "--halt-threshold",
        type=float,
        metavar="P",
        help="--ckpt of an HRM with an exit gate (arch.exit_gate): each generated token stops its recurrence "
        "after the first L step whose exit probability exceeds P (1 = never early: the fixed cycles); "
        "summary.json's `halting` records the mean layer evaluations per token",
    )
    data = parser.add_argument_group("problems")
    data.add_argument("--dataset", choices=DATASETS, default="mbpp")
    data.add_argument(
        "--prompt-format", choices=tuple(FORMATS), default="native", help="prompt protocol (default native)"
    )
    data.add_argument(
        "--data-file",
        help="mbppplus / humanevalplus: a local jsonl or parquet (default: the Hub); mbppplus also takes "
        "EvalPlus's source file (MbppPlus.jsonl: inputs only, judged by EvalPlus's rules, base and plus pass@k)",
    )
    data.add_argument(
        "--exclude-train-overlap", action="store_true", help="mbppplus: drop tasks from MBPP's training split"
    )
    data.add_argument("--write-prompts", help="write the prompts (one JSON line each) to this file and exit")
    data.add_argument("--split", choices=tuple(SPLITS), default="test", help="MBPP split (HumanEval: test)")
    data.add_argument("--mbpp", default=str(DEFAULT_PATH), help=f"MBPP jsonl (default {DEFAULT_PATH})")
    data.add_argument(
        "--few-shot", type=int, help="MBPP few-shot examples (default: the checkpoint's, else 0)"
    )
    data.add_argument("--limit", type=int, help="only the first N problems")
    gen = parser.add_argument_group("sampling")
    gen.add_argument("--num-samples", type=int, default=1, help="completions per problem (n)")
    gen.add_argument("--k", default="1", help="comma-separated k of pass@k (default 1)")
    gen.add_argument("--temperature", type=float, help="0 = greedy (default: 0 for one sample, else 0.8)")
    gen.add_argument("--top-p", type=float, default=0.95, help="nucleus mass when sampling (default 0.95)")
    gen.add_argument("--top-k", type=int, default=0, help="top-k when sampling (0 = off)")
    gen.add_argument(
        "--max-new-tokens",
        type=int,
        help="tokens to generate at most (default: the prompt format's harness default for the dataset)",
    )
    gen.add_argument(
        "--batch-size",
        type=int,
        help="sequences per generate call (default: chosen for the device, see completions.default_batch_size)",
    )
    gen.add_argument(
        "--threads", type=int, help="torch threads for decoding (default: the CPUs this process may run on)"
    )
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--repair-rounds",
        type=int,
        default=0,
        metavar="R",
        help="self-repair: a completion failing the asserts its prompt shows gets the failing assert or error "
        "as feedback, in the prompt format, and is generated again, up to R times (MBPP, MBPP+; default 0)",
    )
    gen.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    gen.add_argument(
        "--compile",
        action="store_true",
        help="static KV cache and a torch.compile'd decode step (CUDA graphs on CUDA); the first call compiles; "
        "batches are padded to one shape so that it compiles once",
    )
    gen.add_argument(
        "--prompt-lookup",
        type=int,
        default=0,
        metavar="N",
        help="greedy prompt lookup decoding: up to N draft tokens copied from where the last 2-gram occurred "
        "earlier (prompt or code so far), verified in one forward; the greedy tokens in fewer steps, one sequence "
        "at a time (default batch size 1); 0 = off",
    )
    gen.add_argument(
        "--quantize",
        choices=QUANTIZE_METHODS,
        help="CPU inference: fp16 weights (fbgemm, fp32 arithmetic), weight-only int8 (torchao, else PyTorch), int8_dynamic (PyTorch dynamic int8, "
        "the fastest on x86, inaccurate with activation outliers), int8_smooth (int8 dynamic after SmoothQuant "
        "scaling, MLP down projections in fp16) or int4 (weight-only, groups of 32; PyTorch's int4 kernel needs AVX-512, "
        "elsewhere the int4 values run in fp32 weights)",
    )
    run = parser.add_argument_group("execution and output")
    run.add_argument("--workers", type=int, help="parallel sandboxes (default: CPU count)")
    run.add_argument(
        "--timeout",
        type=float,
        help=f"seconds per program (default 10; EvalPlus datasets 30; MBPP+ from its source file {JUDGE_TIMEOUT_S:g}, "
        "behind the judge's own per-input limits)",
    )
    run.add_argument(
        "--sanitize",
        action="store_true",
        help="EvalPlus-style: keep the longest parsing prefix and needed defs",
    )
    run.add_argument("--output", help="output directory (samples.jsonl, summary.json)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.model_type is not None:
        print(MODEL_TYPE_DEPRECATED, file=sys.stderr)
    del args.model_type
    args.arch_overrides = arch_overrides_of(args.arch_override)
    del args.arch_override  # recorded once, parsed, as arch_overrides (eval_config.json, summary.json)
    if args.arch_overrides and not args.ckpt:
        fail(
            "--arch-override applies to --ckpt (a checkpoint of this launcher) only, not --model or --samples"
        )
    if args.halt_threshold is not None:
        if not args.ckpt:
            fail("--halt-threshold applies to --ckpt (an HRM of this launcher with an exit gate) only")
        if not 0.0 <= args.halt_threshold <= 1.0:
            fail(f"--halt-threshold must be between 0 and 1, got {args.halt_threshold}")
        if args.compile:
            fail("--halt-threshold decodes uncompiled (exits copy cache entries): drop --compile")
    if args.dataset != "mbpp" and args.few_shot:
        fail(f"--few-shot applies to MBPP only, not --dataset {args.dataset}")
    if args.data_file and not args.dataset.endswith("plus"):
        fail("--data-file is for --dataset mbppplus or humanevalplus (MBPP: --mbpp)")
    if args.exclude_train_overlap and args.dataset != "mbppplus":
        fail("--exclude-train-overlap applies to --dataset mbppplus only")
    if args.write_prompts:
        if args.prompt_format == "chat" and not args.tokenizer:
            fail("--write-prompts with --prompt-format chat needs --tokenizer (its chat template)")
        return args
    if not args.output:
        fail("--output DIR is required")
    modes = [args.samples is not None, args.ckpt is not None, args.model is not None]
    if sum(modes) != 1:
        fail("give exactly one of --samples FILE, --ckpt RUN_OR_STEP or --model DIR_OR_HUB_ID")
    if args.max_new_tokens is None:
        args.max_new_tokens = FORMATS[args.prompt_format].default_max_new_tokens(args.dataset)
    if args.dataset != "mbpp" and args.split != "test":
        fail(f"HumanEval has only the test split, got --split {args.split}")
    if args.batch_size is not None and args.batch_size < 1:
        fail(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        fail(f"--threads must be >= 1, got {args.threads}")
    if args.num_samples < 1 or (args.limit is not None and args.limit < 1):
        fail("--num-samples and --limit must be >= 1")
    try:
        args.ks = sorted({int(k) for k in args.k.split(",")})
    except ValueError:
        fail(f"--k must be comma-separated integers, got {args.k!r}")
    if args.ks[0] < 1:
        fail(f"--k values must be >= 1, got {args.k!r}")
    if args.temperature is None:
        args.temperature = 0.0 if args.num_samples == 1 else 0.8
    if args.num_samples > 1 and args.temperature == 0 and not args.samples:
        fail("--num-samples > 1 with greedy decoding gives identical samples; set --temperature > 0")
    if args.repair_rounds < 0:
        fail(f"--repair-rounds must be >= 0, got {args.repair_rounds}")
    if args.prompt_lookup:
        if args.prompt_lookup < 0:
            fail(f"--prompt-lookup must be >= 0, got {args.prompt_lookup}")
        if args.samples:
            fail("--prompt-lookup is a way of decoding: it needs --ckpt or --model, not --samples")
        if args.temperature > 0:
            fail(f"--prompt-lookup decodes greedily; got --temperature {args.temperature:g} (set 0)")
        if args.compile:
            fail("--prompt-lookup decodes over the dynamic cache: drop --compile")
        if args.halt_threshold is not None:
            fail(
                "--prompt-lookup verifies several tokens per step, per-token exits one: drop --halt-threshold"
            )
    if args.repair_rounds and args.samples:
        fail("--repair-rounds needs a model to generate repairs (--ckpt or --model), not --samples")
    if args.repair_rounds and args.dataset.startswith("humaneval"):
        fail(
            f"--repair-rounds needs asserts shown in the prompt for its feedback; {args.dataset}'s prompts show "
            "none (use --dataset mbpp or mbppplus)"
        )
    return args


def load_problems(args: argparse.Namespace, tokenizer: object = None) -> list[Problem]:
    """The problems of the dataset, split and prompt format, the first --limit of them."""
    if args.dataset == "mbpp":
        if not Path(args.mbpp).is_file():
            raise FileNotFoundError(
                f"MBPP file {args.mbpp} does not exist: run scripts/prepare_data.py or pass --mbpp PATH"
            )
        rows = load_mbpp(args.mbpp)
    elif args.dataset == "humaneval":
        rows = load_rows("humaneval")
    else:
        rows = load_rows(args.dataset, args.data_file)
    shot_rows = (
        load_mbpp(args.mbpp) if args.dataset == "mbppplus" and args.prompt_format == "lm-eval" else None
    )
    few_shot = args.few_shot if args.prompt_format == "native" else None
    problems: list[Problem] = list(
        build_problems(
            args.dataset,
            rows,
            args.prompt_format,
            split=args.split,
            tokenizer=tokenizer,
            few_shot=few_shot,
            shot_rows=shot_rows,
        )
    )
    args.train_overlap = train_overlap(problems) if args.dataset == "mbppplus" else []
    if args.exclude_train_overlap:
        problems = exclude_train_overlap(problems)
    if args.dataset == "mbppplus":
        what = "excluded" if args.exclude_train_overlap else "kept (--exclude-train-overlap drops them)"
        print(
            f"MBPP+: {len(args.train_overlap)} tasks are in MBPP's train split (601-974), {what}: "
            f"{len(problems)} tasks to score",
            file=sys.stderr,
        )
    if args.sanitize:
        problems = [SanitizedProblem.of(p) for p in problems]  # type: ignore[arg-type]
    return problems[: args.limit] if args.limit else problems


def check_run_config(output: Path, settings: dict[str, Any]) -> None:
    """Record the sample-defining settings in output/eval_config.json, or check them against a previous run."""
    path = output / RUN_CONFIG_FILE
    keys = PROBLEM_KEYS if settings["samples"] else PROBLEM_KEYS + SAMPLING_KEYS
    current = {key: settings[key] for key in keys if key in settings}
    if current.get("temperature") == 0:  # greedy: the sampling controls do not matter
        current.update(top_p=None, top_k=None, seed=None)
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = [key for key in (*PROBLEM_KEYS, *SAMPLING_KEYS) if previous.get(key) != current.get(key)]
        if changed:
            key = changed[0]
            raise ValueError(
                f"{path}: {output} holds samples made with {key}={previous.get(key)!r}, this run has "
                f"{key}={current.get(key)!r}; use another --output to evaluate different settings"
            )
        return
    output.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=2) + "\n")


def file_digest(path: str) -> str:
    """Sha256 of a file, or an error naming it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"samples file {path} does not exist")
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run(args: argparse.Namespace) -> dict:
    """Evaluate as the arguments say and return the summary (with --write-prompts: {"prompts_written": N})."""
    trained = checkpoint_data(args.ckpt) if args.ckpt else {}
    if args.few_shot is None:
        args.few_shot = int(trained.get("few_shot") or 0) if args.dataset == "mbpp" else 0
    trained_format = (trained.get("prompt_format") or "native") if args.ckpt else None
    if trained_format and trained_format != args.prompt_format:
        print(
            f"notice: the checkpoint was trained in prompt format {trained_format!r}, evaluated here in "
            f"{args.prompt_format!r} (--prompt-format {trained_format} matches its training)",
            file=sys.stderr,
        )
    # MBPP+ from EvalPlus's source file: the judge keeps EvalPlus's time limits itself; the sandbox's wall clock
    # stands behind them, with EvalPlus's memory limit
    judged = args.dataset == "mbppplus" and args.data_file is not None and is_source_file(args.data_file)
    if args.timeout is None:
        args.timeout = JUDGE_TIMEOUT_S if judged else default_timeout_s(args.dataset)
    if args.write_prompts:
        tokenizer = None
        if args.tokenizer:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        return {"prompts_written": write_prompts(args.write_prompts, load_problems(args, tokenizer))}
    output = Path(args.output)
    if args.samples:
        source = f"samples {Path(args.samples).resolve()} sha256 {file_digest(args.samples)}"
    else:
        source = ""  # named by the loaded model below
    settings = {**vars(args), "source": source}
    if not args.repair_rounds:
        del settings["repair_rounds"]
    if not args.prompt_lookup:  # recorded only when set, so the files of other runs stay as they were
        del settings["prompt_lookup"]
    limits = SandboxLimits(timeout_s=args.timeout, **({"memory_mb": JUDGE_MEMORY_MB} if judged else {}))
    progress = not args.no_progress
    if args.samples:
        problems = load_problems(args)
        settings["train_overlap"] = len(args.train_overlap)
        check_run_config(output, settings)
        return evaluate_file(
            problems,
            args.samples,
            ks=args.ks,
            output_dir=output,
            limits=limits,
            workers=args.workers,
            config=settings,
            progress=progress,
        )

    args.threads = args.threads or available_cpus()
    torch.set_num_threads(args.threads)
    if args.batch_size is None:  # prompt lookup decodes one sequence at a time
        args.batch_size = 1 if args.prompt_lookup else default_batch_size(args.device, args.num_samples)
    settings.update(threads=args.threads, batch_size=args.batch_size)
    if args.ckpt:
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
        loaded = load_checkpoint(
            args.ckpt, tokenizer=tokenizer, device=args.device, arch_overrides=args.arch_overrides
        )
    else:
        loaded = load_pretrained(args.model, args.tokenizer, args.device, args.trust_remote_code)
    settings["source"] = loaded.source
    if args.halt_threshold is None:  # recorded only when set, so the files of other runs stay as they were
        settings.pop("halt_threshold", None)
    elif not callable(getattr(loaded.model, "set_exit_threshold", None)):
        raise ValueError(f"--halt-threshold: {loaded.source} is not an HRM (exits need an exit gate)")
    else:
        loaded.model.set_exit_threshold(args.halt_threshold)
    if args.quantize:
        quantize_weights(loaded.model, args.quantize, tokenizer=loaded.tokenizer)
        settings["int4_backend"] = loaded.model.__dict__.get("int4_backend")
        if (
            args.quantize == "int8_smooth"
        ):  # recorded only for it, so the files of other runs stay as they were
            settings["smoothing"] = loaded.model.__dict__.get("smoothing")
    notice = raw_format_notice(loaded.tokenizer, args.prompt_format)
    if notice:
        print(f"notice: {notice}", file=sys.stderr)
    problems = load_problems(args, loaded.tokenizer)
    settings["train_overlap"] = len(args.train_overlap)
    stops = tuple(getattr(problems[0], "stop_sequences", ())) if problems else ()
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        batch_size=args.batch_size,
        stop_strings=stops,
    )
    options: dict[str, Any] = {"compile": True} if args.compile else {}
    if args.prompt_lookup:
        options["prompt_lookup"] = args.prompt_lookup
    bos = FORMATS[args.prompt_format].bos  # the harness's rule: [BOS] prompt, or the tokenizer's own tokens
    settings["prompt_bos"] = bos
    completions = ModelCompletions.from_loaded(loaded, sampling, progress=progress, options=options, bos=bos)
    truncated = completions.truncated_prompts(problems)
    if truncated:
        print(
            f"warning: {len(truncated)} prompt(s) longer than the model allows were shortened from the start "
            f"(task ids {', '.join(truncated)}); see summary.json config.truncated_prompts",
            file=sys.stderr,
        )
    settings["truncated_prompts"] = truncated
    check_run_config(output, settings)
    write_prompts(output / PROMPTS_FILE, problems)  # samples name their prompt by sha256
    repair = (
        SelfRepair(
            completions, args.repair_rounds, limits=limits, workers=args.workers, tokenizer=loaded.tokenizer
        )
        if args.repair_rounds
        else None
    )
    with repair or contextlib.nullcontext():
        summary = evaluate(
            problems,
            repair or completions,
            num_samples=args.num_samples,
            ks=args.ks,
            output_dir=output,
            limits=limits,
            workers=args.workers,
            config=settings,
            progress=progress,
            batch_size=max(1, args.batch_size // args.num_samples),
        )
    if args.halt_threshold is not None:  # layer evaluations of this run's one-token decoding steps
        summary["halting"] = loaded.model.exit_summary()
        (output / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    if completions.compile_seconds is not None:
        print(
            f"compiled decoding: the first compiled call took {completions.compile_seconds:.1f} s",
            file=sys.stderr,
        )
    return summary


def main(argv: list[str] | None = None) -> None:
    """Run the evaluation; expected mistakes end with a one-line message and exit status 2, Ctrl-C with 130,
    SIGTERM with 143 (both keep the finished samples for a resume)."""
    # A shell starting a command in the background (`evaluate.py ... &` in a script) makes it ignore SIGINT;
    # this long-running command is meant to be stopped with SIGINT and resumed, so it listens all the same.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_terminated)  # a job scheduler's stop: the same clean-up as Ctrl-C
    args = parse_args(argv)
    try:
        summary = run(args)
    except (ValueError, OSError) as err:
        fail(str(err))
    except (KeyboardInterrupt, Terminated) as stop:
        what = "terminated" if isinstance(stop, Terminated) else "interrupted"
        print(
            f"evaluate.py: {what}; the samples finished so far are kept in {Path(args.output) / SAMPLES_FILE}"
            ": run the same command again to resume",
            file=sys.stderr,
        )
        sys.exit(TERMINATED_STATUS if isinstance(stop, Terminated) else INTERRUPTED_STATUS)
    if "prompts_written" in summary:
        print(f"wrote {summary['prompts_written']} prompts to {args.write_prompts}")
        return
    print(format_summary_table(summary))
    print(f"samples: {Path(args.output) / SAMPLES_FILE}  summary: {Path(args.output) / SUMMARY_FILE}")


if __name__ == "__main__":
    main()
