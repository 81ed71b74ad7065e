"""Reproduce a row of the results tables: run its commands and record docs/results/<row>/ (scripts/reproduce.py).

A row (`hrm_codegen.result_rows`) runs its commands in order, each printed and recorded in row.json: preparing
commands, building the corpus or the mined pairs when a stage trains on them, one training run per stage
(scripts/train_codegen.py), then scripts/evaluate.py: greedy pass@1 (n=1), pass@1/pass@10 from n=20 samples at
temperature 0.8, top-p 0.95, and greedy pass@1 on HumanEval and MBPP+ for the rows that ask (a `ckpt` row
evaluates the run its prepare commands wrote: a rejection-sampling round). A step whose output is
complete (a corpus manifest, a run at its last step, an evaluation summary) is skipped, so an interrupted row
continues where it stopped. Configs are composed here, when a row runs: the corpus and pairs a stage trains on,
and its train.max_steps when the row matches another model's training FLOPs or layer evaluations.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import DictConfig, OmegaConf

from hrm_codegen import report, runs
from hrm_codegen.datasets.evalplus_judge import base_passed
from hrm_codegen.datasets.mbpp import SPLITS, load_mbpp, mbpp_problems
from hrm_codegen.families import get_family
from hrm_codegen.inference import load_model_for_inference, model_config
from hrm_codegen.recurrence import source_matched_steps
from hrm_codegen.result_rows import Row, Stage
from hrm_codegen.train_config import compose_config, resolve_arch_from_init

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
VOCAB_SIZE = 50257  # the analytic FLOPs of every row count GPT-2's head
MAX_NEW_TOKENS = "128"
SAMPLING = ["--num-samples", "20", "--temperature", "0.8", "--top-p", "0.95", "--k", "1,10"]
GREEDY = ["--num-samples", "1", "--temperature", "0", "--k", "1"]


def shell(command: list[str]) -> str:
    """The command as one shell line (this interpreter shown as `python`), with the thread setting it ran under."""
    threads = os.environ.get("OMP_NUM_THREADS")
    shown = ["python" if part == sys.executable else part for part in command]
    return (f"OMP_NUM_THREADS={threads} " if threads else "") + shlex.join(shown)


def execute(command: list[str]) -> float:
    """Run a command from the repository root, stop on failure; its wall time in seconds."""
    print(f"$ {shell(command)}", flush=True)
    start = time.perf_counter()
    if subprocess.run(command, cwd=REPO).returncode != 0:
        sys.exit(f"error: command failed: {shell(command)}")
    return time.perf_counter() - start


def read_json(path: Path) -> Any:
    """A JSON file's content."""
    return json.loads(path.read_text(encoding="utf-8"))


def stage_config(stage: Stage) -> DictConfig:
    """The composed config of a stage's run."""
    return compose_config([*stage.overrides, f"run_name={stage.run_name}"])


def train_flops_per_token(cfg: DictConfig) -> float:
    """The analytic training FLOPs per token of a config's model at its data's sequence length."""
    family = get_family(cfg.arch.name)
    return family.flops_per_token(model_config(cfg, VOCAB_SIZE), cfg.data.seq_len)["train"]


def flop_matched_steps(row: Row, stage: Stage, cfg: DictConfig) -> int:
    """The stage's train.max_steps: its experiment's steps scaled so that the stage's model (`cfg`) spends the
    analytic training FLOPs the experiment spends with the row's `flops_matched_to` overrides (same batch and
    block sizes, so the same data order, cut where the budget ends)."""
    experiment = [o for o in stage.overrides if o.startswith("experiment=")]
    reference = compose_config([*experiment, *row.flops_matched_to])
    if reference.train.max_steps is None:
        sys.exit(
            f"error: {stage.run_name} matches the training FLOPs of {experiment[0]} with "
            f"{list(row.flops_matched_to)}, which sets no train.max_steps"
        )
    return round(reference.train.max_steps * train_flops_per_token(reference) / train_flops_per_token(cfg))


def layer_matched_steps(
    reference_steps: int,
    reference_layers: int,
    schedule: Sequence[Sequence[float]],
    l_layers: int,
    h_layers: int,
) -> int:
    """The most optimizer steps N whose layer evaluations per token stay within the reference run's
    (`reference_steps` x `reference_layers`): step s costs H_cycles x (L_cycles x `l_layers` + `h_layers`) with
    the cycles of the `schedule` entry ([start_fraction, H_cycles, L_cycles]) in force at s, from step
    round(start_fraction x N) on, as train.cycles_schedule runs them. Same tokens per step, so this matches the
    analytic training FLOPs of the layers (embedding and head aside)."""

    def per_step(entry: Sequence[float]) -> int:
        return int(entry[1]) * (int(entry[2]) * l_layers + h_layers)

    def cost(steps: int) -> int:
        starts = [round(float(entry[0]) * steps) for entry in schedule]
        total = 0
        # the last entry started by `step` (the first one before any), as recurrence.cycles_at
        for step in range(steps):
            started = [entry for entry, start in zip(schedule, starts, strict=True) if start <= step]
            total += per_step(started[-1] if started else schedule[0])
        return total

    budget = reference_steps * reference_layers
    bound = budget // min(per_step(entry) for entry in schedule)
    return max(n for n in range(bound + 1) if cost(n) <= budget)


def arch_overrides(eval_args: Sequence[str]) -> dict[str, Any]:
    """The `--arch-override KEY=VALUE` pairs of evaluate.py arguments, values read as YAML scalars."""
    pairs = [
        value for flag, value in zip(eval_args, eval_args[1:], strict=False) if flag == "--arch-override"
    ]
    return {key: yaml.safe_load(value) for key, _, value in (pair.partition("=") for pair in pairs)}


def saved_arch(step_dir: Path) -> dict[str, Any]:
    """The `arch` section of a step directory's saved config."""
    return cast(dict[str, Any], OmegaConf.to_container(OmegaConf.load(step_dir / runs.CONFIG_FILE).arch))


def layer_evals(path: Path, overrides: Mapping[str, Any] | None = None) -> int | None:
    """Decoder-layer evaluations per token of a model: halt_max_steps x H_cycles x (L_cycles x L_layers +
    H_layers) of an HRM step's arch with `overrides` applied, else `num_hidden_layers` of a transformers directory
    (an outside model, or a step's hf/ export); None when neither says."""
    if (path / runs.CONFIG_FILE).is_file():
        arch = {**saved_arch(path), **(overrides or {})}
        if arch.get("name") == "hrm":  # halt_max_steps segments of H_cycles x (L_cycles L calls + an H call)
            segment = arch["H_cycles"] * (arch["L_cycles"] * arch["L_layers"] + arch["H_layers"])
            return int(arch.get("halt_max_steps") or 1) * segment
    for config in (path / "config.json", path / "hf" / "config.json"):
        if config.is_file():
            return read_json(config).get("num_hidden_layers")
    return None


def final_run_dir(row: Row) -> Path:
    """The run a row ends with: its `ckpt` (a run its prepare commands write), else its last stage's run directory."""
    if row.ckpt:
        return REPO / row.ckpt
    if not row.stages:
        raise ValueError(f"row {row.label!r} trains nothing and names no ckpt: it has no final run")
    return REPO / "checkpoints" / row.stages[-1].run_name


def matched_max_steps(rows: Mapping[str, Row], stage: Stage, cfg: DictConfig) -> int:
    """The stage's train.max_steps, computed when it runs: `layer_matched_steps` against the finished final run
    (or `ckpt`) of row `stage.layers_matched_to`, with the stage's train.cycles_schedule (else its init arch's cycles) and
    the L and H layers of its init checkpoint's arch (train.init_from, with train.arch_overrides); a plain transformer
    init (no cycles) costs its `num_hidden_layers` per step."""
    ref_step, steps = finished_reference_steps(rows, stage.layers_matched_to, stage.run_name)
    ref_layers = layer_evals(ref_step)
    if ref_layers is None:
        sys.exit(f"error: {ref_step} does not say its layers per token (no hf/config.json, not an HRM)")
    init = runs.resolve_checkpoint(REPO / str(cfg.train.init_from))
    overrides = cast(dict[str, Any], OmegaConf.to_container(cfg.train.arch_overrides))
    arch = {**saved_arch(init), **overrides}
    schedule = cast(list, OmegaConf.to_container(cfg.train.cycles_schedule))
    if arch.get("name") != "hrm":  # a plain transformer: every step costs its layers (no cycles to schedule)
        init_layers = layer_evals(init, overrides)
        if schedule or init_layers is None:
            why = "has train.cycles_schedule" if schedule else "does not say its layers per token"
            sys.exit(
                f"error: {stage.run_name}: its init {init} is not an HRM and {why}: no layer-matched steps"
            )
        return steps * ref_layers // init_layers
    schedule = schedule or [[0.0, arch["H_cycles"], arch["L_cycles"]]]
    return layer_matched_steps(steps, ref_layers, schedule, arch["L_layers"], arch["H_layers"])


def finished_reference_steps(rows: Mapping[str, Row], reference: str, run_name: str) -> tuple[Path, int]:
    """The final step directory of row `reference`'s run and its optimizer steps; exits when that run has not
    finished (`run_name`'s step count depends on it)."""
    ref_dir = final_run_dir(rows[reference])
    if not runs.finished(ref_dir):
        sys.exit(
            f"error: {run_name} trains for the budget of run {ref_dir.relative_to(REPO)}, which has not "
            f"finished: run `python scripts/reproduce.py {reference}` first"
        )
    ref_step = runs.latest_step_dir(ref_dir)
    assert ref_step is not None
    state = runs.read_train_state(ref_step)
    return ref_step, int(state.get("total_steps") or state["step"])


def source_matched_max_steps(rows: Mapping[str, Row], stage: Stage, cfg: DictConfig) -> int:
    """The stage's train.max_steps, computed when it runs: its HRM's steps within the analytic training FLOPs of
    row `stage.source_flops_matched_to`'s finished run of the source (`recurrence.source_matched_steps`: each step
    at the cycles and bp_steps it trains at, the arch from its init checkpoint with train.arch_overrides)."""
    _, source_steps = finished_reference_steps(rows, stage.source_flops_matched_to, stage.run_name)
    return source_matched_steps(resolve_arch_from_init(cfg), source_steps)


def corpus_dir(cfg: DictConfig, args: argparse.Namespace) -> str:
    """The corpus directory a corpus stage trains on: --corpus, else its config's data.corpus_dir."""
    return args.corpus or str(cfg.data.corpus_dir)


def train_command(
    rows: Mapping[str, Row], row: Row, stage: Stage, cfg: DictConfig, args: argparse.Namespace
) -> list[str]:
    """The stage's training command: its overrides, the step count matched when it runs, the data and tokenizer."""
    steps = []
    if row.flops_matched_to:
        steps = [f"train.max_steps={flop_matched_steps(row, stage, cfg)}"]
    elif stage.layers_matched_to:
        steps = [f"train.max_steps={matched_max_steps(rows, stage, cfg)}"]
    elif stage.source_flops_matched_to:
        steps = [f"train.max_steps={source_matched_max_steps(rows, stage, cfg)}"]
    command = [
        sys.executable,
        "scripts/train_codegen.py",
        *stage.overrides,
        *steps,
        f"run_name={stage.run_name}",
        f"data.path={args.mbpp}",
        f"tokenizer.name_or_path={args.tokenizer}",
    ]
    if cfg.data.name == "corpus":
        command.append(f"data.corpus_dir={corpus_dir(cfg, args)}")
    return command


def train_stage(stage: Stage, command: list[str], commands: list[str]) -> dict[str, Any]:
    """Train one stage with `command` unless it is finished; its run directory, wall time, tokens and final
    validation loss."""
    run_dir = REPO / "checkpoints" / stage.run_name
    commands.append(shell(command))
    if not runs.finished(run_dir):
        if runs.latest_step_dir(run_dir) is not None:
            command = [*command, "resume=auto"]
        wall = execute(command)
        runs.write_wall_time(run_dir, wall, shell(command))
    return trained(run_dir)


def trained(run_dir: Path) -> dict[str, Any]:
    """A trained run's latest step directory, wall time, tokens, steps and final validation loss."""
    step = runs.latest_step_dir(run_dir)
    assert step is not None
    state = runs.read_train_state(step)
    return {
        "run_dir": run_dir,
        "step_dir": step,
        "train_wall_s": runs.read_wall_time(run_dir),
        "tokens": state["tokens_seen"],
        "steps": state["step"],
        "val_loss": runs.last_val_loss(run_dir),
    }


def run_unless_done(command: list[str], done: Path, commands: list[str]) -> None:
    """Record `command` (python and its arguments) and run it unless `done` (relative to the repository) exists."""
    command = [sys.executable, *command]
    commands.append(shell(command))
    if not (REPO / done).exists():
        execute(command)


def build_data(
    name: str, row: Row, configs: list[DictConfig], args: argparse.Namespace, commands: list[str]
) -> None:
    """Build the corpus and the mined pairs the row's stages train on, unless they are there."""
    for corpus in dict.fromkeys(corpus_dir(cfg, args) for cfg in configs if cfg.data.name == "corpus"):
        if row.corpus_tokens is None:
            sys.exit(
                f"error: row {name} trains on the corpus {corpus} but configs/results/ gives no corpus_tokens"
            )
        tokens = ["--max-tokens", str(row.corpus_tokens)]
        build = [
            "scripts/build_corpus.py",
            "--out",
            corpus,
            "--python-lib",
            *tokens,
            "--tokenizer",
            args.tokenizer,
        ]
        build += ["--mbpp", args.mbpp]
        run_unless_done(build, Path(corpus) / "manifest.json", commands)
    made = [Path(prep.done).parent for prep in row.prepare]  # a prepare command writes its pairs (a round's)
    for pairs in dict.fromkeys(str(cfg.data.pairs_path) for cfg in configs if cfg.data.name == "pairs"):
        if any(Path(pairs).is_relative_to(directory) for directory in made):
            continue
        build = [
            "scripts/build_pairs.py",
            "--python-lib",
            "--out",
            str(Path(pairs).parent),
            "--mbpp",
            args.mbpp,
        ]
        build += ["--tokenizer", args.tokenizer]
        run_unless_done(build, Path(pairs), commands)


def evaluate(
    row: Row,
    model: list[str],
    out: Path,
    kind: str,
    args: argparse.Namespace,
    commands: list[str],
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """Run scripts/evaluate.py on `model` (--ckpt or --model and its path; it resumes from out/samples.jsonl):
    `kind` greedy (MBPP test), sampled (MBPP test, n=20), humaneval (greedy, every problem) or mbppplus (greedy,
    the tasks outside MBPP train), with the row's eval_args and `extra`; the summary."""
    if kind == "sampled":
        limit = args.sampled_limit or row.sampled_limit
        sampling = [*SAMPLING, "--batch-size", str(row.sampled_batch)] + (
            ["--limit", str(limit)] if limit else []
        )
    else:
        sampling = [*GREEDY, "--batch-size", str(row.greedy_batch)]
        sampling += ["--limit", str(args.greedy_limit)] if args.greedy_limit and kind == "greedy" else []
    data = {
        "humaneval": ["--dataset", "humaneval"],
        "mbppplus": ["--dataset", "mbppplus", "--data-file", args.mbppplus, "--exclude-train-overlap"],
    }.get(kind, ["--mbpp", args.mbpp, "--split", "test"])
    command = [
        sys.executable,
        "scripts/evaluate.py",
        *model,
        *data,
        "--max-new-tokens",
        MAX_NEW_TOKENS,
        *sampling,
        *row.eval_args,
        *extra,
        "--no-progress",
        "--output",
        str(out.relative_to(REPO)),
    ]
    commands.append(shell(command))
    execute(command)
    summary = read_json(out / "summary.json")
    record = {key: summary[key] for key in ("num_problems", "pass_at_k", "syntax_valid_rate")}
    mbpp = args.mbpp if kind in ("greedy", "sampled") else None
    record["empty_completion_rate"] = empty_rate(out / "samples.jsonl", mbpp, summary["num_problems"])
    if kind == "mbppplus":
        record["base_pass_at_k"] = summary["base_pass_at_k"]
        record["test_split"] = test_split_passes(out / "samples.jsonl")
    # every sample's, resumed ones included; None when resumed lines predate the per-sample record (a summary
    # without generation_seconds_all: its own seconds count only when it resumed nothing)
    record["generation_seconds"] = summary.get(
        "generation_seconds_all",
        summary.get("generation_seconds") if summary.get("samples_resumed", 0) == 0 else None,
    )
    return record


def test_time_evaluation(
    row: Row,
    model: list[str],
    evaluated: Path,
    outputs: Path,
    override: str,
    args: argparse.Namespace,
    commands: list[str],
) -> dict[str, Any]:
    """The row's model evaluated with `--arch-override override` (test-time cycles): greedy MBPP and, with
    `mbppplus`, MBPP+ under outputs/<slug>/, and the layer evaluations per token at that override."""
    extra = ["--arch-override", override]
    out = outputs / report.override_slug(override)
    greedy = evaluate(row, model, out / "greedy", "greedy", args, commands, extra)
    plus = evaluate(row, model, out / "mbppplus", "mbppplus", args, commands, extra) if row.mbppplus else None
    return {
        "override": override,
        "layer_evals_per_token": layer_evals(evaluated, arch_overrides([*row.eval_args, *extra])),
        "greedy": greedy,
        "mbppplus": plus,
    }


def keep_samples(evaluation: Path, stem: Path) -> None:
    """An evaluation's completions, compressed, as <stem>.samples.jsonl.gz (so anyone can re-score them)."""
    if (evaluation / "samples.jsonl").is_file():
        data = (evaluation / "samples.jsonl").read_bytes()
        stem.with_name(f"{stem.name}.samples.jsonl.gz").write_bytes(gzip.compress(data, mtime=0))


def empty_rate(samples: Path, mbpp: str | None, num_problems: int) -> float:
    """The share of completions that are empty or whitespace only, over the first `num_problems` MBPP test
    problems (every completion of the file when `mbpp` is None: HumanEval).

    Such a completion leaves a program of the test asserts alone, which parses: it counts as syntax-valid.
    """
    rows = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines() if line.strip()]
    if mbpp is not None:
        task_ids = {p.task_id for p in mbpp_problems(load_mbpp(REPO / mbpp), "test")[:num_problems]}
        rows = [r for r in rows if r["task_id"] in task_ids]
    return sum(not r["completion"].strip() for r in rows) / len(rows)


def test_split_passes(samples: Path) -> dict[str, float | int]:
    """Greedy MBPP+ on the tasks of MBPP's test split (task ids 11-510) alone: problems, base and plus pass@1.
    `samples` is an evaluate.py samples.jsonl, or a record's compressed samples.jsonl.gz."""
    first, last = SPLITS["test"]
    data = samples.read_bytes()
    text = (gzip.decompress(data) if samples.suffix == ".gz" else data).decode("utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = [r for r in rows if r["sample_index"] == 0 and first <= int(r["task_id"]) <= last]
    if not rows:
        return {"num_problems": 0, "base_pass_at_1": 0.0, "pass_at_1": 0.0}
    return {
        "num_problems": len(rows),
        "base_pass_at_1": sum(base_passed(r) for r in rows) / len(rows),
        "pass_at_1": sum(bool(r["passed"]) for r in rows) / len(rows),
    }


def execution_totals(path: Path) -> dict[str, Any]:
    """What a rejection-sampling manifest (scripts/rejection_sample.py's <out>/manifest.json) says the rounds
    cost: rounds, samples, pairs, sampled and prompt tokens, and the wall times of sampling and fine-tuning."""
    manifest = read_json(path)
    totals = manifest["totals"]
    keys = ("samples", "pairs", "sampled_tokens", "prompt_tokens", "training_tokens", "wall_s")
    return {
        "manifest": str(path.relative_to(REPO)),
        "rounds": len(manifest["rounds"]),
        **{k: totals[k] for k in keys},
    }


def count_parameters(path: Path, outside: bool) -> int:
    """The parameters of a run's step directory (any family) or of an outside transformers directory."""
    if outside:
        from hrm_codegen.inference import load_pretrained

        model = load_pretrained(path).model
    else:
        model, _ = load_model_for_inference(path)
    return sum(p.numel() for p in model.parameters())


def evaluated_stages(rows: Mapping[str, Row], name: str) -> list[dict[str, Any]]:
    """The runs of the row that row `name` evaluates, all finished (or a one-line error naming the row to run)."""
    parent = rows[name].evaluates
    if not runs.finished(final_run_dir(rows[parent])):
        sys.exit(
            f"error: {name} evaluates the final step of row {parent}, which has not finished: run "
            f"`python scripts/reproduce.py {parent}` first"
        )
    return [trained(REPO / "checkpoints" / stage.run_name) for stage in rows[parent].stages]


def reproduce(rows: Mapping[str, Row], name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one row and write docs/results/<row>/ (row.json, metrics, evaluation summaries)."""
    row = rows[name]
    commands: list[str] = []
    for prep in row.prepare:
        run_unless_done(list(prep.command), Path(prep.done), commands)
    configs = [stage_config(stage) for stage in row.stages]
    build_data(name, row, configs, args, commands)
    stages = [
        train_stage(stage, train_command(rows, row, stage, cfg, args), commands)
        for stage, cfg in zip(row.stages, configs, strict=True)
    ]
    if row.evaluates:
        stages = evaluated_stages(rows, name)
    if row.ckpt:
        if runs.latest_step_dir(REPO / row.ckpt) is None:
            sys.exit(f"error: row {name}: its prepare commands wrote no checkpoint in {row.ckpt}")
        stages = [trained(REPO / row.ckpt)]
    evaluated = REPO / row.model if row.model else stages[-1]["step_dir"]
    model = ["--model" if row.model else "--ckpt", str(evaluated.relative_to(REPO))]
    outputs = REPO / "outputs" / "eval" / name
    test_time = [
        test_time_evaluation(row, model, evaluated, outputs, override, args, commands)
        for override in row.test_overrides
    ]
    plain = not row.test_overrides  # a test-time row is evaluated at its overrides alone
    greedy = evaluate(row, model, outputs / "greedy", "greedy", args, commands) if plain else None
    sampled = (
        evaluate(row, model, outputs / "sampled", "sampled", args, commands)
        if plain and not args.greedy_only
        else None
    )
    humaneval = (
        evaluate(row, model, outputs / "humaneval", "humaneval", args, commands)
        if plain and row.humaneval
        else None
    )
    mbppplus = (
        evaluate(row, model, outputs / "mbppplus", "mbppplus", args, commands)
        if plain and row.mbppplus
        else None
    )

    walls = [s["train_wall_s"] for s in stages]
    record = {
        "row": name,
        "label": row.label,
        "parameters": count_parameters(evaluated, bool(row.model)),
        "stages": [
            {k: str(v.relative_to(REPO)) if isinstance(v, Path) else v for k, v in s.items()} for s in stages
        ],
        "training_tokens": sum(s["tokens"] for s in stages),
        "train_wall_s": None if not walls or None in walls else sum(walls),
        "val_loss": stages[-1]["val_loss"]
        if row.stages or row.ckpt
        else None,  # a test-time row's differs from its run's
        "layer_evals_per_token": layer_evals(evaluated, arch_overrides(row.eval_args)),
        "greedy": greedy,
        "sampled": sampled,
        "humaneval": humaneval,
        **({"mbppplus": mbppplus} if mbppplus else {}),
        **({"execution": execution_totals(REPO / row.execution_manifest)} if row.execution_manifest else {}),
        **({"model": row.model} if row.model else {}),
        **({"evaluates": row.evaluates} if row.evaluates else {}),
        **({"ckpt": row.ckpt} if row.ckpt else {}),
        **({"test_time": test_time} if test_time else {}),
        "group": row.group,
        "hardware": args.hardware or default_hardware(),
        "date": datetime.date.today().isoformat(),
        "commands": commands,
        "reproduce": shell([sys.executable, "scripts/reproduce.py", name, *args.row_flags]),
    }
    target = RESULTS / name
    target.mkdir(parents=True, exist_ok=True)
    for stage in row.stages[:-1]:
        shutil.copyfile(
            REPO / "checkpoints" / stage.run_name / "metrics.jsonl",
            target / f"{stage.run_name}.metrics.jsonl",
        )
    if row.stages or row.ckpt:
        shutil.copyfile(final_run_dir(row) / "metrics.jsonl", target / "metrics.jsonl")
    for kind, evaluation in (
        ("greedy", greedy),
        ("sampled", sampled),
        ("humaneval", humaneval),
        ("mbppplus", mbppplus),
    ):
        if evaluation is not None:
            shutil.copyfile(outputs / kind / "summary.json", target / f"{kind}.json")
        elif (target / f"{kind}.json").is_file():
            (target / f"{kind}.json").unlink()  # from an earlier run of the row: not this record's
    if row.group == "execution":  # the completions, so anyone can re-score them (evaluate.py --samples)
        for kind in ("greedy", "mbppplus"):
            keep_samples(outputs / kind, target / kind)
    for entry in test_time:  # summaries and completions per override: <slug>.greedy.json, ...
        slug = report.override_slug(entry["override"])
        for kind in ("greedy", "mbppplus"):
            if entry[kind] is not None:
                shutil.copyfile(outputs / slug / kind / "summary.json", target / f"{slug}.{kind}.json")
                keep_samples(outputs / slug / kind, target / f"{slug}.{kind}")
    (target / "row.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {target / 'row.json'}")
    return record


def default_hardware() -> str:
    """The hardware the rows run on, for the table: the GPU's name, or the CPU development machine."""
    import torch

    if torch.cuda.is_available():
        return f"1x {torch.cuda.get_device_name()}"
    return "CPU, 2 cores (shared dev machine)"


def row_train_flops(rows: Mapping[str, Row], record: dict[str, Any]) -> float:
    """Analytic training FLOPs of a reproduced row: per stage, the family's FLOPs per token x its tokens."""
    stages = zip(rows[record["row"]].stages, record["stages"], strict=True)
    return sum(train_flops_per_token(stage_config(stage)) * done["tokens"] for stage, done in stages)


def write_table(rows: Mapping[str, Row]) -> None:
    """docs/results/results.md and one plot per group (docs/results/mbpp_<group>.png) from the rows' records.

    Composes no config, but for the compare group's training TFLOPs (the stages' models)."""
    records = [read_json(RESULTS / n / "row.json") for n in rows if (RESULTS / n / "row.json").is_file()]
    if not records:
        sys.exit("error: no row has been reproduced yet (docs/results/<row>/row.json)")
    text = report.markdown(records, rows, RESULTS, lambda record: row_train_flops(rows, record))
    for group, members in report.by_group(records, rows).items():
        command = report.plot_command(group, members, RESULTS, REPO)
        if command is not None:
            execute(command)
    (RESULTS / "results.md").write_text(text, encoding="utf-8")
    print(f"wrote {RESULTS / 'results.md'}")
