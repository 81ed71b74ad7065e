"""Reproduce rows of the README's results table: train, evaluate on the MBPP test split, record the numbers.

    python scripts/reproduce.py mbpp_cpu_hrm mbpp_cpu_llama_params       # these rows
    python scripts/reproduce.py all --sampled-limit 100                  # every row
    python scripts/reproduce.py table                                    # docs/results/results.md + mbpp_cpu.png

A row runs its commands in order (printed, and recorded in docs/results/<row>/row.json): building the corpus
when it needs one, one training run per stage (scripts/train_codegen.py), then scripts/evaluate.py twice:
pass@1 with greedy decoding (n=1) and pass@1/pass@10 from n=20 samples at temperature 0.8, top-p 0.95. A step
whose output is complete (a corpus manifest, a run at its last step, an evaluation summary) is skipped, so an
interrupted row continues where it stopped. The record keeps the training wall time (measured around each
training command and saved as <run dir>/wall_time.json), the parameters, the tokens processed (non-padding
input tokens, prompts included), the final validation loss, pass@k and the syntax-valid rate; `table` turns the
records into a markdown table and a plot of the loss curves and pass@k bars.

The retrofit rows (group `retrofit`) also run preparing commands first (fetch the source model, retrofit it into
the HRM; skipped when their output exists), evaluate an outside model zero-shot (`--model`) or another row's
final step with test-time arch overrides, and add greedy pass@1 on all 164 HumanEval problems.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from hrm_codegen import runs
from hrm_codegen.datasets.mbpp import load_mbpp, mbpp_problems
from hrm_codegen.inference import load_model_for_inference

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
CPU_CORPUS = ("data/corpus/pylib", 2_000_000)  # directory, --max-tokens of scripts/build_corpus.py
GPU_CORPUS = ("data/corpus/pylib25m", 25_000_000)
PAIRS_DIR = "data/pairs/pylib"  # scripts/build_pairs.py --python-lib --out PAIRS_DIR
SMOLLM2 = "sources/smollm2-135m-instruct"  # scripts/fetch_pretrained.py smollm2-135m-instruct --out SMOLLM2


@dataclass(frozen=True)
class Prep:
    """A command a row runs before training (`python` and its arguments), skipped when `done` exists."""

    command: tuple[str, ...]
    done: str  # a path relative to the repository


@dataclass(frozen=True)
class Stage:
    """One training run: its run name, the overrides that select the recipe and the model, whether on the corpus."""

    run_name: str
    overrides: tuple[str, ...]
    corpus: bool = False
    pairs: bool = False  # trains on the mined pairs of PAIRS_DIR (scripts/build_pairs.py)
    layers_matched_to: str = ""  # a row: train.max_steps matches its layer evaluations (`matched_max_steps`)


@dataclass(frozen=True)
class Row:
    """A row of the results table: a label and the training stages (the last one is evaluated, any family).

    `group` names the table the row belongs to (a key of GROUPS: one table and one plot each), `corpus` the corpus
    directory and token count the corpus stages train on, and the batch sizes are the evaluation's sequences
    per generate call (greedy, sampled). A row without stages evaluates an outside transformers directory
    (`model`, zero-shot) or the final step of another row (`evaluates`); `eval_args` go to every evaluate.py
    call, `humaneval` adds greedy pass@1 on all of HumanEval, and `sampled_limit` is the sampled evaluation's
    problem count when --sampled-limit is not given.
    """

    label: str
    stages: tuple[Stage, ...] = ()
    group: str = "cpu"
    corpus: tuple[str, int] = CPU_CORPUS
    batch_sizes: tuple[int, int] = (32, 40)
    prepare: tuple[Prep, ...] = ()
    model: str = ""
    evaluates: str = ""
    eval_args: tuple[str, ...] = ()
    humaneval: bool = False
    sampled_limit: int | None = None


def gpu_row(label: str, name: str, arch: tuple[str, ...]) -> Row:
    """A row of the GPU recipe: gpu_pretrain on the 25M-token corpus, then gpu_pretrain_finetune on MBPP."""
    return Row(
        label,
        (
            Stage(f"gpu_pretrain_{name}", ("experiment=gpu_pretrain", *arch), corpus=True),
            Stage(
                f"gpu_finetune_{name}",
                (
                    "experiment=gpu_pretrain_finetune",
                    *arch,
                    f"train.init_from=checkpoints/gpu_pretrain_{name}",
                ),
            ),
        ),
        group="gpu",
        corpus=GPU_CORPUS,
        batch_sizes=(64, 200),
    )


ROWS = {
    "mbpp_cpu_hrm": Row(
        "HRM (arch=tiny)", (Stage("mbpp_cpu_hrm", ("experiment=mbpp_cpu_compare", "arch=tiny")),)
    ),
    "mbpp_cpu_llama_params": Row(
        "Llama, parameter-matched (2 layers)",
        (Stage("mbpp_cpu_llama_params", ("experiment=mbpp_cpu_compare", "arch=transformer_tiny_params")),),
    ),
    "mbpp_cpu_llama_compute": Row(
        "Llama, compute-matched (6 layers)",
        (Stage("mbpp_cpu_llama_compute", ("experiment=mbpp_cpu_compare", "arch=transformer_tiny_compute")),),
    ),
    "pretrain_then_mbpp_hrm": Row(
        "HRM (arch=tiny), corpus pre-training then MBPP",
        (
            Stage("pretrain_then_mbpp", ("experiment=pretrain_then_mbpp",), corpus=True),
            Stage("pretrain_then_mbpp_finetune", ("experiment=pretrain_then_mbpp_finetune",)),
        ),
    ),
    "pretrain_then_mbpp_llama_params": Row(
        "Llama, parameter-matched (2 layers), corpus pre-training then MBPP",
        (
            Stage(
                "pretrain_then_mbpp_llama_params",
                ("experiment=pretrain_then_mbpp", "arch=transformer_tiny_params"),
                corpus=True,
            ),
            Stage(
                "pretrain_then_mbpp_finetune_llama_params",
                (
                    "experiment=pretrain_then_mbpp_finetune",
                    "arch=transformer_tiny_params",
                    "train.init_from=checkpoints/pretrain_then_mbpp_llama_params",
                ),
            ),
        ),
    ),
    "gpu_pretrain_then_mbpp_hrm": gpu_row("HRM (hrm_v1), corpus pre-training then MBPP", "hrm", ()),
    "gpu_pretrain_then_mbpp_llama_params": gpu_row(
        "Llama, parameter-matched (8 layers), corpus pre-training then MBPP",
        "llama_params",
        ("arch=transformer_params",),
    ),
    "gpu_pretrain_then_mbpp_llama_compute": gpu_row(
        "Llama, compute-matched (24 layers), corpus pre-training then MBPP",
        "llama_compute",
        ("arch=transformer_compute",),
    ),
}


def pairs_row(label: str, name: str, arch: tuple[str, ...] = (), equal_flops: bool = False) -> Row:
    """Corpus, mined pairs, then MBPP: the pretrain_then_mbpp budget with its corpus steps split in two halves
    (`equal_flops`: the budget of `pretrain_row(..., equal_flops=True)` for the same model)."""
    first, second = f"pretrain_then_pairs_then_mbpp{name}", f"pretrain_then_pairs_then_mbpp_pairs{name}"
    half, tune = (), ()
    if equal_flops:
        half = (f"train.max_steps={flop_matched_steps(arch, 'pretrain_then_mbpp') // 2}",)
        tune = (f"train.max_steps={flop_matched_steps(arch, 'pretrain_then_mbpp_finetune')}",)
    return Row(
        label,
        (
            Stage(first, ("experiment=pretrain_then_pairs_then_mbpp", *arch, *half), corpus=True),
            Stage(
                second,
                (
                    "experiment=pretrain_then_pairs_then_mbpp_pairs",
                    *arch,
                    *half,
                    f"train.init_from=checkpoints/{first}",
                ),
                pairs=True,
            ),
            Stage(
                f"pretrain_then_pairs_then_mbpp_finetune{name}",
                (
                    "experiment=pretrain_then_pairs_then_mbpp_finetune",
                    *arch,
                    *tune,
                    f"train.init_from=checkpoints/{second}",
                ),
            ),
        ),
    )


def with_seed(row: Row, seed: int) -> Row:
    """The same row with another seed (init and data order): every stage's run name gets a `_s<seed>` suffix."""
    renamed = {stage.run_name: f"{stage.run_name}_s{seed}" for stage in row.stages}

    def retarget(override: str) -> str:
        key, _, value = override.partition("=")
        target = value.removeprefix("checkpoints/")
        return (
            f"{key}=checkpoints/{renamed[target]}"
            if key == "train.init_from" and target in renamed
            else override
        )

    stages = []
    for i, stage in enumerate(row.stages):
        overrides = tuple(retarget(o) for o in stage.overrides) + (f"seed={seed}",)
        if i and not any(o.startswith("train.init_from=") for o in overrides):  # the recipe's own default
            overrides += (f"train.init_from=checkpoints/{renamed[row.stages[i - 1].run_name]}",)
        stages.append(dataclasses.replace(stage, run_name=renamed[stage.run_name], overrides=overrides))
    return dataclasses.replace(row, label=f"{row.label}, seed {seed}", stages=tuple(stages))


def flop_matched_steps(
    arch: tuple[str, ...], recipe: str, reference: tuple[str, ...] = ("arch=tiny",)
) -> int:
    """The recipe's max_steps scaled so that `arch` spends the analytic training FLOPs of `reference` (same batch
    and block sizes, so the same data order, cut where the budget ends)."""
    from hrm_codegen.families import get_family
    from hrm_codegen.inference import model_config
    from hrm_codegen.train_config import compose_config

    def flops(overrides: tuple[str, ...]) -> tuple[float, int]:
        cfg = compose_config([f"experiment={recipe}", *overrides])
        per_token = get_family(cfg.arch.name).flops_per_token(model_config(cfg, 50257), cfg.data.seq_len)[
            "train"
        ]
        return per_token, cfg.train.max_steps

    ref, steps = flops(reference)
    return round(steps * ref / flops(arch)[0])


def pretrain_row(label: str, name: str, arch: tuple[str, ...], equal_flops: bool = False) -> Row:
    """Corpus pre-training then MBPP (the pretrain_then_mbpp recipe) for another model; `equal_flops` scales
    each stage's steps to the analytic training FLOPs of the tiny HRM's."""
    first = f"pretrain_then_mbpp_{name}"
    steps = [
        (f"train.max_steps={flop_matched_steps(arch, recipe)}",) if equal_flops else ()
        for recipe in ("pretrain_then_mbpp", "pretrain_then_mbpp_finetune")
    ]
    return Row(
        label,
        (
            Stage(first, ("experiment=pretrain_then_mbpp", *arch, *steps[0]), corpus=True),
            Stage(
                f"pretrain_then_mbpp_finetune_{name}",
                (
                    "experiment=pretrain_then_mbpp_finetune",
                    *arch,
                    *steps[1],
                    f"train.init_from=checkpoints/{first}",
                ),
            ),
        ),
    )


HRM_TEXT_RECIPE = (
    "arch=tiny",
    "arch.prefix_lm=true",
    "arch.bp_steps=5",
    "train.bp_warmup_ratio=0.2",
    "arch.norm_type=pre",
)
ROWS["pretrain_then_mbpp_hrm_recipe"] = pretrain_row(
    "HRM (arch=tiny) + HRM-Text recipe (PrefixLM, bp_steps 5 warmed up over 20%, pre-norm), corpus then MBPP",
    "hrm_recipe",
    HRM_TEXT_RECIPE,
    equal_flops=True,
)
for _change, _overrides, _what in (
    ("prefix_lm", ("arch=tiny", "arch.prefix_lm=true"), "PrefixLM only"),
    (
        "bp5",
        ("arch=tiny", "arch.bp_steps=5", "train.bp_warmup_ratio=0.2"),
        "bp_steps 5 (warmed up over 20%) only",
    ),
    ("prenorm", ("arch=tiny", "arch.norm_type=pre"), "pre-norm only"),
):
    ROWS[f"pretrain_then_mbpp_hrm_{_change}"] = dataclasses.replace(
        pretrain_row(f"HRM (arch=tiny) + {_what}, corpus then MBPP", f"hrm_{_change}", _overrides, True),
        group="compare",
    )
ROWS["pretrain_then_mbpp_hrm_text"] = pretrain_row(
    "HRM-Text (arch=hrm_text_tiny, transformers), corpus then MBPP", "hrm_text", ("arch=hrm_text_tiny",), True
)
ROWS["pretrain_then_mbpp_llama_compute"] = pretrain_row(
    "Llama, compute-matched (6 layers), corpus then MBPP",
    "llama_compute",
    ("arch=transformer_tiny_compute",),
    equal_flops=True,
)
ROWS["pretrain_then_pairs_then_mbpp_hrm"] = pairs_row("HRM (arch=tiny), corpus, pairs, then MBPP", "")
ROWS["pretrain_then_pairs_then_mbpp_llama_compute"] = pairs_row(
    "Llama, compute-matched (6 layers), corpus, pairs, then MBPP",
    "_llama_compute",
    ("arch=transformer_tiny_compute",),
    equal_flops=True,
)

SEEDED = (  # the comparisons of the README run two seeds each
    "pretrain_then_mbpp_hrm",
    "pretrain_then_mbpp_hrm_recipe",
    "pretrain_then_mbpp_hrm_text",
    "pretrain_then_mbpp_llama_compute",
    "pretrain_then_pairs_then_mbpp_hrm",
    "pretrain_then_pairs_then_mbpp_llama_compute",
)
for _name in SEEDED:
    ROWS[_name] = dataclasses.replace(ROWS[_name], group="compare")
    ROWS[f"{_name}_s1"] = with_seed(ROWS[_name], 1)


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
        for step in range(steps):  # the last entry started by `step` (the first one before any), as cycles_at
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


def layer_evals(path: Path, overrides: Mapping[str, Any] | None = None) -> int | None:
    """Decoder-layer evaluations per token of a model: H_cycles x (L_cycles x L_layers + H_layers) of an HRM
    step's arch with `overrides` applied, else `num_hidden_layers` of a transformers directory (an outside
    model, or a step's hf/ export); None when neither says."""
    if (path / runs.CONFIG_FILE).is_file():
        arch = {**OmegaConf.to_container(OmegaConf.load(path / runs.CONFIG_FILE).arch), **(overrides or {})}
        if arch.get("name") == "hrm":
            return arch["H_cycles"] * (arch["L_cycles"] * arch["L_layers"] + arch["H_layers"])
    for config in (path / "config.json", path / "hf" / "config.json"):
        if config.is_file():
            return read_json(config).get("num_hidden_layers")
    return None


def matched_max_steps(stage: Stage) -> int:
    """The stage's train.max_steps, computed when it runs: `layer_matched_steps` against the finished final run
    of row `stage.layers_matched_to`, with the stage's train.cycles_schedule (else its init arch's cycles) and
    the L and H layers of its init checkpoint's arch (train.init_from, with train.arch_overrides)."""
    from hrm_codegen.train_config import compose_config

    reference = ROWS[stage.layers_matched_to].stages[-1].run_name
    ref_dir = REPO / "checkpoints" / reference
    if not runs.finished(ref_dir):
        sys.exit(
            f"error: {stage.run_name} trains for the layer evaluations of run {reference}, which has not "
            f"finished: run `python scripts/reproduce.py {stage.layers_matched_to}` first"
        )
    ref_step = runs.latest_step_dir(ref_dir)
    assert ref_step is not None
    state, ref_layers = runs.read_train_state(ref_step), layer_evals(ref_step)
    if ref_layers is None:
        sys.exit(f"error: {ref_step} does not say its layers per token (no hf/config.json, not an HRM)")
    cfg = compose_config([*stage.overrides, f"run_name={stage.run_name}"])
    init = runs.resolve_checkpoint(REPO / str(cfg.train.init_from))
    arch = {
        **OmegaConf.to_container(OmegaConf.load(init / runs.CONFIG_FILE).arch),
        **OmegaConf.to_container(cfg.train.arch_overrides),
    }
    schedule = OmegaConf.to_container(cfg.train.cycles_schedule) or [
        [0.0, arch["H_cycles"], arch["L_cycles"]]
    ]
    steps = state.get("total_steps") or state["step"]
    return layer_matched_steps(steps, ref_layers, schedule, arch["L_layers"], arch["H_layers"])


FETCH_SMOLLM2 = Prep(
    ("scripts/fetch_pretrained.py", "smollm2-135m-instruct", "--out", SMOLLM2), f"{SMOLLM2}/source.json"
)


def retrofit_prep(name: str, *flags: str) -> Prep:
    """Retrofit SmolLM2 into checkpoints/<name> with L = layers 0-14 and H = layers 15-29 (and `flags`)."""
    return Prep(
        ("scripts/retrofit.py", "--source", SMOLLM2, "--out", f"checkpoints/{name}")
        + ("--l-layers", "0:15", "--h-layers", "15:30", *flags),
        f"checkpoints/{name}/step_0/meta.json",
    )


def retrofit_row(label: str, stages: tuple[Stage, ...] = (), **fields: Any) -> Row:
    """A row of the retrofit group: batch sizes 8 (greedy) and 20 (sampled), sampled pass@k on the first 100
    problems by default, HumanEval unless told otherwise, SmolLM2 fetched first."""
    fields = {"humaneval": True, "prepare": (FETCH_SMOLLM2,), **fields}
    return Row(label, stages, group="retrofit", batch_sizes=(8, 20), sampled_limit=100, **fields)


L15X2 = "Retrofitted HRM, L = layers 0-14 x 2 gated cycles, H = 15-29"
ROWS["retrofit_source_native"] = retrofit_row(
    "SmolLM2-135M-Instruct, zero-shot, native prompts", model=SMOLLM2, eval_args=("--prompt-format", "native")
)
ROWS["retrofit_source_chat"] = retrofit_row(
    "SmolLM2-135M-Instruct, zero-shot, chat template", model=SMOLLM2, eval_args=("--prompt-format", "chat")
)
ROWS["retrofit_posttrain"] = retrofit_row(
    "SmolLM2 post-trained on MBPP, 30 layers", (Stage("retrofit_posttrain", ("experiment=posttrain_mbpp",)),)
)
ROWS["retrofit_posttrain_s1"] = with_seed(ROWS["retrofit_posttrain"], 1)
ROWS["retrofit_identity"] = retrofit_row(
    "Retrofitted HRM at identity (L = layers 0-14, H = 15-29, 1x1), fine-tuned",
    (
        Stage(
            "retrofit_identity_ft",
            ("experiment=retrofit_mbpp", "train.init_from=checkpoints/retro_identity"),
        ),
    ),
    prepare=(FETCH_SMOLLM2, retrofit_prep("retro_identity")),
)
ROWS["retrofit_L15x2"] = retrofit_row(
    f"{L15X2}; curriculum 1 -> 2 L cycles at 25%; equal training FLOPs",
    (
        Stage(
            "retrofit_L15x2_ft",
            (
                "experiment=retrofit_mbpp",
                "train.init_from=checkpoints/retro_L15x2",
                "train.cycles_schedule=[[0.0,1,1],[0.25,1,2]]",
                "+train.arch_overrides={recurrence_gate_lr_scale: 300}",
            ),
            layers_matched_to="retrofit_posttrain",
        ),
    ),
    prepare=(FETCH_SMOLLM2, retrofit_prep("retro_L15x2", "--L-cycles", "2")),
)
ROWS["retrofit_L15x2_s1"] = with_seed(ROWS["retrofit_L15x2"], 1)
for _cycles, _humaneval in ((3, True), (1, False)):
    ROWS[f"retrofit_L15x2_test_L{_cycles}"] = retrofit_row(
        f"{L15X2}, evaluated with {_cycles} L cycle{'s' if _cycles > 1 else ''} at test time",
        evaluates="retrofit_L15x2",
        eval_args=("--arch-override", f"L_cycles={_cycles}"),
        humaneval=_humaneval,
        prepare=(),
    )
RETROFIT_SEEDED = ("retrofit_posttrain", "retrofit_L15x2")


GROUPS = {  # table group: (title, plot file, plot title)
    "compare": (
        "Equal-FLOP comparison at CPU scale: which part of HRM helps code, and do mined pairs help (two seeds)",
        "mbpp_compare.png",
        "Corpus pre-training then MBPP at equal analytic training FLOPs (2-core CPU, two seeds)",
    ),
    "cpu": (
        "MBPP results at CPU scale",
        "mbpp_cpu.png",
        "MBPP on a 2-core CPU: fine-tuning loss; MBPP test pass@k (n=20, T=0.8)",
    ),
    "gpu": (
        "MBPP results on one GPU",
        "mbpp_gpu.png",
        "MBPP on one GPU after corpus pre-training: fine-tuning loss; MBPP test pass@k (n=20, T=0.8)",
    ),
    "retrofit": (
        "Retrofitting SmolLM2-135M-Instruct into the HRM vs post-training it (CPU)",
        "mbpp_retrofit.png",
        "SmolLM2-135M-Instruct on MBPP: retrofitted HRM vs post-training (2-core CPU; pass@k n=20, T=0.8)",
    ),
}


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


def corpus_dir(row: Row, args: argparse.Namespace) -> str:
    """The corpus directory of the row's corpus stages (--corpus overrides the row's own)."""
    return args.corpus or row.corpus[0]


def train_stage(stage: Stage, row: Row, args: argparse.Namespace, commands: list[str]) -> dict[str, Any]:
    """Train one stage unless it is finished; its run directory, wall time, tokens and final validation loss."""
    run_dir = REPO / "checkpoints" / stage.run_name
    matched = [f"train.max_steps={matched_max_steps(stage)}"] if stage.layers_matched_to else []
    command = [
        sys.executable,
        "scripts/train_codegen.py",
        *stage.overrides,
        *matched,
        f"run_name={stage.run_name}",
        f"data.path={args.mbpp}",
        f"tokenizer.name_or_path={args.tokenizer}",
    ]
    if stage.corpus:
        command.append(f"data.corpus_dir={corpus_dir(row, args)}")
    if stage.pairs:
        command.append(f"data.pairs_path={PAIRS_DIR}/pairs.jsonl")
    commands.append(shell(command))
    if not runs.finished(run_dir):
        if runs.latest_step_dir(run_dir) is not None:
            command.append("resume=auto")
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


def evaluate(
    row: Row, model: list[str], out: Path, kind: str, args: argparse.Namespace, commands: list[str]
) -> dict[str, Any]:
    """Run scripts/evaluate.py on `model` (--ckpt or --model and its path; it resumes from out/samples.jsonl):
    `kind` greedy (MBPP test), sampled (MBPP test, n=20) or humaneval (greedy, every problem); the summary."""
    greedy_batch, sampled_batch = row.batch_sizes
    if kind == "sampled":
        limit = args.sampled_limit or row.sampled_limit
        sampling = ["--num-samples", "20", "--temperature", "0.8", "--top-p", "0.95", "--k", "1,10"]
        sampling += ["--batch-size", str(sampled_batch)] + (["--limit", str(limit)] if limit else [])
    else:
        sampling = ["--num-samples", "1", "--temperature", "0", "--k", "1", "--batch-size", str(greedy_batch)]
        sampling += ["--limit", str(args.greedy_limit)] if args.greedy_limit and kind == "greedy" else []
    data = ["--dataset", "humaneval"] if kind == "humaneval" else ["--mbpp", args.mbpp, "--split", "test"]
    command = [
        sys.executable,
        "scripts/evaluate.py",
        *model,
        *data,
        "--max-new-tokens",
        "128",
        *sampling,
        *row.eval_args,
        "--no-progress",
        "--output",
        str(out.relative_to(REPO)),
    ]
    commands.append(shell(command))
    execute(command)
    summary = read_json(out / "summary.json")
    record = {key: summary[key] for key in ("num_problems", "pass_at_k", "syntax_valid_rate")}
    mbpp = None if kind == "humaneval" else args.mbpp
    record["empty_completion_rate"] = empty_rate(out / "samples.jsonl", mbpp, summary["num_problems"])
    record["generation_seconds"] = summary.get("generation_seconds")
    return record


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


def count_parameters(path: Path, outside: bool) -> int:
    """The parameters of a run's step directory (any family) or of an outside transformers directory."""
    if outside:
        from hrm_codegen.inference import load_pretrained

        model = load_pretrained(path).model
    else:
        model, _ = load_model_for_inference(path)
    return sum(p.numel() for p in model.parameters())


def evaluated_stages(name: str, row: Row) -> list[dict[str, Any]]:
    """The runs of the row that `row` evaluates, all finished (or a one-line error naming the row to run)."""
    parent = ROWS[row.evaluates]
    if not runs.finished(REPO / "checkpoints" / parent.stages[-1].run_name):
        sys.exit(
            f"error: {name} evaluates the final step of row {row.evaluates}, which has not finished: run "
            f"`python scripts/reproduce.py {row.evaluates}` first"
        )
    return [trained(REPO / "checkpoints" / stage.run_name) for stage in parent.stages]


def reproduce(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one row and write docs/results/<row>/ (row.json, metrics, evaluation summaries)."""
    row = ROWS[name]
    commands: list[str] = []
    for prep in row.prepare:
        command = [sys.executable, *prep.command]
        commands.append(shell(command))
        if not (REPO / prep.done).exists():
            execute(command)
    if any(stage.corpus for stage in row.stages):
        build = [
            sys.executable,
            "scripts/build_corpus.py",
            "--out",
            corpus_dir(row, args),
            "--python-lib",
            "--max-tokens",
            str(row.corpus[1]),
            "--tokenizer",
            args.tokenizer,
            "--mbpp",
            args.mbpp,
        ]
        commands.append(shell(build))
        if not (REPO / corpus_dir(row, args) / "manifest.json").is_file():
            execute(build)
    if any(stage.pairs for stage in row.stages):
        build = [
            sys.executable,
            "scripts/build_pairs.py",
            "--python-lib",
            "--out",
            PAIRS_DIR,
            "--mbpp",
            args.mbpp,
        ]
        build += ["--tokenizer", args.tokenizer]
        commands.append(shell(build))
        if not (REPO / PAIRS_DIR / "pairs.jsonl").is_file():
            execute(build)
    stages = [train_stage(stage, row, args, commands) for stage in row.stages]
    if row.evaluates:
        stages = evaluated_stages(name, row)
    evaluated = REPO / row.model if row.model else stages[-1]["step_dir"]
    model = ["--model" if row.model else "--ckpt", str(evaluated.relative_to(REPO))]
    outputs = REPO / "outputs" / "eval" / name
    greedy = evaluate(row, model, outputs / "greedy", "greedy", args, commands)
    sampled = (
        None if args.greedy_only else evaluate(row, model, outputs / "sampled", "sampled", args, commands)
    )
    humaneval = (
        evaluate(row, model, outputs / "humaneval", "humaneval", args, commands) if row.humaneval else None
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
        if row.stages
        else None,  # a test-time row's differs from its run's
        "layer_evals_per_token": layer_evals(evaluated, arch_overrides(row.eval_args)),
        "greedy": greedy,
        "sampled": sampled,
        "humaneval": humaneval,
        **({"model": row.model} if row.model else {}),
        **({"evaluates": row.evaluates} if row.evaluates else {}),
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
    if row.stages:
        shutil.copyfile(
            REPO / "checkpoints" / row.stages[-1].run_name / "metrics.jsonl", target / "metrics.jsonl"
        )
    shutil.copyfile(outputs / "greedy" / "summary.json", target / "greedy.json")
    for kind, evaluation in (("sampled", sampled), ("humaneval", humaneval)):
        if evaluation is not None:
            shutil.copyfile(outputs / kind / "summary.json", target / f"{kind}.json")
        elif (target / f"{kind}.json").is_file():
            (target / f"{kind}.json").unlink()  # from an earlier run of the row: not this record's
    (target / "row.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {target / 'row.json'}")
    return record


def percent(value: float | None, problems: int | None) -> str:
    """A pass rate as a percentage with the number of problems, or "not run"."""
    return "not run" if value is None else f"{100 * value:.1f}% (of {problems})"


def rates(*evaluations: dict[str, Any] | None, key: str) -> str:
    """`key` of each evaluation as a percentage, joined by " / " ("not run" for a missing one)."""
    return " / ".join("not run" if e is None else f"{100 * e[key]:.1f}%" for e in evaluations)


INTRO = {
    "compare": [
        "Corpus pre-training (data/corpus/pylib, 2.26M tokens, 256-token blocks) then MBPP fine-tuning",
        "(mbpp_cpu_compare), every model from the same data order; the steps of each stage are scaled so that",
        "every row spends the tiny HRM's analytic training FLOPs (within 1%; `flop_matched_steps`). The pairs rows",
        "spend the corpus stage's budget half on the corpus and half on mined pairs (data/pairs/pylib), then the",
        "same MBPP stage. Two seeds per row (seed 0 and seed 1: initialisation and data order). Greedy pass@1",
        "on all 500 MBPP test problems, at most 128 new tokens. Train wall time: one thread each, two runs at a",
        "time on a 2-core machine shared with other jobs.",
    ],
    "cpu": [
        "Every model is trained from the same seed on the same MBPP-train sequences in the same order",
        "(experiment=mbpp_cpu_compare: 100 steps of 8 sequences); the pre-trained rows first train 100 steps of 8",
        "blocks of 256 corpus tokens. Train wall time: one thread, on a 2-core machine shared with other jobs",
        "(timings vary with their load).",
    ],
    "gpu": [
        "Every model is pre-trained from the same seed on the same corpus blocks in the same order",
        "(experiment=gpu_pretrain: 1,000 steps of 64 blocks of 512 tokens of a 25M-token Python corpus, bfloat16),",
        "then fine-tuned on MBPP train (experiment=gpu_pretrain_finetune: 6 epochs of 32 sequences). Train wall",
        "time: one GPU, the training commands alone.",
    ],
    "retrofit": [
        "SmolLM2-135M-Instruct (30 layers) retrofitted into the HRM (scripts/retrofit.py: L = layers 0-14,",
        "H = layers 15-29; at 1x1 cycles the same function) and fine-tuned, against post-training the transformer",
        "itself, with the same data, order and optimizer (experiment=posttrain_mbpp / retrofit_mbpp: 1 epoch of",
        "MBPP train packed in 512-token blocks, batch 4 blocks, lr 5e-5). The recurrent row (2 gated L cycles,",
        "a curriculum from 1 to 2 L cycles at 25% of the steps) trains for as many steps as keep its layer",
        "evaluations within the post-training run's: equal analytic training FLOPs (`layer_matched_steps`). The",
        "test-time rows evaluate its final step with 3 and 1 L cycles; the zero-shot rows evaluate the source",
        "with native prompts and with its chat template. Greedy pass@1 on all 500 MBPP test problems and all 164",
        "HumanEval problems; pass@10 from n=20 samples (T=0.8, top-p 0.95) on the first 100 MBPP test problems; at",
        "most 128 new tokens. Validation loss of the zero-shot rows: the source's, at step 0 of the post-training",
        "run (native format); test-time rows: n/a (the run logs it with the training cycles). Train and",
        "evaluation wall time: 2-core CPU, one thread per run, two runs at a time; evaluation wall time is the",
        "generation time of MBPP greedy + HumanEval.",
    ],
}
COLUMNS = [
    "- training tokens: non-padding input tokens processed, prompts included, summed over the stages;",
    "- train wall time: the training command(s) with start-up, data encoding, validation and checkpoints;",
    "- pass@1 greedy: n=1 at temperature 0 on the MBPP test split; pass@10: n=20 samples at temperature 0.8,",
    "  top-p 0.95, unbiased estimator, on the first problems of the test split (the count is given);",
    "  at most 128 new tokens;",
    "- syntax-valid: the share of executed programs (completion followed by the test asserts) that parse; an",
    "  empty or whitespace-only completion leaves the asserts alone, which parse, so the next column gives",
    "  the share of such completions;",
    "- validation loss: token-mean loss over the whole MBPP validation split after the last step.",
]


def table(rows: list[dict[str, Any]], group: str) -> list[str]:
    """One group's markdown section: what it trains, the results table and each row's commands."""
    title, plot, _ = GROUPS[group]
    lines = [
        f"## {title}",
        "",
        *INTRO[group],
        "",
        f"![training and validation loss, pass@k]({plot})",
        "",
        "| model | parameters | training tokens | hardware, date | train wall time | pass@1 greedy "
        "| pass@10 (n=20, T=0.8) | syntax-valid (greedy / sampled) | empty completions (greedy / sampled) "
        "| validation loss |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        greedy, sampled = r["greedy"], r["sampled"]
        wall = "not recorded" if r["train_wall_s"] is None else f"{r['train_wall_s'] / 60:.1f} min"
        pass10 = (
            "not run" if sampled is None else percent(sampled["pass_at_k"]["10"], sampled["num_problems"])
        )
        lines.append(
            f"| {r['label']} | {r['parameters']:,} | {r['training_tokens']:,} | {r['hardware']}, {r['date']} "
            f"| {wall} | {percent(greedy['pass_at_k']['1'], greedy['num_problems'])} | {pass10} "
            f"| {rates(greedy, sampled, key='syntax_valid_rate')} "
            f"| {rates(greedy, sampled, key='empty_completion_rate')} | {r['val_loss']:.3f} |"
        )
    return lines + row_commands(rows)


def row_commands(rows: list[dict[str, Any]]) -> list[str]:
    """The rows' notes on their measurements and the commands each row ran, as markdown."""
    lines = []
    notes = [f"- {r['label']}: {note}" for r in rows for note in r.get("notes", [])]
    if notes:
        lines += ["", "Notes on the measurements:", *notes]
    for r in rows:
        lines += ["", f"**{r['label']}**: `{r['reproduce']}` runs", "```"]
        lines += [*r["commands"], "```"]
    return lines + [""]


def source_val_loss() -> float | None:
    """The source model's MBPP validation loss: step 0 of the retrofit_posttrain run's copied metrics."""
    metrics = RESULTS / "retrofit_posttrain" / runs.METRICS_FILE
    if not metrics.is_file():
        return None
    return next((r["val_loss"] for r in runs.read_metrics(metrics.parent) if r.get("step") == 0), None)


def minutes(seconds: float | None) -> str:
    """Seconds as minutes, or "not recorded"."""
    return "not recorded" if seconds is None else f"{seconds / 60:.1f} min"


def retrofit_table(rows: list[dict[str, Any]]) -> list[str]:
    """The retrofit group's markdown section: layer evaluations, MBPP and HumanEval, wall times, commands."""
    title, plot, _ = GROUPS["retrofit"]
    lines = [
        f"## {title}",
        "",
        *INTRO["retrofit"],
        "",
        f"![training and validation loss, pass@k]({plot})",
        "",
        "| model | layer evaluations per token | training tokens | train wall time | MBPP pass@1 greedy "
        "| HumanEval pass@1 greedy | MBPP pass@10 (n=20, first 100) | syntax-valid (greedy / sampled) "
        "| MBPP validation loss | evaluation wall time (MBPP greedy + HumanEval) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    zero_shot_loss = source_val_loss()
    for r in rows:
        greedy, sampled, humaneval = r["greedy"], r["sampled"], r.get("humaneval")
        loss = zero_shot_loss if r.get("model") else r["val_loss"]
        wall = "none (zero-shot)" if r.get("model") else minutes(r["train_wall_s"])
        pass10 = (
            "not run" if sampled is None else percent(sampled["pass_at_k"]["10"], sampled["num_problems"])
        )
        human = (
            "not run"
            if humaneval is None
            else percent(humaneval["pass_at_k"]["1"], humaneval["num_problems"])
        )
        seconds = [e.get("generation_seconds") for e in (greedy, humaneval) if e is not None]
        evaluation = (
            "not recorded" if None in seconds else " + ".join(f"{s / 60:.1f}" for s in seconds) + " min"
        )
        lines.append(
            f"| {r['label']} | {r.get('layer_evals_per_token') or 'n/a'} | {r['training_tokens']:,} | {wall} "
            f"| {percent(greedy['pass_at_k']['1'], greedy['num_problems'])} | {human} | {pass10} "
            f"| {rates(greedy, sampled, key='syntax_valid_rate')} "
            f"| {'n/a' if loss is None else f'{loss:.3f}'} | {evaluation} |"
        )
    return lines + row_commands(rows)


def retrofit_seed_table(rows: list[dict[str, Any]]) -> list[str]:
    """The seeded retrofit rows side by side: validation loss and MBPP greedy pass@1 per seed and their mean."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["row"].removesuffix("_s1") in RETROFIT_SEEDED and r["val_loss"] is not None:
            by_model.setdefault(r["row"].removesuffix("_s1"), []).append(r)
    lines = [
        "Seeds side by side (seed 0, seed 1; validation loss: MBPP validation after the last step; spread: half",
        "the range of the seeds; pass@1: greedy on all 500 MBPP test problems):",
        "",
        "| model | validation loss per seed | mean | spread | MBPP pass@1 per seed | mean |",
        "|---|---|---:|---:|---|---:|",
    ]
    for members in by_model.values():
        members.sort(key=lambda r: r["row"])
        losses = [r["val_loss"] for r in members]
        passes = [r["greedy"]["pass_at_k"]["1"] for r in members]
        lines.append(
            f"| {members[0]['label']} | {' / '.join(f'{x:.3f}' for x in losses)} | {sum(losses) / len(losses):.3f} "
            f"| {(max(losses) - min(losses)) / 2:.3f} | {' / '.join(f'{100 * x:.1f}%' for x in passes)} "
            f"| {100 * sum(passes) / len(passes):.1f}% |"
        )
    return lines + [""]


def row_train_flops(record: dict[str, Any]) -> float | None:
    """Analytic training FLOPs of a reproduced row: per stage, the family's FLOPs per token x its tokens."""
    from hrm_codegen.families import get_family
    from hrm_codegen.inference import model_config
    from hrm_codegen.train_config import compose_config

    row = ROWS.get(record["row"])
    if row is None:
        return None
    total = 0.0
    for stage, done in zip(row.stages, record["stages"], strict=True):
        cfg = compose_config([*stage.overrides, f"run_name={stage.run_name}"])
        per_token = get_family(cfg.arch.name).flops_per_token(model_config(cfg, 50257), cfg.data.seq_len)[
            "train"
        ]
        total += per_token * done["tokens"]
    return total


def seed_table(rows: list[dict[str, Any]]) -> list[str]:
    """Validation loss per seed, the mean and the seed spread (half the range), per model."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_model.setdefault(r["row"].removesuffix("_s1"), []).append(r)
    lines = [
        "Seeds side by side (validation loss: MBPP validation after the last stage; spread: half the range of",
        "the seeds; training TFLOPs: analytic, summed over the stages):",
        "",
        "| model | seeds | validation loss per seed | mean | spread | training TFLOPs | pass@1 greedy (mean) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for members in by_model.values():
        members.sort(key=lambda r: r["row"])
        losses = [r["val_loss"] for r in members]
        flops = [row_train_flops(r) for r in members]
        shown = [f for f in flops if f is not None]
        mean_flops = f"{sum(shown) / len(shown) / 1e12:.2f}" if shown else "n/a"
        passes = [r["greedy"]["pass_at_k"]["1"] for r in members]
        lines.append(
            f"| {members[0]['label']} | {len(members)} | {' / '.join(f'{x:.3f}' for x in losses)} "
            f"| {sum(losses) / len(losses):.3f} | {(max(losses) - min(losses)) / 2:.3f} | {mean_flops} "
            f"| {100 * sum(passes) / len(passes):.1f}% |"
        )
    return lines + [""]


def write_table(names: list[str]) -> None:
    """docs/results/results.md and one plot per group (docs/results/mbpp_<group>.png) from the rows' records."""
    rows = [
        read_json(RESULTS / name / "row.json") for name in names if (RESULTS / name / "row.json").is_file()
    ]
    if not rows:
        sys.exit("error: no row has been reproduced yet (docs/results/<row>/row.json)")
    lines = [
        "# MBPP results",
        "",
        "Written by `python scripts/reproduce.py table` from docs/results/<row>/row.json.",
        "",
        *COLUMNS,
        "",
    ]
    for group, (_, plot_file, plot_title) in GROUPS.items():
        # the row's group as defined now (a record may predate a regrouping)
        members = [
            r for r in rows if (ROWS[r["row"]].group if r["row"] in ROWS else r.get("group", "cpu")) == group
        ]
        if not members:
            continue
        lines += retrofit_table(members) if group == "retrofit" else table(members, group)
        if group == "compare":
            lines += seed_table(members)
        if group == "retrofit":
            lines += retrofit_seed_table(members)
        # plot_runs.py labels a run directory (metrics.jsonl) and a summary file by the directory's name: the row.
        # Only rows that trained have a loss curve (zero-shot and test-time rows have pass@k bars alone).
        evals = [RESULTS / r["row"] / "sampled.json" for r in members]
        evals = [e for e in evals if e.is_file()]
        runs = [RESULTS / r["row"] for r in members if (RESULTS / r["row"] / "metrics.jsonl").is_file()]
        if not runs and not evals:
            continue
        plot = [sys.executable, "scripts/plot_runs.py", "--out", str((RESULTS / plot_file).relative_to(REPO))]
        if runs:
            plot += ["--runs", *(str(run.relative_to(REPO)) for run in runs)]
        if evals:
            plot += ["--evals", *(str(e.relative_to(REPO)) for e in evals)]
        execute([*plot, "--title", plot_title])
    (RESULTS / "results.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {RESULTS / 'results.md'}")


def default_hardware() -> str:
    """The hardware the rows run on, for the table: the GPU's name, or the CPU development machine."""
    import torch

    if torch.cuda.is_available():
        return f"1x {torch.cuda.get_device_name()}"
    return "CPU, 2 cores (shared dev machine)"


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and run the rows (or write the table)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", nargs="+", help=f"row names ({', '.join(ROWS)}), `all`, or `table`")
    p.add_argument("--mbpp", default="data/mbpp/mbpp.jsonl", help="MBPP jsonl (relative to the repository)")
    p.add_argument("--tokenizer", default="gpt2", help="tokenizer directory or Hub name")
    p.add_argument(
        "--corpus",
        default=None,
        help=f"corpus directory for pre-training rows (default: the row's own, {CPU_CORPUS[0]} for the CPU "
        f"rows, {GPU_CORPUS[0]} for the gpu_* rows)",
    )
    p.add_argument(
        "--greedy-limit", type=int, default=None, help="greedy pass@1 on the first N test problems"
    )
    p.add_argument("--sampled-limit", type=int, default=None, help="pass@10 on the first N test problems")
    p.add_argument("--greedy-only", action="store_true", help="skip the n=20 sampled evaluation")
    p.add_argument("--hardware", default=None, help="hardware named in the table (default: detected)")
    args = p.parse_args(argv)
    args.row_flags = [  # the options given, to show the command that reproduces a row
        *(
            part
            for key in ("mbpp", "tokenizer", "corpus", "greedy_limit", "sampled_limit")
            if getattr(args, key) != p.get_default(key)
            for part in (f"--{key.replace('_', '-')}", str(getattr(args, key)))
        ),
        *(["--greedy-only"] if args.greedy_only else []),
    ]
    names = list(ROWS) if args.rows == ["all"] else args.rows
    if names == ["table"]:
        write_table(list(ROWS))
        return
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        p.error(f"unknown row(s) {unknown}; expected {list(ROWS)}, all or table")
    for name in names:
        reproduce(name, args)


if __name__ == "__main__":
    main()
