"""The rows of the results tables, read from configs/results/<group>.yaml (one file per table).

A row is a label and what to run: training stages (a run name and Hydra overrides each, the last one evaluated),
or an outside model to evaluate zero-shot, or another row whose final step it evaluates; and the evaluation's
settings. configs/results/README.md describes every key. Reading composes no config: the step counts a row
derives from configs (`flops_matched_to`, `layers_matched_to`, `source_flops_matched_to`) are computed when it runs
(`hrm_codegen.reproduction`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROWS_DIR = Path(__file__).resolve().parents[1] / "configs" / "results"


class RowsFileError(ValueError):
    """A rows file that is not what the loader expects; the message names the file, the row and the key."""


@dataclass(frozen=True)
class Prep:
    """A command a row runs before training (`python` and its arguments), skipped when `done` exists."""

    command: tuple[str, ...]
    done: str  # a path relative to the repository


@dataclass(frozen=True)
class Stage:
    """One training run: its run name and the overrides that select the recipe and the model."""

    run_name: str
    overrides: tuple[str, ...]
    # a row: train.max_steps keeps the layer evaluations of its final run (or ckpt)
    layers_matched_to: str = ""
    # a row that post-trains the retrofit's source: train.max_steps keeps that run's analytic training FLOPs (the
    # HRM's steps at the cycles and bp_steps each trains at, against the source's: recurrence.source_matched_steps)
    source_flops_matched_to: str = ""


@dataclass(frozen=True)
class Row:
    """A row of one results table (`group`): a label, what it trains or evaluates, and how it is evaluated.

    The batch sizes are the evaluation's sequences per generate call; `sampled_limit` is the sampled
    evaluation's problem count when --sampled-limit is not given; `humaneval` adds greedy pass@1 on all of
    HumanEval; `mbppplus` adds greedy MBPP+ (EvalPlus's source file, the tasks outside MBPP train); `eval_args`
    go to every evaluate.py call. `ckpt` is a run directory the row's prepare commands write (a
    rejection-sampling round's fine-tuning run), evaluated instead of a stage's run; `execution_manifest` a
    rejection-sampling manifest whose sampling totals the record keeps. `seed_of` names the row this one
    repeats with another seed. `test_overrides` (`KEY=VALUE` each, e.g. L_cycles=3) evaluates the model once per
    override (`evaluate.py --arch-override`), greedy on MBPP and, with `mbppplus`, on MBPP+: test-time cycles.
    """

    label: str
    group: str
    greedy_batch: int
    sampled_batch: int
    stages: tuple[Stage, ...] = ()
    flops_matched_to: tuple[str, ...] = ()
    corpus_tokens: int | None = None
    sampled_limit: int | None = None
    humaneval: bool = False
    eval_args: tuple[str, ...] = ()
    prepare: tuple[Prep, ...] = ()
    model: str = ""
    evaluates: str = ""
    ckpt: str = ""
    mbppplus: bool = False
    execution_manifest: str = ""
    test_overrides: tuple[str, ...] = ()
    seed_of: str = ""


ROW_KEYS = {f.name for f in dataclasses.fields(Row)} - {"group", "seed_of"}
STAGE_KEYS = {f.name for f in dataclasses.fields(Stage)}


def load_rows(groups: Sequence[str], directory: Path = ROWS_DIR) -> dict[str, Row]:
    """Every row of `directory/<group>.yaml` for each group, in file order; a RowsFileError on bad input."""
    unknown = sorted(p.name for p in directory.glob("*.yaml") if p.stem not in groups)
    if unknown:
        raise RowsFileError(f"{directory}: {unknown} name no results table; expected {list(groups)}.yaml")
    rows: dict[str, Row] = {}
    files: dict[str, Path] = {}
    for group in groups:
        path = directory / f"{group}.yaml"
        for name, row in read_group(path, group).items():
            if name in rows:
                raise RowsFileError(f"{path}: row {name}: already defined in {files[name]}")
            rows[name], files[name] = row, path
    for name, row in rows.items():
        where = f"{files[name]}: row {name}"
        targets = [("evaluates", row.evaluates)]
        for s in row.stages:
            targets += [("layers_matched_to", s.layers_matched_to)]
            targets += [("source_flops_matched_to", s.source_flops_matched_to)]
        for key, target in targets:
            trains = target in rows and (rows[target].stages or (key != "evaluates" and rows[target].ckpt))
            if target and not trains:
                raise RowsFileError(f"{where}: key {key}: {target!r} is not a row that trains")
    return rows


def read_group(path: Path, group: str) -> dict[str, Row]:
    """The rows of one group's file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise RowsFileError(f"{path}: cannot be read ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise RowsFileError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict) or not set(data) <= {"defaults", "rows"}:
        raise RowsFileError(f"{path}: expected a mapping with `rows` (and optionally `defaults`)")
    defaults, entries = data.get("defaults") or {}, data.get("rows")
    if not isinstance(entries, dict) or not entries:
        raise RowsFileError(f"{path}: key rows: expected a mapping of row names to rows")
    if not isinstance(defaults, dict):
        raise RowsFileError(f"{path}: key defaults: expected a mapping of row keys")
    rows: dict[str, Row] = {}
    for name, entry in entries.items():
        where = f"{path}: row {name}"
        if not isinstance(entry, dict):
            raise RowsFileError(f"{where}: expected a mapping of row keys")
        if "seed_of" in entry:
            rows[name] = seed_variant(entry, rows, where)
        else:
            rows[name] = parse_row({**defaults, **entry}, group, where)
    return rows


def seed_variant(entry: dict[str, Any], rows: dict[str, Row], where: str) -> Row:
    """The row of `entry` ({seed_of: ROW, seed: N}): ROW, defined above it, with seed N."""
    if set(entry) != {"seed_of", "seed"}:
        raise RowsFileError(
            f"{where}: a seed variant has exactly the keys seed_of and seed, got {sorted(entry)}"
        )
    base = expect(entry["seed_of"], str, "a row name", f"{where}: key seed_of")
    seed = expect(entry["seed"], int, "an integer", f"{where}: key seed")
    if base not in rows or not rows[base].stages:
        raise RowsFileError(f"{where}: key seed_of: {base!r} is not a row that trains defined above it")
    return dataclasses.replace(with_seed(rows[base], seed), seed_of=base)


def parse_row(entry: dict[str, Any], group: str, where: str) -> Row:
    """A Row from a file's row mapping (its defaults merged in), every key checked."""
    unknown = sorted(set(entry) - ROW_KEYS)
    if unknown:
        raise RowsFileError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(ROW_KEYS)}")
    missing = [key for key in ("label", "greedy_batch", "sampled_batch") if key not in entry]
    if missing:
        raise RowsFileError(f"{where}: key {missing[0]} is missing")

    def get(key: str, kind: type | tuple[type, ...], what: str, default: Any = None) -> Any:
        return expect(entry.get(key, default), kind, what, f"{where}: key {key}")

    row = Row(
        label=get("label", str, "a string"),
        group=group,
        greedy_batch=get("greedy_batch", int, "an integer"),
        sampled_batch=get("sampled_batch", int, "an integer"),
        stages=tuple(
            parse_stage(s, f"{where}: stage {i}") for i, s in enumerate(get("stages", list, "a list", []))
        ),
        flops_matched_to=strings(entry.get("flops_matched_to", []), f"{where}: key flops_matched_to"),
        corpus_tokens=get("corpus_tokens", (int, type(None)), "an integer"),
        sampled_limit=get("sampled_limit", (int, type(None)), "an integer or null"),
        humaneval=get("humaneval", bool, "true or false", False),
        eval_args=strings(entry.get("eval_args", []), f"{where}: key eval_args"),
        prepare=tuple(
            parse_prep(p, f"{where}: prepare {i}") for i, p in enumerate(get("prepare", list, "a list", []))
        ),
        model=get("model", str, "a directory", ""),
        evaluates=get("evaluates", str, "a row name", ""),
        ckpt=get("ckpt", str, "a run directory", ""),
        mbppplus=get("mbppplus", bool, "true or false", False),
        execution_manifest=get("execution_manifest", str, "a manifest path", ""),
        test_overrides=strings(entry.get("test_overrides", []), f"{where}: key test_overrides"),
    )
    malformed = [o for o in row.test_overrides if not o.partition("=")[0] or not o.partition("=")[2]]
    if malformed:
        raise RowsFileError(
            f"{where}: key test_overrides: expected KEY=VALUE (e.g. L_cycles=3), got {malformed[0]!r}"
        )
    if sum(map(bool, (row.stages, row.model, row.evaluates, row.ckpt))) != 1:
        raise RowsFileError(
            f"{where}: expected exactly one of stages, model (zero-shot), evaluates (a row) or ckpt (a run "
            "its prepare commands write)"
        )
    if row.ckpt and not row.prepare:
        raise RowsFileError(f"{where}: key ckpt: {row.ckpt!r} needs the prepare commands that write it")
    if row.flops_matched_to:
        for i, stage in enumerate(row.stages):
            if sum(o.startswith("experiment=") for o in stage.overrides) != 1:
                raise RowsFileError(
                    f"{where}: stage {i}: key overrides: flops_matched_to needs one experiment= override"
                )
            if stage.layers_matched_to or stage.source_flops_matched_to:
                raise RowsFileError(
                    f"{where}: stage {i}: flops_matched_to and a stage's layers_matched_to or "
                    "source_flops_matched_to both set"
                )
    for i, stage in enumerate(row.stages):
        if stage.layers_matched_to and stage.source_flops_matched_to:
            raise RowsFileError(f"{where}: stage {i}: layers_matched_to and source_flops_matched_to both set")
    return row


def parse_stage(entry: Any, where: str) -> Stage:
    """A Stage from its mapping (run_name, overrides, optional layers_matched_to or source_flops_matched_to)."""
    expect(entry, dict, "a mapping with run_name and overrides", where)
    unknown = sorted(set(entry) - STAGE_KEYS)
    if unknown or not {"run_name", "overrides"} <= set(entry):
        raise RowsFileError(
            f"{where}: expected the keys run_name, overrides (and layers_matched_to or source_flops_matched_to), "
            f"got {sorted(entry)}"
        )
    return Stage(
        run_name=expect(entry["run_name"], str, "a string", f"{where}: key run_name"),
        overrides=strings(entry["overrides"], f"{where}: key overrides"),
        layers_matched_to=expect(
            entry.get("layers_matched_to", ""), str, "a row name", f"{where}: key layers_matched_to"
        ),
        source_flops_matched_to=expect(
            entry.get("source_flops_matched_to", ""),
            str,
            "a row name",
            f"{where}: key source_flops_matched_to",
        ),
    )


def parse_prep(entry: Any, where: str) -> Prep:
    """A Prep from its mapping (command: python's arguments, done: the path that marks it done)."""
    if not isinstance(entry, dict) or set(entry) != {"command", "done"}:
        raise RowsFileError(f"{where}: expected a mapping with the keys command and done, got {entry!r}")
    return Prep(
        strings(entry["command"], f"{where}: key command"),
        expect(entry["done"], str, "a path", f"{where}: key done"),
    )


def expect(value: Any, kind: type | tuple[type, ...], what: str, where: str) -> Any:
    """`value` when it is of `kind` (a bool is no integer here); else a RowsFileError naming `where`."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise RowsFileError(f"{where}: expected {what}, got {value!r}")
    return value


def strings(value: Any, where: str) -> tuple[str, ...]:
    """A list of strings as a tuple; else a RowsFileError naming `where`."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RowsFileError(f"{where}: expected a list of strings, got {value!r}")
    return tuple(value)


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
