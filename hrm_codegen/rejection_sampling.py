"""Rejection-sampling fine-tuning (expert iteration): sample, keep what passes, fine-tune on it, repeat.

One round, from a run of this launcher:

1. sample: `num_samples` completions of every MBPP train task at a temperature, each run in the sandbox
   against the task's asserts (`hrm_codegen.evaluation.evaluate`: records in `<out>/round_<r>/samples/`,
   resumable);
2. filter: the passing completions, distinct after whitespace normalisation (`dedup_key`), at most
   `max_per_task` per task, run once more through the RL reward (`rewards.ExecutionReward`) and kept when it
   scores them 1.0; written to `<out>/round_<r>/pairs.jsonl` in MBPP's prompt format (the task's text and
   asserts, the completion as the code), after MBPP's own train solutions when `mix_reference`;
3. fine-tune: the launcher's recipe `experiment=rs_mbpp` (data=pairs) started from the sampled run
   (`train.init_from`, `train.arch_from_init`), into `<out>/round_<r>/run`.

Round r + 1 samples from round r's run. `<out>/round_<r>/manifest.json` records the round phase by phase
(counts, sampled and prompt tokens, training tokens and steps, wall times, the checkpoint), so a stopped round
resumes at its phase and a finished round is not redone; `<out>/manifest.json` lists the finished rounds, their
totals and the final run (what `scripts/evaluate.py --ckpt` scores). `<out>/rs_config.json` holds the settings
that define the samples, pairs and training; resuming with other settings is refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from hrm_codegen import runs
from hrm_codegen.completions import ModelCompletions, SamplingConfig, default_batch_size
from hrm_codegen.datasets.cache import atomic_write_bytes, file_sha256
from hrm_codegen.datasets.mbpp import DEFAULT_PATH, load_mbpp, split_tasks
from hrm_codegen.datasets.protocols import FORMATS, FormattedProblem, build_problems
from hrm_codegen.evaluation import SAMPLES_FILE, CompletionSource, evaluate, load_results
from hrm_codegen.execution import SandboxLimits
from hrm_codegen.quantization import METHODS as QUANTIZE_METHODS
from hrm_codegen.quantization import quantize_weights
from hrm_codegen.rewards import ExecutionReward

logger = logging.getLogger(__name__)

RECIPE = "experiment=rs_mbpp"
SETTINGS_FILE = "rs_config.json"
MANIFEST_FILE = "manifest.json"
SAMPLES_DIR = "samples"
PAIRS_FILE = "pairs.jsonl"
RUN_DIR = "run"
PHASES = ("started", "sampled", "filtered", "done")  # a round manifest's status, in order
# Set by each round itself: a fine-tuning override of one of these is refused.
RESERVED_KEYS = (
    "data.pairs_path",
    "data.path",
    "train.init_from",
    "train.arch_from_init",
    "run_name",
    "checkpoint_root",
    "resume",
    "dry_run",
)

SourceFactory = Callable[[Path, SamplingConfig], CompletionSource]
"""(checkpoint to sample from, sampling settings) -> the completion source of a round's sampling."""


class NothingToTrainError(ValueError):
    """A round kept no completion (and has no reference solutions): there is nothing to fine-tune on."""


@dataclass(frozen=True)
class RejectionSamplingConfig:
    """Rejection-sampling settings. `init`: the run (or step) round 1 samples from; `output_dir`: where rounds go.

    `num_samples` completions per task at `temperature` / `top_p` / `top_k`, at most `max_new_tokens` each; round
    r samples with seed `seed + r - 1`. `max_per_task`: distinct passing completions kept per task (None: all).
    `mix_reference`: MBPP's own solutions of the train tasks join every round's pairs. `limit`: the first N train
    tasks only. `train_overrides`: Hydra overrides of the fine-tuning recipe (`experiment=rs_mbpp`).
    """

    init: str
    output_dir: str
    rounds: int = 1
    num_samples: int = 8
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = FORMATS["native"].default_max_new_tokens("mbpp")
    seed: int = 0
    max_per_task: int | None = None
    mix_reference: bool = False
    mbpp_path: str = str(DEFAULT_PATH)
    limit: int | None = None
    timeout_s: float = 10.0
    workers: int | None = None
    batch_size: int | None = None  # sequences per generate call (None: completions.default_batch_size)
    device: str = "cpu"
    # the sampling model's weights (quantization.METHODS, e.g. fp16; None: as trained); training stays fp32
    quantize: str | None = None
    train_overrides: tuple[str, ...] = ()
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("rounds", "num_samples", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"rejection sampling: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_per_task", "limit", "batch_size", "workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"rejection sampling: {name} must be >= 1 (or unset), got {value}")
        if self.num_samples > 1 and self.temperature == 0:
            raise ValueError(
                f"rejection sampling: {self.num_samples} samples per task with temperature 0 (greedy) are "
                "identical; set a temperature > 0"
            )
        SamplingConfig(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)  # their checks
        if self.quantize is not None and self.quantize not in QUANTIZE_METHODS:
            raise ValueError(
                f"rejection sampling: quantize must be one of {', '.join(QUANTIZE_METHODS)} (or unset), "
                f"got {self.quantize!r}"
            )
        for override in self.train_overrides:
            key = override.split("=", 1)[0].lstrip("+~")
            if key in RESERVED_KEYS:
                raise ValueError(
                    f"fine-tuning override {override!r}: {key} is set by each round itself "
                    f"(the keys {', '.join(RESERVED_KEYS)} cannot be overridden)"
                )

    def settings(self) -> dict[str, Any]:
        """What defines the samples, the pairs and the training (recorded in rs_config.json, checked on resume)."""
        return {
            "init": str(Path(self.init).resolve()),
            "mbpp_sha256": file_sha256(self.mbpp_path),
            "limit": self.limit,
            "num_samples": self.num_samples,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens,
            "quantize": self.quantize,
            "seed": self.seed,
            "max_per_task": self.max_per_task,
            "mix_reference": self.mix_reference,
            "timeout_s": self.timeout_s,
            "train_overrides": list(self.train_overrides),
        }


def dedup_key(code: str) -> str:
    """The code as distinctness sees it: line endings unified, blank lines and trailing spaces dropped, runs of
    spaces and tabs inside a line as one space; indentation is kept (it is Python syntax)."""
    lines = []
    for line in code.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        body = line.strip()
        if body:
            indent = line[: len(line) - len(line.lstrip())]
            lines.append(indent + " ".join(body.split()))
    return "\n".join(lines)


def distinct_passing(
    records: Sequence[Mapping[str, Any]],
    references: Mapping[str, str] | None = None,
    max_per_task: int | None = None,
) -> tuple[list[Mapping[str, Any]], dict[str, int]]:
    """The passing sample records (samples.jsonl lines), one per distinct completion of a task (`dedup_key`), in
    the order given, at most `max_per_task` per task. A completion equal to its task's reference solution
    (`references`: task_id -> code, when those join the pairs) is a duplicate too. Returns the records kept and
    counts: passing, duplicates, over_cap (distinct but beyond the cap)."""
    seen: dict[str, set[str]] = {}
    kept: list[Mapping[str, Any]] = []
    counts = {"passing": 0, "duplicates": 0, "over_cap": 0}
    for record in records:
        if not record["passed"]:
            continue
        counts["passing"] += 1
        task_id = record["task_id"]
        if task_id not in seen:
            reference = (references or {}).get(task_id)
            seen[task_id] = {dedup_key(reference)} if reference is not None else set()
        key = dedup_key(record["completion"])
        if key in seen[task_id]:
            counts["duplicates"] += 1
            continue
        seen[task_id].add(key)
        if max_per_task is not None and sum(r["task_id"] == task_id for r in kept) >= max_per_task:
            counts["over_cap"] += 1
            continue
        kept.append(record)
    return kept, counts


def recheck(
    records: Sequence[Mapping[str, Any]],
    problems: Sequence[FormattedProblem],
    limits: SandboxLimits,
    workers: int | None = None,
) -> list[bool]:
    """Whether the RL reward (`ExecutionReward`, the same program assembly and sandbox) scores each record's
    completion 1.0."""
    if not records:
        return []
    reward = ExecutionReward(problems, limits, workers)
    try:
        results = reward.results([r["task_id"] for r in records], [r["completion"] for r in records])
    finally:
        reward.close()
    return [result is not None and result.passed for result in results]


def pair_rows(
    records: Sequence[Mapping[str, Any]],
    tasks: Sequence[dict],
    problems: Mapping[str, FormattedProblem],
    round_index: int,
    mix_reference: bool,
) -> list[dict]:
    """pairs.jsonl rows (`datasets.pairs` fields) in task order: per task its MBPP solution (`mix_reference`), then
    its kept completions as the code the program ran (`task_id` `<task>/round_<r>/<sample index>`)."""
    by_task: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_task.setdefault(record["task_id"], []).append(record)
    rows = []
    for task in tasks:
        task_id = str(task["task_id"])
        base = {"text": task["text"], "test_list": list(task["test_list"]), "verified": True}
        if mix_reference:
            rows.append(
                {"task_id": f"{task_id}/reference", **base, "code": task["code"], "source": "mbpp/train"}
            )
        for record in by_task.get(task_id, []):
            rows.append(
                {
                    "task_id": f"{task_id}/round_{round_index}/{record['sample_index']}",
                    **base,
                    "code": problems[task_id].code(record["completion"]),
                    "source": f"rejection_sampling/round_{round_index}",
                }
            )
    return rows


def compose_recipe(train_overrides: Sequence[str]) -> DictConfig:
    """The fine-tuning recipe `experiment=rs_mbpp` with `train_overrides`, composed as the launcher composes it."""
    from hrm_codegen.train_config import compose_config

    overrides = [RECIPE, *train_overrides]
    try:
        return compose_config(overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ValueError(f"fine-tuning config ({' '.join(overrides)}): {str(err).splitlines()[0]}") from err


def training_config(
    settings: RejectionSamplingConfig, pairs_path: Path, init: Path, run_dir: Path
) -> DictConfig:
    """A round's fine-tuning config: the recipe with the settings' overrides, on `pairs_path`, started from
    `init`'s weights, arch and tokenizer, resuming `run_dir` when it holds a step."""
    cfg = compose_recipe(settings.train_overrides)
    cfg.data.pairs_path = str(pairs_path)
    cfg.data.path = settings.mbpp_path
    cfg.train.init_from = str(init)
    cfg.train.arch_from_init = True
    cfg.run_name = run_dir.name
    cfg.resume = "auto"
    return cfg


def model_completions(
    checkpoint: Path,
    sampling: SamplingConfig,
    device: str = "cpu",
    progress: bool = True,
    quantize: str | None = None,
) -> ModelCompletions:
    """The default completion source of a round: the checkpoint's model (its weights quantized for sampling when
    `quantize` names a method), prompts encoded as training encodes them."""
    from hrm_codegen.inference import load_checkpoint

    loaded = load_checkpoint(checkpoint, device=device)
    if quantize:
        quantize_weights(loaded.model, quantize, tokenizer=loaded.tokenizer)
    return ModelCompletions.from_loaded(loaded, sampling, progress=progress, bos=FORMATS["native"].bos)


def initial_checkpoint(init: str) -> Path:
    """The step directory round 1 samples from, checked to be trained in the format the pairs train in."""
    step = runs.resolve_checkpoint(init)
    if not step.is_dir():
        raise ValueError(
            f"init {init} is a weights file: rejection sampling fine-tunes a run of this launcher (a run or step "
            "directory), taking its arch and tokenizer"
        )
    data = runs.trained_data_config(step)
    fmt = data.get("prompt_format") or "native"
    if fmt != "native" or data.get("few_shot"):
        raise ValueError(
            f"init {init} was trained with data.prompt_format={fmt}, data.few_shot={data.get('few_shot')}: "
            "rejection sampling samples and fine-tunes (data=pairs) in MBPP's native zero-shot format"
        )
    return step


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); remove it to redo what it records") from err


def _write_json(path: Path, value: Any) -> None:
    """Write JSON through a temporary file and a rename."""
    atomic_write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())


def _write_pairs(path: Path, rows: Sequence[dict]) -> None:
    """Write pairs.jsonl through a temporary file and a rename."""
    atomic_write_bytes(path, "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8"))


def check_settings(output_dir: Path, settings: Mapping[str, Any]) -> None:
    """Record the settings in output_dir/rs_config.json, or check them against those of the rounds already there."""
    path = output_dir / SETTINGS_FILE
    if not path.is_file():
        _write_json(path, dict(settings))
        return
    previous = _read_json(path)
    for key, value in settings.items():
        if previous.get(key) != value:
            raise ValueError(
                f"{path}: the rounds in {output_dir} were made with {key}={previous.get(key)!r}, this run has "
                f"{key}={value!r}; use another output directory for other settings"
            )


class RejectionSampling:
    """The rounds of one output directory; `run()` does those not finished yet. See the module docstring.

    `source_factory` makes each round's completion source from the checkpoint it samples (default: the model,
    `model_completions`).
    """

    def __init__(
        self, settings: RejectionSamplingConfig, source_factory: SourceFactory | None = None
    ) -> None:
        self.settings = settings
        self.out = Path(settings.output_dir)
        self.source_factory = source_factory or partial(
            model_completions, device=settings.device, progress=settings.progress, quantize=settings.quantize
        )
        self.limits = SandboxLimits(timeout_s=settings.timeout_s)
        rows = load_mbpp(settings.mbpp_path)
        self.tasks = split_tasks(rows, "train")[: settings.limit]
        if not self.tasks:
            raise ValueError(f"{settings.mbpp_path}: no MBPP train tasks (task ids 601-974)")
        wanted = {str(task["task_id"]) for task in self.tasks}
        problems = build_problems("mbpp", rows, "native", split="train", few_shot=0)
        self.problems = [p for p in problems if p.task_id in wanted]

    def run(self) -> dict[str, Any]:
        """Do every round not finished yet; return the overall manifest (also written to <out>/manifest.json)."""
        settings = self.settings
        checkpoint = initial_checkpoint(settings.init)
        compose_recipe(settings.train_overrides)  # a bad override fails before any work
        self.out.mkdir(parents=True, exist_ok=True)
        check_settings(self.out, settings.settings())
        overall: dict[str, Any] = {"init": {"checkpoint": str(checkpoint), **_train_counts(checkpoint)}}
        overall["rounds"] = []
        for round_index in range(1, settings.rounds + 1):
            manifest = self.round(round_index, checkpoint)
            overall["rounds"].append(manifest)
            checkpoint = Path(manifest["checkpoint"])
            overall.update(
                final_run=manifest["run_dir"],
                final_checkpoint=manifest["checkpoint"],
                totals=_totals(overall["rounds"]),
            )
            _write_json(self.out / MANIFEST_FILE, overall)
        return overall

    def round(self, index: int, checkpoint: Path) -> dict[str, Any]:
        """Round `index`, sampled from `checkpoint`: each phase not done yet; returns its finished manifest."""
        round_dir = self.out / f"round_{index}"
        path = round_dir / MANIFEST_FILE
        manifest = _read_json(path) if path.is_file() else {"round": index, "status": PHASES[0]}
        phase = PHASES.index(manifest.get("status", PHASES[0]))
        if phase == len(PHASES) - 1 and Path(manifest["checkpoint"]).is_dir():
            logger.info("round %d: done already (%s), skipped", index, manifest["checkpoint"])
            return manifest
        manifest["sampled_from"] = str(checkpoint)
        manifest.setdefault("wall_s", {})
        if phase < 1:
            manifest.update(self.sample(index, checkpoint, round_dir / SAMPLES_DIR), status="sampled")
            _write_json(path, manifest)
        if phase < 2:
            manifest.update(self.filter(index, round_dir, manifest), status="filtered")
            _write_json(path, manifest)
        manifest.update(self.finetune(index, round_dir, checkpoint, manifest), status="done")
        _write_json(path, manifest)
        return manifest

    def sample(self, index: int, checkpoint: Path, samples_dir: Path) -> dict[str, Any]:
        """Phase 1: sample and score every task's completions (resuming samples_dir); the sampling counts."""
        settings, n = self.settings, self.settings.num_samples
        sampling = SamplingConfig(
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            seed=settings.seed + index - 1,
            batch_size=settings.batch_size or default_batch_size(settings.device, n),
            stop_strings=tuple(self.problems[0].stop_sequences),
        )
        logger.info(
            "round %d: sampling %d x %d completions from %s", index, len(self.problems), n, checkpoint
        )
        began = time.perf_counter()
        source = self.source_factory(checkpoint, sampling)
        summary = evaluate(
            self.problems,
            source,
            num_samples=n,
            ks=sorted({1, n}),
            output_dir=samples_dir,
            limits=self.limits,
            workers=settings.workers,
            config={
                "rejection_sampling_round": index,
                "checkpoint": str(checkpoint),
                **dataclasses.asdict(sampling),
            },
            progress=settings.progress,
            batch_size=max(1, sampling.batch_size // n),
        )
        records = self._records(samples_dir)
        prompt_length = getattr(source, "prompt_length", None)
        solved = {r["task_id"] for r in records if r["passed"]}
        counts = {
            "tasks": len(self.problems),
            "samples": len(records),
            "passing": sum(r["passed"] for r in records),
            "tasks_solved": len(solved),
            "pass_at_k": summary["pass_at_k"],
            # generated tokens, and the prompt tokens each sample's decoding read (None: the source does not say)
            "sampled_tokens": (
                sum(r["num_tokens"] for r in records) if all("num_tokens" in r for r in records) else None
            ),
            "prompt_tokens": n * sum(prompt_length(p) for p in self.problems) if prompt_length else None,
            "generation_seconds_all": summary["generation_seconds_all"],
            "samples_dir": str(samples_dir),
        }
        return {**counts, "wall_s": {"sampling": round(time.perf_counter() - began, 3)}}

    def _records(self, samples_dir: Path) -> list[dict]:
        """This round's sample records (the wanted ones of samples.jsonl) in task order, then sample index."""
        results = load_results(samples_dir / SAMPLES_FILE)
        n = self.settings.num_samples
        return [results[(p.task_id, i)] for p in self.problems for i in range(n)]

    def filter(self, index: int, round_dir: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Phase 2: the distinct passing completions the reward confirms, written as pairs.jsonl; the counts.

        NothingToTrainError when no pair results (nothing is written then)."""
        settings = self.settings
        began = time.perf_counter()
        records = self._records(round_dir / SAMPLES_DIR)
        references = {str(t["task_id"]): t["code"] for t in self.tasks} if settings.mix_reference else None
        distinct, counts = distinct_passing(records, references, settings.max_per_task)
        confirmed = recheck(distinct, self.problems, self.limits, settings.workers)
        kept = [record for record, ok in zip(distinct, confirmed, strict=True) if ok]
        by_id = {p.task_id: p for p in self.problems}
        rows = pair_rows(kept, self.tasks, by_id, index, settings.mix_reference)
        counts.update(recheck_failed=len(distinct) - len(kept), kept=len(kept), pairs=len(rows))
        if not rows:
            raise NothingToTrainError(
                f"round {index}: nothing to fine-tune on: {counts['passing']} of the {manifest['samples']} samples "
                f"({manifest['tasks']} tasks x {settings.num_samples}) passed their asserts, {len(kept)} kept "
                f"(records: {round_dir / SAMPLES_DIR}); sample more or at another temperature, start from a "
                "stronger run, or mix in MBPP's own solutions (mix_reference)"
            )
        pairs_path = round_dir / PAIRS_FILE
        _write_pairs(pairs_path, rows)
        logger.info(
            "round %d: %d passing, %d duplicates, %d over the cap, %d failed again: %d pairs in %s",
            index,
            counts["passing"],
            counts["duplicates"],
            counts["over_cap"],
            counts["recheck_failed"],
            len(rows),
            pairs_path,
        )
        wall = {**manifest["wall_s"], "filtering": round(time.perf_counter() - began, 3)}
        return {**counts, "pairs_path": str(pairs_path), "wall_s": wall}

    def finetune(
        self, index: int, round_dir: Path, checkpoint: Path, manifest: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Phase 3: fine-tune `checkpoint` on the round's pairs (resuming its run); the run's records."""
        from hrm_codegen.training import run as train

        run_dir = round_dir / RUN_DIR
        began = time.perf_counter()
        if not runs.finished(run_dir):
            logger.info("round %d: fine-tuning %s on %s", index, checkpoint, manifest["pairs_path"])
            train(training_config(self.settings, Path(manifest["pairs_path"]), checkpoint, run_dir), run_dir)
            command = (
                f"rejection sampling round {index}: {' '.join([RECIPE, *self.settings.train_overrides])}"
            )
            runs.write_wall_time(run_dir, round(time.perf_counter() - began, 3), command)
        seconds = runs.read_wall_time(
            run_dir
        )  # the attempt that finished the run (an earlier one's, if resumed)
        step = runs.latest_step_dir(run_dir)
        if step is None:
            raise ValueError(f"round {index}: fine-tuning wrote no checkpoint in {run_dir}")
        return {
            "run_dir": str(run_dir),
            "checkpoint": str(step),
            **_train_counts(step),
            "wall_s": {**manifest["wall_s"], "training": seconds},
        }


def _train_counts(step: Path) -> dict[str, int | None]:
    """Training tokens and optimizer steps a step's train state records (None where it has none)."""
    try:
        state = runs.read_train_state(step)
    except FileNotFoundError:
        return {"training_tokens": None, "training_steps": None}
    return {"training_tokens": state.get("tokens_seen"), "training_steps": state.get("step")}


def _totals(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sums over rounds of the compute they record (None when a round does not know its share)."""

    def total(values: list[Any]) -> Any:
        return None if any(v is None for v in values) else round(sum(values), 3)

    keys = ("sampled_tokens", "prompt_tokens", "training_tokens", "samples", "pairs")
    sums = {key: total([r.get(key) for r in rounds]) for key in keys}
    phases = sorted({phase for r in rounds for phase in r["wall_s"]})
    wall = {phase: total([r["wall_s"].get(phase, 0.0) for r in rounds]) for phase in phases}
    return {**sums, "wall_s": {**wall, "all": total(list(wall.values()))}}


def run_rounds(
    settings: RejectionSamplingConfig, source_factory: SourceFactory | None = None
) -> dict[str, Any]:
    """Run (or resume) rejection-sampling fine-tuning as `settings` say; the overall manifest."""
    return RejectionSampling(settings, source_factory).run()
