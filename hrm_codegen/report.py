"""The results report: docs/results/results.md (one section per group of rows) and its plots, from the rows'
records (docs/results/<row>/row.json, written by `hrm_codegen.reproduction`)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hrm_codegen import runs
from hrm_codegen.result_rows import Row

Record = dict[str, Any]  # a row.json
# a column of a seed table: header, markdown alignment, the cell of one model's seeds
SeedColumn = tuple[str, str, Callable[[list[Record]], str]]
TrainFlops = Callable[[Record], "float | None"]  # a record's analytic training FLOPs, None when unknown

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
    "execution": (
        "Learning from execution: the SFT HRM and the post-trained source after rejection sampling, on MBPP and MBPP+ (CPU)",
        "mbpp_execution.png",
        "The SFT HRM and the post-trained source fine-tuned further: training and MBPP validation loss (2-core CPU)",
    ),
    "recurrence": (
        "Recurrence that pays: the retrofitted HRM at test-time cycles, per training mechanism (CPU)",
        "mbpp_recurrence.png",
        "The retrofitted HRM trained with each recurrence mechanism: MBPP pass@1 (all 500) at test-time L cycles",
    ),
}

PLOT_ALT = {"recurrence": "pass@1 against test-time L cycles"}  # else: loss curves and pass@k bars

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
    "execution": [
        "The fine-tuned retrofitted HRM (row retrofit_L15x2) and what execution-based training makes of it:",
        "rejection sampling (scripts/rejection_sample.py: completions of the MBPP train tasks sampled at T=0.8,",
        "the distinct ones that pass their asserts in the sandbox kept, then fine-tuned on with experiment=rs_mbpp)",
        "and a control that fine-tunes as long on MBPP's own train solutions alone; the post-trained source (row",
        "retrofit_posttrain, no recurrence) through the same round and its own control. A seed-1 round reuses seed 0's",
        "samples (its wall time is its training's; its sampled tokens are those samples'). Every model is evaluated with",
        "fp16 weights, greedy, native prompts, at most 128 new tokens: MBPP pass@1 on all 500 test problems, and",
        "MBPP+ from EvalPlus's source file on the 288 tasks outside MBPP train (base: MBPP's shown inputs; plus:",
        "all of EvalPlus's inputs) and on the 239 of them in MBPP's test split. A gain on base that does not show",
        "on plus is a program fitted to the shown asserts. Tokens: fine-tuning tokens of this row's own training",
        "(the SFT start's aside); sampled: completion tokens generated to build the training data. Wall times:",
        "2-core CPU, one thread per job, two jobs at a time.",
    ],
    "recurrence": [
        "The retrofit (row retrofit_L15x2's checkpoints/retro_L15x2) fine-tuned on MBPP train as the SFT row, with",
        "one recurrence mechanism each (randomized L cycles per step, truncated backpropagation, deep supervision),",
        "for at most the post-trained source's analytic training FLOPs (`source_flops_matched_to`), then evaluated",
        "at several test-time cycle counts (`evaluate.py --arch-override`): fp16 weights, greedy, native prompts, at",
        "most 128 new tokens; MBPP pass@1 on all 500 test problems and MBPP+ plus pass@1 on the 239 tasks of MBPP's",
        "test split (EvalPlus's hidden inputs). In parentheses: decoder-layer evaluations per token. Does the HRM",
        "get better when it thinks longer? Wall times: 2-core CPU, one thread per job, two jobs at a time.",
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


def markdown(
    records: Sequence[Record], rows: Mapping[str, Row], results: Path, train_flops: TrainFlops
) -> str:
    """docs/results/results.md: the columns' meaning, then each group's section, tables and commands."""
    lines = [
        "# MBPP results",
        "",
        "Written by `python scripts/reproduce.py table` from docs/results/<row>/row.json.",
        "",
        *COLUMNS,
        "",
    ]
    seeded = {row.seed_of for row in rows.values() if row.seed_of}
    for group, members in by_group(records, rows).items():
        if group == "retrofit":
            lines += retrofit_table(members, source_val_loss(results))
            trained = [r for r in members if r["val_loss"] is not None]
            models = [seeds for base, seeds in by_model(trained, rows).items() if base in seeded]
            lines += seed_table(models, RETROFIT_SEEDS, retrofit_seed_columns())
        elif group == "execution":
            lines += execution_table(members)
        elif group == "recurrence":
            lines += recurrence_table(members)
        elif group == "compare":
            lines += table(members, group)
            models = list(by_model(members, rows).values())
            lines += seed_table(models, COMPARE_SEEDS, compare_seed_columns(train_flops))
        else:
            lines += table(members, group)
    return "\n".join(lines)


def by_group(records: Sequence[Record], rows: Mapping[str, Row]) -> dict[str, list[Record]]:
    """The records of each group that has any, in GROUPS order; a row's group as defined now (a record may
    predate a regrouping)."""
    groups = {group: [r for r in records if rows[r["row"]].group == group] for group in GROUPS}
    return {group: members for group, members in groups.items() if members}


def by_model(records: Sequence[Record], rows: Mapping[str, Row]) -> dict[str, list[Record]]:
    """The records of each model (a row and its seed variants), each model's sorted by row name."""
    models: dict[str, list[Record]] = {}
    for r in records:
        models.setdefault(rows[r["row"]].seed_of or r["row"], []).append(r)
    return {base: sorted(seeds, key=lambda r: r["row"]) for base, seeds in models.items()}


def percent(value: float | None, problems: int | None) -> str:
    """A pass rate as a percentage with the number of problems, or "not run"."""
    return "not run" if value is None else f"{100 * value:.1f}% (of {problems})"


def rates(*evaluations: Record | None, key: str) -> str:
    """`key` of each evaluation as a percentage, joined by " / " ("not run" for a missing one)."""
    return " / ".join("not run" if e is None else f"{100 * e[key]:.1f}%" for e in evaluations)


def minutes(seconds: float | None) -> str:
    """Seconds as minutes, or "not recorded"."""
    return "not recorded" if seconds is None else f"{seconds / 60:.1f} min"


def section_head(group: str, columns: str, alignment: str) -> list[str]:
    """A group's title, what it trains, its plot and its table's header."""
    title, plot, _ = GROUPS[group]
    return [
        f"## {title}",
        "",
        *INTRO[group],
        "",
        f"![{PLOT_ALT.get(group, 'training and validation loss, pass@k')}]({plot})",
        "",
        columns,
        alignment,
    ]


def table(records: Sequence[Record], group: str) -> list[str]:
    """One group's markdown section: what it trains, the results table and each row's commands."""
    lines = section_head(
        group,
        "| model | parameters | training tokens | hardware, date | train wall time | pass@1 greedy "
        "| pass@10 (n=20, T=0.8) | syntax-valid (greedy / sampled) | empty completions (greedy / sampled) "
        "| validation loss |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    )
    for r in records:
        greedy, sampled = r["greedy"], r["sampled"]
        lines.append(
            f"| {r['label']} | {r['parameters']:,} | {r['training_tokens']:,} | {r['hardware']}, {r['date']} "
            f"| {minutes(r['train_wall_s'])} | {percent(greedy['pass_at_k']['1'], greedy['num_problems'])} "
            f"| {pass_at_10(sampled)} | {rates(greedy, sampled, key='syntax_valid_rate')} "
            f"| {rates(greedy, sampled, key='empty_completion_rate')} | {r['val_loss']:.3f} |"
        )
    return lines + row_commands(records)


def pass_at_10(sampled: Record | None) -> str:
    """The sampled evaluation's pass@10 with its number of problems, or "not run"."""
    return "not run" if sampled is None else percent(sampled["pass_at_k"]["10"], sampled["num_problems"])


def retrofit_table(records: Sequence[Record], source_loss: float | None) -> list[str]:
    """The retrofit group's markdown section: layer evaluations, MBPP and HumanEval, wall times, commands;
    `source_loss` is the zero-shot rows' validation loss."""
    lines = section_head(
        "retrofit",
        "| model | layer evaluations per token | training tokens | train wall time | MBPP pass@1 greedy "
        "| HumanEval pass@1 greedy | MBPP pass@10 (n=20, first 100) | syntax-valid (greedy / sampled) "
        "| MBPP validation loss | evaluation wall time (MBPP greedy + HumanEval) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    )
    for r in records:
        greedy, sampled, humaneval = r["greedy"], r["sampled"], r.get("humaneval")
        loss = source_loss if r.get("model") else r["val_loss"]
        wall = "none (zero-shot)" if r.get("model") else minutes(r["train_wall_s"])
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
            f"| {percent(greedy['pass_at_k']['1'], greedy['num_problems'])} | {human} | {pass_at_10(sampled)} "
            f"| {rates(greedy, sampled, key='syntax_valid_rate')} "
            f"| {'n/a' if loss is None else f'{loss:.3f}'} | {evaluation} |"
        )
    return lines + row_commands(records)


def execution_table(records: Sequence[Record]) -> list[str]:
    """The execution group's section: compute (tokens, wall time), MBPP and MBPP+ base / plus, commands."""
    lines = section_head(
        "execution",
        "| model | fine-tuning tokens | sampled tokens | wall time (sampling + training) | MBPP pass@1 greedy "
        "| MBPP+ base pass@1 | MBPP+ plus pass@1 | MBPP+ plus, test-split tasks | base passes that fail plus "
        "| MBPP validation loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    )
    for r in records:
        greedy, plus, execution = r["greedy"], r.get("mbppplus"), r.get("execution")
        trains = bool(r.get("stages")) and not r.get("evaluates")
        tokens = f"{r['training_tokens']:,}" if trains else "0 (the start)"
        sampled = f"{execution['sampled_tokens']:,}" if execution else "0"
        if not trains and not execution:
            wall = "none (the start)"  # an evaluated row: its training is the start's own row
        else:
            walls = [execution["wall_s"].get("sampling")] if execution else []
            walls.append(r["train_wall_s"] if trains else 0.0)
            wall = "not recorded" if None in walls else minutes(sum(walls))
        if plus is None:
            mbppplus = ["not run"] * 4
        else:
            n, split = plus["num_problems"], plus["test_split"]
            base, passes = plus["base_pass_at_k"]["1"], plus["pass_at_k"]["1"]
            mbppplus = [
                percent(base, n),
                percent(passes, n),
                percent(split["pass_at_1"], split["num_problems"]),
                str(round((base - passes) * n)),
            ]
        # the start's (an evaluated row's loss is its run's: this group evaluates with no architecture override)
        loss = run_val_loss(r)
        lines.append(
            f"| {r['label']} | {tokens} | {sampled} | {wall} "
            f"| {percent(greedy['pass_at_k']['1'], greedy['num_problems'])} | {' | '.join(mbppplus)} | {loss} |"
        )
    return lines + row_commands(records)


def run_val_loss(record: Record) -> str:
    """A record's validation loss, else (a row evaluating another row's run) its last stage's, as text ("n/a")."""
    loss = record["val_loss"]
    if loss is None:
        loss = (record.get("stages") or [{}])[-1].get("val_loss")
    return "n/a" if loss is None else f"{loss:.3f}"


def recurrence_table(records: Sequence[Record]) -> list[str]:
    """The recurrence group's section: each model's training, then its MBPP and MBPP+ pass@1 at every test-time
    override (a column per override, in the order the rows give them), and the commands."""
    overrides = list(dict.fromkeys(e["override"] for r in records for e in r.get("test_time", [])))
    header = " | ".join(overrides)
    lines = section_head(
        "recurrence",
        f"| model | training tokens | train wall time | MBPP validation loss | {header} |",
        "|---|---:|---:|---:|" + "---:|" * len(overrides),
    )
    plus_lines = [
        "",
        "MBPP+ plus pass@1 on the test-split tasks (passes / tasks), at the same overrides:",
        "",
        f"| model | {header} |",
        "|---|" + "---:|" * len(overrides),
    ]
    for r in records:
        at = {e["override"]: e for e in r.get("test_time", [])}
        trains = bool(r.get("stages")) and not r.get("evaluates")
        tokens = f"{r['training_tokens']:,}" if trains else "the evaluated row's"
        wall = minutes(r["train_wall_s"]) if trains else "n/a"
        loss = run_val_loss(r)  # an evaluated row's: its run's, logged at the arch's cycles
        mbpp, plus = [], []
        for override in overrides:
            entry = at.get(override)
            if entry is None:
                mbpp.append("")
                plus.append("")
                continue
            greedy = entry["greedy"]
            mbpp.append(f"{100 * greedy['pass_at_k']['1']:.1f}% ({entry['layer_evals_per_token']})")
            split = (entry.get("mbppplus") or {}).get("test_split")
            plus.append(
                "not run"
                if split is None
                else f"{100 * split['pass_at_1']:.1f}% ({round(split['pass_at_1'] * split['num_problems'])}"
                f" / {split['num_problems']})"
            )
        lines.append(f"| {r['label']} | {tokens} | {wall} | {loss} | {' | '.join(mbpp)} |")
        plus_lines.append(f"| {r['label']} | {' | '.join(plus)} |")
    return lines + plus_lines + row_commands(records)


def row_commands(records: Sequence[Record]) -> list[str]:
    """The rows' notes on their measurements and the commands each row ran, as markdown."""
    lines = []
    notes = [f"- {r['label']}: {note}" for r in records for note in r.get("notes", [])]
    if notes:
        lines += ["", "Notes on the measurements:", *notes]
    for r in records:
        lines += ["", f"**{r['label']}**: `{r['reproduce']}` runs", "```"]
        lines += [*r["commands"], "```"]
    return lines + [""]


def source_val_loss(results: Path) -> float | None:
    """The source model's MBPP validation loss: step 0 of the retrofit_posttrain run's copied metrics."""
    metrics = results / "retrofit_posttrain" / runs.METRICS_FILE
    if not metrics.is_file():
        return None
    return next((r["val_loss"] for r in runs.read_metrics(metrics.parent) if r.get("step") == 0), None)


COMPARE_SEEDS = [
    "Seeds side by side (validation loss: MBPP validation after the last stage; spread: half the range of",
    "the seeds; training TFLOPs: analytic, summed over the stages):",
]
RETROFIT_SEEDS = [
    "Seeds side by side (seed 0, seed 1; validation loss: MBPP validation after the last step; spread: half",
    "the range of the seeds; pass@1: greedy on all 500 MBPP test problems):",
]


def seed_table(
    models: Sequence[list[Record]], caption: list[str], columns: Sequence[SeedColumn]
) -> list[str]:
    """A table of one line per model (its seeds' records): the caption, then the model's label and `columns`."""
    lines = [
        *caption,
        "",
        "| model | " + " | ".join(header for header, _, _ in columns) + " |",
        "|---|" + "".join(f"{alignment}|" for _, alignment, _ in columns),
    ]
    for seeds in models:
        cells = " | ".join(cell(seeds) for _, _, cell in columns)
        lines.append(f"| {seeds[0]['label']} | {cells} |")
    return lines + [""]


def val_losses(seeds: list[Record]) -> list[float]:
    """The seeds' validation losses."""
    return [r["val_loss"] for r in seeds]


def greedy_passes(seeds: list[Record]) -> list[float]:
    """The seeds' greedy pass@1."""
    return [r["greedy"]["pass_at_k"]["1"] for r in seeds]


def loss_columns() -> list[SeedColumn]:
    """Validation loss per seed, the mean and the seed spread (half the range)."""
    return [
        ("validation loss per seed", "---", lambda s: " / ".join(f"{x:.3f}" for x in val_losses(s))),
        ("mean", "---:", lambda s: f"{sum(val_losses(s)) / len(s):.3f}"),
        ("spread", "---:", lambda s: f"{(max(val_losses(s)) - min(val_losses(s))) / 2:.3f}"),
    ]


def compare_seed_columns(train_flops: TrainFlops) -> list[SeedColumn]:
    """The compare group's seed table: seeds, losses, the mean analytic training TFLOPs, mean pass@1."""

    def tflops(seeds: list[Record]) -> str:
        shown = [f for f in map(train_flops, seeds) if f is not None]
        return f"{sum(shown) / len(shown) / 1e12:.2f}" if shown else "n/a"

    return [
        ("seeds", "---:", lambda s: str(len(s))),
        *loss_columns(),
        ("training TFLOPs", "---:", tflops),
        ("pass@1 greedy (mean)", "---:", lambda s: f"{100 * sum(greedy_passes(s)) / len(s):.1f}%"),
    ]


def retrofit_seed_columns() -> list[SeedColumn]:
    """The retrofit group's seed table: losses, then MBPP greedy pass@1 per seed and the mean."""
    return [
        *loss_columns(),
        ("MBPP pass@1 per seed", "---", lambda s: " / ".join(f"{100 * x:.1f}%" for x in greedy_passes(s))),
        ("mean", "---:", lambda s: f"{100 * sum(greedy_passes(s)) / len(s):.1f}%"),
    ]


def plot_command(group: str, records: Sequence[Record], results: Path, repo: Path) -> list[str] | None:
    """The scripts/plot_runs.py command of a group's plot (None when no row has a curve or a sampled evaluation).

    plot_runs.py labels a run directory (metrics.jsonl) and a summary file by the directory's name: the row. Only
    rows that trained have a loss curve (zero-shot and test-time rows have pass@k bars alone)."""
    _, plot_file, plot_title = GROUPS[group]
    if group == "recurrence":
        return cycles_plot_command(records, results, repo)
    evals = [results / r["row"] / "sampled.json" for r in records]
    evals = [e for e in evals if e.is_file()]
    curves = [results / r["row"] for r in records if (results / r["row"] / runs.METRICS_FILE).is_file()]
    if not curves and not evals:
        return None
    command = [sys.executable, "scripts/plot_runs.py", "--out", str((results / plot_file).relative_to(repo))]
    if curves:
        command += ["--runs", *(str(run.relative_to(repo)) for run in curves)]
    if evals:
        command += ["--evals", *(str(e.relative_to(repo)) for e in evals)]
    return [*command, "--title", plot_title]


def cycles_plot_command(records: Sequence[Record], results: Path, repo: Path) -> list[str] | None:
    """The scripts/plot_cycles.py command of the recurrence group's plot: MBPP pass@1 against test-time L cycles, a
    line per row evaluated at L_cycles overrides (from its <slug>.greedy.json summaries); None when no row is."""
    _, plot_file, plot_title = GROUPS["recurrence"]
    command = [
        sys.executable,
        "scripts/plot_cycles.py",
        "--out",
        str((results / plot_file).relative_to(repo)),
    ]
    for r in records:
        record_dir = results / r["row"]
        summaries = {
            e["override"].partition("=")[2]: record_dir / f"{override_slug(e['override'])}.greedy.json"
            for e in r.get("test_time", [])
            if e["override"].startswith("L_cycles=")
        }
        if summaries:
            points = ",".join(f"{n}:{path.relative_to(repo)}" for n, path in summaries.items())
            command += ["--series", f"{r['label']}={points}"]
    return [*command, "--title", plot_title] if "--series" in command else None


def override_slug(override: str) -> str:
    """A test-time override (KEY=VALUE) as a file-name part: KEY_VALUE."""
    return override.replace("=", "_")
