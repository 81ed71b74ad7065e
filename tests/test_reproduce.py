"""scripts/reproduce.py: the rows (configs/results/) load and are consistent, nothing composes a config before a
row runs, and the results tables group and annotate rows."""

import argparse
import dataclasses
import gzip
import importlib.util
import json
from pathlib import Path

import hydra
import pytest

from hrm_codegen import report, reproduction
from hrm_codegen.recurrence import cycles_at
from hrm_codegen.result_rows import Row, RowsFileError, Stage, load_rows
from hrm_codegen.train_config import compose_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "reproduce.py"


@pytest.fixture(scope="module")
def rows() -> dict[str, Row]:
    """The rows of configs/results/."""
    return load_rows(list(report.GROUPS))


def _arch(overrides: tuple[str, ...]) -> list[str]:
    return [o for o in overrides if o.startswith("arch=")]


def test_every_row_composes_and_later_stages_start_from_the_previous_run_with_the_same_model(rows):
    for name, row in rows.items():
        configs = [compose_config([*stage.overrides, f"run_name={stage.run_name}"]) for stage in row.stages]
        if any(cfg.data.name == "corpus" for cfg in configs):
            assert row.corpus_tokens, name  # scripts/build_corpus.py --max-tokens
        for before, after, cfg in zip(row.stages, row.stages[1:], configs[1:], strict=False):
            assert Path(str(cfg.train.init_from)) == Path("checkpoints") / before.run_name, name
            assert _arch(before.overrides) == _arch(after.overrides), name
            assert configs[0].arch.name == cfg.arch.name
        assert row.group in report.GROUPS


def test_gpu_rows_share_one_token_budget_and_run_in_bf16(rows):
    gpu = [row for row in rows.values() if row.group == "gpu"]
    assert len(gpu) == 3
    budgets = set()
    for row in gpu:
        for stage in row.stages:
            cfg = compose_config(list(stage.overrides))
            assert cfg.train.mixed_precision == "bf16"
            budgets.add((cfg.data.name, cfg.train.max_steps, cfg.train.epochs, cfg.train.global_batch_size))
    assert len(budgets) == 2  # one pre-training budget and one fine-tuning budget for every model


def test_flop_matched_steps_are_the_steps_the_recorded_runs_trained_for(rows):
    """flops_matched_to, computed when a row runs, gives the step counts of the runs in docs/results."""
    matched = [n for n, row in rows.items() if row.flops_matched_to and not row.seed_of]
    assert len(matched) == 7
    for name in matched:
        record = REPO / "docs" / "results" / name / "row.json"
        if not record.is_file():
            continue
        row = rows[name]
        steps = [
            reproduction.flop_matched_steps(row, stage, reproduction.stage_config(stage))
            for stage in row.stages
        ]
        assert steps == [stage["steps"] for stage in json.loads(record.read_text())["stages"]], name


def _record(row: str, label: str, group: str, notes: list[str] | None = None) -> dict:
    evaluation = {"num_problems": 500, "pass_at_k": {"1": 0.004}, "syntax_valid_rate": 0.5}
    evaluation["empty_completion_rate"] = 0.25
    record = {
        "row": row,
        "label": label,
        "group": group,
        "parameters": 1234,
        "training_tokens": 5678,
        "hardware": "hw",
        "date": "2026-11-22",
        "train_wall_s": 90.0,
        "val_loss": 1.5,
        "greedy": evaluation,
        "sampled": None,
        "reproduce": f"python scripts/reproduce.py {row}",
        "commands": [f"python scripts/train_codegen.py run_name={row}"],
    }
    if notes:
        record["notes"] = notes
    return record


def test_table_renders_rows_notes_and_commands():
    lines = report.table([_record("a", "Model A", "gpu", ["2 samples lost"])], "gpu")
    text = "\n".join(lines)
    assert text.startswith("## MBPP results on one GPU")
    assert "| Model A | 1,234 | 5,678 | hw, 2026-11-22 | 1.5 min | 0.4% (of 500) | not run |" in text
    assert "| 50.0% / not run | 25.0% / not run | 1.500 |" in text
    assert "- Model A: 2 samples lost" in text
    assert "python scripts/train_codegen.py run_name=a" in text
    assert "mbpp_gpu.png" in text
    assert "Notes on the measurements" not in "\n".join(report.table([_record("b", "B", "cpu")], "cpu"))


def test_the_compare_seed_table_puts_a_model_s_seeds_on_one_line(rows, tmp_path):
    records = [
        _record("pretrain_then_mbpp_hrm", "HRM", "compare"),
        _record("pretrain_then_mbpp_hrm_prenorm", "HRM pre-norm", "compare"),
        {**_record("pretrain_then_mbpp_hrm_s1", "HRM, seed 1", "compare"), "val_loss": 1.7},
    ]
    text = report.markdown(records, rows, tmp_path, lambda record: 2e12)
    assert "| HRM | 2 | 1.500 / 1.700 | 1.600 | 0.100 | 2.00 | 0.4% |" in text
    assert "| HRM pre-norm | 1 | 1.500 | 1.500 | 0.000 | 2.00 | 0.4% |" in text


def test_an_epoch_based_stage_counts_as_finished_and_is_not_rerun(tmp_path, monkeypatch, gpt2_dir, mbpp_path):
    """Running a row's stage twice leaves metrics.jsonl and wall_time.json as the first run wrote them."""
    (tmp_path / "scripts").symlink_to(SCRIPT.parent)
    monkeypatch.setattr(reproduction, "REPO", tmp_path)
    stage = Stage(
        "epochs_stage",
        (
            "arch=tiny",
            "arch.hidden_size=32",
            "arch.seq_len=128",
            "train.max_steps=null",
            "train.epochs=1",
            "data.train_limit=8",
            "train.global_batch_size=4",
            "train.eval_every=0",
            "train.num_threads=1",
        ),
    )
    row = Row("epochs", "cpu", greedy_batch=1, sampled_batch=1, stages=(stage,))
    args = argparse.Namespace(mbpp=str(mbpp_path), tokenizer=str(gpt2_dir), corpus=None)
    command = reproduction.train_command({}, row, stage, reproduction.stage_config(stage), args)
    first = reproduction.train_stage(stage, command, [])
    run_dir = tmp_path / "checkpoints" / "epochs_stage"
    assert first["steps"] == 2  # 8 examples / 4 per step, one epoch
    metrics, wall = (run_dir / "metrics.jsonl").read_bytes(), (run_dir / "wall_time.json").read_bytes()
    second = reproduction.train_stage(stage, command, [])
    assert second["steps"] == 2 and second["train_wall_s"] == first["train_wall_s"]
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics
    assert (run_dir / "wall_time.json").read_bytes() == wall


RETROFIT_ROWS = (
    "retrofit_source_native",
    "retrofit_source_chat",
    "retrofit_posttrain",
    "retrofit_posttrain_s1",
    "retrofit_identity",
    "retrofit_L15x2",
    "retrofit_L15x2_s1",
    "retrofit_L15x2_test_L3",
    "retrofit_L15x2_test_L1",
    "retrofit_L15x2_test_L4",
)


def test_layer_matched_steps_spend_at_most_the_reference_layer_evaluations():
    schedule = [[0.0, 1, 1], [0.25, 1, 2]]
    assert reproduction.layer_matched_steps(42, 30, schedule, 15, 15) == 30  # 8 x 30 + 22 x 45 = 1230 <= 1260
    assert (
        reproduction.layer_matched_steps(42, 30, [[0.0, 1, 1]], 15, 15) == 42
    )  # the identity: the same steps
    assert reproduction.layer_matched_steps(42, 30, [[0.0, 1, 2]], 15, 15) == 28  # 28 x 45 = 1260

    def cost(steps: int) -> int:  # as the trainer runs the schedule
        return sum(
            h * (l_cycles * 15 + 15) for h, l_cycles in (cycles_at(s, steps, schedule) for s in range(steps))
        )

    for reference in (10, 42, 100):
        steps = reproduction.layer_matched_steps(reference, 30, schedule, 15, 15)
        assert cost(steps) <= reference * 30 < cost(steps + 1)


def test_a_row_s_final_run_is_its_ckpt_else_its_last_stage(rows):
    assert (
        reproduction.final_run_dir(rows["rs1_mix_L15x2"])
        == reproduction.REPO / "checkpoints/rs_L15x2_mix/round_1/run"
    )
    assert (
        reproduction.final_run_dir(rows["sft_more_L15x2"]) == reproduction.REPO / "checkpoints/sft_more_L15x2"
    )
    two = dataclasses.replace(rows["sft_more_L15x2"], stages=(Stage("first", ()), Stage("second", ())))
    assert reproduction.final_run_dir(two) == reproduction.REPO / "checkpoints/second"
    with pytest.raises(ValueError, match="no final run"):
        reproduction.final_run_dir(rows["exec_sft_L15x2"])  # it evaluates another row's run


def test_the_retrofit_rows_count_no_steps_by_hand(rows):
    """The retrofit rows' config-derived values (train.max_steps) are computed when a row runs."""
    assert set(RETROFIT_ROWS) <= set(rows)
    for name in RETROFIT_ROWS:
        row = rows[name]
        assert row.group == "retrofit" and (row.greedy_batch, row.sampled_batch) == (8, 20)
        assert row.sampled_limit == 100
        assert not any(o.startswith("train.max_steps=") for stage in row.stages for o in stage.overrides)
        assert row.humaneval == (name not in ("retrofit_L15x2_test_L1", "retrofit_L15x2_test_L4"))


def test_no_row_counts_train_steps_by_hand(rows):
    """Step counts come from the experiment configs, or are matched when the row runs."""
    overrides = [o for row in rows.values() for stage in row.stages for o in stage.overrides]
    assert not [
        o for o in overrides if o.startswith(("train.max_steps=", "train.epochs=", "data.corpus_dir="))
    ]


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    """hrm_codegen.reproduction on a temporary repository whose commands are faked: each writes the outputs the real one
    would (source, retrofit step 0, a finished run, an evaluation summary); the commands run are listed."""
    executed: list[list[str]] = []

    def write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def step(run: Path, n: int, arch: str, state: dict, hf_layers: int | None = None) -> None:
        write(run / f"step_{n}" / "meta.json", "{}")
        write(run / f"step_{n}" / "config.yaml", arch)
        write(run / f"step_{n}" / "train_state.json", json.dumps({"step": n, "total_steps": n, **state}))
        if hf_layers:
            write(run / f"step_{n}" / "hf" / "config.json", json.dumps({"num_hidden_layers": hf_layers}))
        write(run / "latest", f"step_{n}")

    def execute(command: list[str]) -> float:
        executed.append(command)
        script, rest = command[1], command[2:]
        flag = {a: b for a, b in zip(rest, rest[1:], strict=False) if a.startswith("--")}
        if script == "scripts/fetch_pretrained.py":
            write(tmp_path / flag["--out"] / "source.json", "{}")
            write(tmp_path / flag["--out"] / "config.json", json.dumps({"num_hidden_layers": 30}))
        elif script == "scripts/retrofit.py":
            arch = f"arch:\n  name: hrm\n  H_cycles: 1\n  L_cycles: {flag.get('--L-cycles', 1)}\n"
            step(tmp_path / flag["--out"], 0, arch + "  H_layers: 15\n  L_layers: 15\n", {"tokens_seen": 0})
        elif script == "scripts/train_codegen.py":
            cfg = dict(o.partition("=")[::2] for o in rest)
            run, steps = tmp_path / "checkpoints" / cfg["run_name"], int(cfg.get("train.max_steps", 42))
            init = tmp_path / cfg.get("train.init_from", "none") / "step_0" / "config.yaml"
            if init.is_file():  # the retrofitted arch (train.arch_from_init)
                arch = init.read_text()
                step(run, steps, arch, {"tokens_seen": 2000 * steps})
            else:
                step(run, steps, "arch:\n  name: transformer\n", {"tokens_seen": 2000 * steps}, hf_layers=30)
            write(
                run / "metrics.jsonl",
                f'{{"step": 0, "val_loss": 1.342}}\n{{"step": {steps}, "val_loss": 1.1}}\n',
            )
        elif script == "scripts/rejection_sample.py":
            out = tmp_path / flag["--out"]
            init = tmp_path / flag["--init"]
            arch = (init / (init / "latest").read_text() / "config.yaml").read_text()
            hf_layers = 30 if "name: transformer" in arch else None  # a transformer's step exports hf/
            step(out / "round_1" / "run", 12, arch, {"tokens_seen": 20658}, hf_layers=hf_layers)
            write(out / "round_1" / "run" / "metrics.jsonl", '{"step": 12, "val_loss": 1.038}\n')
            write(
                out / "round_1" / "run" / "wall_time.json",
                json.dumps({"train_wall_s": 921.0, "command": "x"}),
            )
            totals = {"samples": 1496, "pairs": 81, "sampled_tokens": 77919, "prompt_tokens": 178452}
            totals |= {"training_tokens": 20658, "wall_s": {"sampling": 3853.0, "training": 921.0}}
            write(out / "manifest.json", json.dumps({"rounds": [{}], "totals": totals}))
        elif script == "scripts/evaluate.py" and "mbppplus" in rest:
            # MBPP+ outside MBPP train: task 12 passes, 13 passes base only, 600 (not in the test split) passes
            lines = [
                {"task_id": "12", "sample_index": 0, "passed": True, "result": "passed", "detail": None},
                {
                    "task_id": "13",
                    "sample_index": 0,
                    "passed": False,
                    "result": "failed",
                    "detail": "PlusTestsFailed",
                },
                {
                    "task_id": "14",
                    "sample_index": 0,
                    "passed": False,
                    "result": "failed",
                    "detail": "BaseTestsFailed",
                },
                {"task_id": "600", "sample_index": 0, "passed": True, "result": "passed", "detail": None},
            ]
            summary = {"num_problems": 4, "pass_at_k": {"1": 0.5}, "base_pass_at_k": {"1": 0.75}}
            write(
                tmp_path / flag["--output"] / "summary.json",
                json.dumps({**summary, "syntax_valid_rate": 1.0, "generation_seconds_all": 60}),
            )
            write(tmp_path / flag["--output"] / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in lines))
        elif script == "scripts/evaluate.py":
            problems = 164 if "humaneval" in rest else int(flag.get("--limit", 500))
            summary = {
                "num_problems": problems,
                "pass_at_k": {"1": 0.25, "10": 0.5},
                "syntax_valid_rate": 0.75,
            }
            write(
                tmp_path / flag["--output"] / "summary.json",
                json.dumps({**summary, "generation_seconds": 90, "generation_seconds_all": 90}),
            )
            write(
                tmp_path / flag["--output"] / "samples.jsonl", json.dumps({"task_id": 1, "completion": "x"})
            )
        return 1.0

    monkeypatch.setattr(reproduction, "REPO", tmp_path)
    monkeypatch.setattr(reproduction, "RESULTS", tmp_path / "docs" / "results")
    monkeypatch.setattr(reproduction, "execute", execute)
    monkeypatch.setattr(reproduction, "count_parameters", lambda path, outside: 134515008)
    monkeypatch.setattr(reproduction, "empty_rate", lambda samples, mbpp, problems: 0.0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    args = argparse.Namespace(
        mbpp="data/mbpp/mbpp.jsonl",
        mbppplus="../shared/data/evalplus/MbppPlus.jsonl",
        tokenizer="gpt2",
        corpus=None,
        greedy_limit=None,
        sampled_limit=None,
        greedy_only=False,
        hardware="hw",
        row_flags=[],
    )
    return args, executed


SMOLLM2 = "sources/smollm2-135m-instruct"
TRAIN_ARGS = "data.path=data/mbpp/mbpp.jsonl tokenizer.name_or_path=gpt2"
EVAL = "python scripts/evaluate.py"
MBPP = "--mbpp data/mbpp/mbpp.jsonl --split test --max-new-tokens 128"
GREEDY = "--num-samples 1 --temperature 0 --k 1 --batch-size 8"
SAMPLED = "--num-samples 20 --temperature 0.8 --top-p 0.95 --k 1,10 --batch-size 20 --limit 100"


def _evals(model: str, out: str, extra: str = "", humaneval: bool = True) -> list[str]:
    tail = f"{extra} --no-progress --output outputs/eval/{out}".lstrip()
    return [
        f"{EVAL} {model} {MBPP} {GREEDY} {tail}/greedy",
        f"{EVAL} {model} {MBPP} {SAMPLED} {tail}/sampled",
        *([f"{EVAL} {model} --dataset humaneval --max-new-tokens 128 {GREEDY} {tail}/humaneval"] * humaneval),
    ]


def test_retrofit_rows_run_their_commands_and_the_table_shows_them(rows, fake_repo, tmp_path):
    args, executed = fake_repo
    fetch = f"python scripts/fetch_pretrained.py smollm2-135m-instruct --out {SMOLLM2}"
    retrofit = f"python scripts/retrofit.py --source {SMOLLM2} --out checkpoints/retro_L15x2 --l-layers 0:15"
    retrofit += " --h-layers 15:30 --L-cycles 2"
    with pytest.raises(SystemExit, match="run `python scripts/reproduce.py retrofit_posttrain` first"):
        reproduction.reproduce(rows, "retrofit_L15x2", args)
    assert [reproduction.shell(c) for c in executed] == [
        fetch,
        retrofit,
    ]  # prepared, then stopped before training

    posttrain = reproduction.reproduce(rows, "retrofit_posttrain", args)
    assert posttrain["commands"] == [
        fetch,
        f"python scripts/train_codegen.py experiment=posttrain_mbpp run_name=retrofit_posttrain {TRAIN_ARGS}",
        *_evals("--ckpt checkpoints/retrofit_posttrain/step_42", "retrofit_posttrain"),
    ]
    assert posttrain["layer_evals_per_token"] == 30 and posttrain["humaneval"]["num_problems"] == 164
    assert len(executed) == 2 + 4  # the source was there: not fetched again

    recurrent = reproduction.reproduce(rows, "retrofit_L15x2", args)
    assert recurrent["commands"] == [
        fetch,
        retrofit,
        "python scripts/train_codegen.py experiment=retrofit_mbpp train.init_from=checkpoints/retro_L15x2 "
        "'train.cycles_schedule=[[0.0,1,1],[0.25,1,2]]' '+train.arch_overrides={recurrence_gate_lr_scale: 300}' "
        f"train.max_steps=30 run_name=retrofit_L15x2_ft {TRAIN_ARGS}",
        *_evals("--ckpt checkpoints/retrofit_L15x2_ft/step_30", "retrofit_L15x2"),
    ]
    assert recurrent["layer_evals_per_token"] == 45 and recurrent["train_wall_s"] == 1.0

    test_time = reproduction.reproduce(rows, "retrofit_L15x2_test_L3", args)
    assert test_time["commands"] == _evals(
        "--ckpt checkpoints/retrofit_L15x2_ft/step_30", "retrofit_L15x2_test_L3", "--arch-override L_cycles=3"
    )
    assert test_time["layer_evals_per_token"] == 60 and test_time["val_loss"] is None
    assert test_time["training_tokens"] == recurrent["training_tokens"]
    one = reproduction.reproduce(rows, "retrofit_L15x2_test_L1", args)
    assert one["commands"][-1].endswith(
        "--arch-override L_cycles=1 --no-progress --output outputs/eval/retrofit_L15x2_test_L1/sampled"
    )
    assert one["humaneval"] is None and one["layer_evals_per_token"] == 30

    zero_shot = reproduction.reproduce(rows, "retrofit_source_chat", args)
    assert zero_shot["commands"] == [
        fetch,
        *_evals(f"--model {SMOLLM2}", "retrofit_source_chat", "--prompt-format chat"),
    ]
    assert zero_shot["training_tokens"] == 0 and zero_shot["train_wall_s"] is None
    assert zero_shot["layer_evals_per_token"] == 30
    results = tmp_path / "docs" / "results"
    assert (results / "retrofit_source_chat" / "humaneval.json").is_file()
    assert not (results / "retrofit_source_chat" / "metrics.jsonl").exists()

    reproduction.write_table(rows)
    text = (results / "results.md").read_text()
    assert "## Retrofitting SmolLM2-135M-Instruct into the HRM vs post-training it (CPU)" in text
    assert (
        "| SmolLM2-135M-Instruct, zero-shot, chat template | 30 | 0 | none (zero-shot) | 25.0% (of 500) "
        "| 25.0% (of 164) | 50.0% (of 100) | 75.0% / 75.0% | 1.342 | 1.5 + 1.5 min |"
    ) in text
    assert "| SmolLM2 post-trained on MBPP, 30 layers | 30 | 84,000 | 0.0 min | 25.0% (of 500) |" in text
    assert "evaluated with 3 L cycles at test time | 60 | 60,000 | 0.0 min |" in text
    assert "| 75.0% / 75.0% | n/a | 1.5 + 1.5 min |" in text  # the test-time row's loss
    assert "evaluated with 1 L cycle at test time | 30 |" in text
    assert "| not run | 50.0% (of 100) | 75.0% / 75.0% | n/a | 1.5 min |" in text  # no HumanEval
    assert "| SmolLM2 post-trained on MBPP, 30 layers | 1.100 | 1.100 | 0.000 | 25.0% | 25.0% |" in text
    plots = [c for c in executed if c[1] == "scripts/plot_runs.py"]
    assert len(plots) == 1 and "mbpp_retrofit.png" in plots[0][3]
    runs = plots[0][plots[0].index("--runs") + 1 : plots[0].index("--evals")]
    assert runs == ["docs/results/retrofit_posttrain", "docs/results/retrofit_L15x2"]  # those with metrics


def test_execution_rows_record_sampling_mbppplus_and_a_step_matched_control(rows, fake_repo, tmp_path):
    """The execution table: the SFT start evaluated on MBPP and MBPP+, a rejection-sampling row (the run its
    prepare command writes, the manifest's sampled tokens and wall time), and the control trained for as many
    steps as that round; MBPP+ base and plus, the test-split tasks and the base passes that fail plus."""
    args, executed = fake_repo
    args.greedy_only = True
    reproduction.reproduce(rows, "retrofit_posttrain", args)
    reproduction.reproduce(rows, "retrofit_L15x2", args)
    plus = "--dataset mbppplus --data-file ../shared/data/evalplus/MbppPlus.jsonl --exclude-train-overlap"
    tail = "--max-new-tokens 128 --num-samples 1 --temperature 0 --k 1 --batch-size 8 --quantize fp16 --no-progress"

    start = reproduction.reproduce(rows, "exec_sft_L15x2", args)
    sft = "--ckpt checkpoints/retrofit_L15x2_ft/step_30"
    assert start["commands"] == [
        f"{EVAL} {sft} {MBPP.replace(' --max-new-tokens 128', '')} {tail} --output outputs/eval/exec_sft_L15x2/greedy",
        f"{EVAL} {sft} {plus} {tail} --output outputs/eval/exec_sft_L15x2/mbppplus",
    ]
    assert start["mbppplus"]["base_pass_at_k"] == {"1": 0.75}
    assert start["mbppplus"]["test_split"] == {"num_problems": 3, "base_pass_at_1": 2 / 3, "pass_at_1": 1 / 3}

    rs = reproduction.reproduce(rows, "rs1_mix_L15x2", args)
    assert rs["commands"][0].startswith(
        "python scripts/rejection_sample.py --init checkpoints/retrofit_L15x2_ft --out checkpoints/rs_L15x2_mix"
    )
    assert rs["commands"][1].startswith(f"{EVAL} --ckpt checkpoints/rs_L15x2_mix/round_1/run/step_12 ")
    assert rs["stages"][0]["steps"] == 12 and rs["training_tokens"] == 20658 and rs["val_loss"] == 1.038
    assert rs["execution"]["sampled_tokens"] == 77919 and rs["ckpt"] == "checkpoints/rs_L15x2_mix/round_1/run"
    results = tmp_path / "docs" / "results"
    with gzip.open(results / "rs1_mix_L15x2" / "mbppplus.samples.jsonl.gz", "rt") as packed:
        assert len(packed.read().splitlines()) == 4  # the completions, for re-scoring
    assert (results / "rs1_mix_L15x2" / "metrics.jsonl").is_file()

    control = reproduction.reproduce(rows, "sft_more_L15x2", args)
    train = [c for c in control["commands"] if "train_codegen.py" in c]
    assert len(train) == 1 and "train.max_steps=12 " in train[0]  # the round's steps: the same model
    assert not [c for c in control["commands"] if "build_pairs.py" in c]  # the round's pairs: its prepare's
    assert "'data.pairs_sources=[mbpp/train]'" in train[0]

    # the post-trained source's control: a 30-layer transformer matched to its own round's 30-layer steps
    reproduction.reproduce(rows, "rs1_mix_posttrain", args)
    source_control = reproduction.reproduce(rows, "sft_more_posttrain", args)
    train = [c for c in source_control["commands"] if "train_codegen.py" in c]
    assert len(train) == 1 and "train.init_from=checkpoints/retrofit_posttrain " in train[0]
    assert "train.max_steps=12 " in train[0]  # not 12 x 30 / 24 (an HRM's default cycles read off its arch)

    reproduction.write_table(rows)
    text = (results / "results.md").read_text()
    assert (
        "## Learning from execution: the SFT HRM and the post-trained source after rejection sampling" in text
    )
    assert (
        "| 0 (the start) | 0 | none (the start) | 25.0% (of 500) | 75.0% (of 4) | 50.0% (of 4) | 33.3% (of 3) | 1 | 1.100 |"
    ) in text
    assert "| 20,658 | 77,919 | 79.6 min | 25.0% (of 500) |" in text  # sampling 3,853 s + training 921 s
    assert "| 24,000 | 0 | 0.0 min |" in text  # the control: 12 steps of the fake 2,000 tokens


def test_recurrence_rows_train_within_the_source_s_flops_and_evaluate_at_every_test_time_override(
    rows, fake_repo, tmp_path, monkeypatch
):
    """A recurrence row: its steps matched to the finished post-trained source's (42 here) when it runs, then
    MBPP and MBPP+ at every override with the layer evaluations of each, the completions kept, and the table's
    columns per override; the deep-supervision row counts segments."""
    args, executed = fake_repo
    args.greedy_only = True
    asked = []

    def matched(cfg, source_steps):
        asked.append((cfg.train.random_cycles, source_steps))
        return 28

    monkeypatch.setattr(reproduction, "source_matched_steps", matched)
    monkeypatch.setattr(
        reproduction, "resolve_arch_from_init", lambda cfg: cfg
    )  # the fake init has no full arch
    with pytest.raises(SystemExit, match="run `python scripts/reproduce.py retrofit_posttrain` first"):
        reproduction.reproduce(rows, "recurrence_lp38_L15x2", args)
    reproduction.reproduce(rows, "retrofit_posttrain", args)
    record = reproduction.reproduce(rows, "recurrence_lp38_L15x2", args)
    assert asked == [("lognormal_poisson", 42)]
    train = [c for c in record["commands"] if "train_codegen.py" in c]
    assert len(train) == 1 and "train.max_steps=28 run_name=retrofit_L15x2_lp38" in train[0]
    evals = [c for c in record["commands"] if "evaluate.py" in c]
    assert len(evals) == 10 and all("--ckpt checkpoints/retrofit_L15x2_lp38/step_28" in c for c in evals)
    assert "--quantize fp16 --arch-override L_cycles=6 --no-progress --output " in evals[-1]
    assert evals[-1].endswith("outputs/eval/recurrence_lp38_L15x2/L_cycles_6/mbppplus")
    assert record["greedy"] is None and record["sampled"] is None and "mbppplus" not in record
    at = {e["override"]: e for e in record["test_time"]}
    assert list(at) == ["L_cycles=1", "L_cycles=2", "L_cycles=3", "L_cycles=4", "L_cycles=6"]
    assert [e["layer_evals_per_token"] for e in at.values()] == [30, 45, 60, 75, 105]
    assert at["L_cycles=3"]["mbppplus"]["test_split"]["num_problems"] == 3
    results = tmp_path / "docs" / "results" / "recurrence_lp38_L15x2"
    assert (results / "L_cycles_4.greedy.json").is_file() and (results / "metrics.jsonl").is_file()
    with gzip.open(results / "L_cycles_4.mbppplus.samples.jsonl.gz", "rt") as packed:
        assert len(packed.read().splitlines()) == 4
    assert not (results / "greedy.json").exists()

    deep = reproduction.reproduce(rows, "recurrence_ds2_L15x2", args)
    assert [e["layer_evals_per_token"] for e in deep["test_time"]] == [45, 90, 135]  # segments of 45
    reproduction.reproduce(rows, "retrofit_L15x2", args)
    sft = reproduction.reproduce(rows, "recurrence_sft_L15x2", args)
    assert all(
        "--ckpt checkpoints/retrofit_L15x2_ft/step_30" in c for c in sft["commands"] if "evaluate" in c
    )

    reproduction.write_table(rows)
    text = (tmp_path / "docs" / "results" / "results.md").read_text()
    assert "## Recurrence that pays: the retrofitted HRM at test-time cycles" in text
    assert (
        "| model | training tokens | train wall time | MBPP validation loss | L_cycles=1 | L_cycles=2 |"
        in text
    )
    assert (
        "| 56,000 | 0.0 min | 1.100 | 25.0% (30) | 25.0% (45) | 25.0% (60) | 25.0% (75) | 25.0% (105) |"
        in text
    )
    assert "| the evaluated row's | n/a | 1.100 | 25.0% (30) |" in text  # the SFT row, its run's loss
    assert "| 33.3% (1 / 3) | 33.3% (1 / 3) | 33.3% (1 / 3) | 33.3% (1 / 3) | 33.3% (1 / 3) |" in text
    assert "| 1.100 |  |  |  |  |  | 25.0% (45) | 25.0% (90) | 25.0% (135) |" in text  # its own columns
    plot = next(c for c in executed if c[1] == "scripts/plot_cycles.py")
    series = [plot[i + 1] for i, part in enumerate(plot) if part == "--series"]
    assert [label.rpartition("=")[0] for label in series] == [
        "SFT HRM (row retrofit_L15x2): curriculum 1 -> 2 L cycles",
        "L cycles from Huginn's log-normal Poisson (mean 3, at most 8) per step, bp_steps 3",
    ]  # in the rows' order; the deep-supervision row counts segments: not on the L-cycles plot
    assert series[1].endswith("6:docs/results/recurrence_lp38_L15x2/L_cycles_6.greedy.json")
    assert "![pass@1 against test-time L cycles](mbpp_recurrence.png)" in text


@pytest.fixture
def no_composing(monkeypatch):
    """Hydra's compose raises: any config composed fails the test."""

    def compose(*args, **kwargs):
        raise AssertionError(f"a config was composed: {args} {kwargs}")

    monkeypatch.setattr(hydra, "compose", compose)


def test_a_flop_matched_row_builds_its_data_and_trains_for_the_steps_matched_when_it_runs(rows, fake_repo):
    args, _ = fake_repo
    record = reproduction.reproduce(rows, "pretrain_then_pairs_then_mbpp_llama_compute", args)
    train = "python scripts/train_codegen.py experiment=pretrain_then_pairs_then_mbpp"
    assert record["commands"][:5] == [
        "python scripts/build_corpus.py --out data/corpus/pylib --python-lib --max-tokens 2000000 --tokenizer gpt2 "
        "--mbpp data/mbpp/mbpp.jsonl",
        "python scripts/build_pairs.py --python-lib --out data/pairs/pylib --mbpp data/mbpp/mbpp.jsonl "
        "--tokenizer gpt2",
        f"{train} arch=transformer_tiny_compute train.max_steps=47 "
        f"run_name=pretrain_then_pairs_then_mbpp_llama_compute {TRAIN_ARGS} data.corpus_dir=data/corpus/pylib",
        f"{train}_pairs arch=transformer_tiny_compute "
        "train.init_from=checkpoints/pretrain_then_pairs_then_mbpp_llama_compute train.max_steps=47 "
        f"run_name=pretrain_then_pairs_then_mbpp_pairs_llama_compute {TRAIN_ARGS}",
        f"{train}_finetune arch=transformer_tiny_compute "
        "train.init_from=checkpoints/pretrain_then_pairs_then_mbpp_pairs_llama_compute train.max_steps=87 "
        f"run_name=pretrain_then_pairs_then_mbpp_finetune_llama_compute {TRAIN_ARGS}",
    ]
    assert [stage["steps"] for stage in record["stages"]] == [47, 47, 87]


def test_importing_the_script_and_loading_the_rows_compose_no_config(no_composing):
    spec = importlib.util.spec_from_file_location("reproduce_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "retrofit_L15x2" in load_rows(list(report.GROUPS))


def test_table_composes_no_config(rows, fake_repo, tmp_path, no_composing):
    """`table` reads the records alone (the compare group's training TFLOPs aside: they need the models)."""
    results = tmp_path / "docs" / "results"
    for name, group in (("mbpp_cpu_hrm", "cpu"), ("gpu_pretrain_then_mbpp_hrm", "gpu")):
        (results / name).mkdir(parents=True)
        (results / name / "row.json").write_text(json.dumps(_record(name, name, group)))
    for name in ("retrofit_posttrain", "retrofit_L15x2_test_L3"):
        (results / name).mkdir(parents=True)
        record = {**_record(name, name, "retrofit"), "humaneval": None, "layer_evals_per_token": 30}
        (results / name / "row.json").write_text(json.dumps(record))
    reproduction.write_table(rows)
    text = (results / "results.md").read_text()
    assert "| mbpp_cpu_hrm | 1,234 |" in text and "| retrofit_posttrain | 30 | 5,678 |" in text


def _write_rows(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


GOOD = "defaults: {greedy_batch: 8, sampled_batch: 20}\nrows:\n  a:\n    label: A\n    model: sources/x\n"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"cpu.yaml": "rows: [\n"}, r"cpu.yaml: not valid YAML"),
        ({"cpu.yaml": GOOD, "other.yaml": GOOD}, r"\['other.yaml'\] name no results table"),
        ({}, r"cpu.yaml: cannot be read"),
        ({"cpu.yaml": GOOD + "    colour: red\n"}, r"cpu.yaml: row a: unknown key\(s\) \['colour'\]"),
        (
            {"cpu.yaml": GOOD + "    greedy_batch: '8'\n"},
            r"cpu.yaml: row a: key greedy_batch: expected an integer",
        ),
        (
            {"cpu.yaml": GOOD + "    humaneval: 1\n"},
            r"cpu.yaml: row a: key humaneval: expected true or false",
        ),
        ({"cpu.yaml": "rows:\n  a: {label: A, model: x}\n"}, r"cpu.yaml: row a: key greedy_batch is missing"),
        (
            {"cpu.yaml": GOOD + "    evaluates: a\n"},
            r"cpu.yaml: row a: expected exactly one of stages, model",
        ),
        (
            {"cpu.yaml": GOOD + "    stages: [{run_name: r}]\n"},
            r"cpu.yaml: row a: stage 0: expected the keys",
        ),
        (
            {"cpu.yaml": GOOD + "    stages: [{run_name: r, overrides: experiment=x}]\n"},
            r"cpu.yaml: row a: stage 0: key overrides: expected a list of strings",
        ),
        (
            {"cpu.yaml": GOOD + "  b: {label: B, evaluates: c}\n"},
            r"cpu.yaml: row b: key evaluates: 'c' is not a row that trains",
        ),
        (
            {"cpu.yaml": GOOD + "  a_s1: {seed_of: a, seed: 1}\n"},
            r"cpu.yaml: row a_s1: key seed_of: 'a' is not",
        ),
        (
            {"cpu.yaml": GOOD + "  a_s1: {seed_of: a, seed: 1, label: X}\n"},
            r"cpu.yaml: row a_s1: a seed variant has exactly the keys seed_of and seed",
        ),
        (
            {"cpu.yaml": GOOD.replace("model: sources/x", "ckpt: checkpoints/rs/round_1/run")},
            r"cpu.yaml: row a: key ckpt: 'checkpoints/rs/round_1/run' needs the prepare commands that write it",
        ),
        (
            {"cpu.yaml": GOOD + "    mbppplus: yes please\n"},
            r"cpu.yaml: row a: key mbppplus: expected true or false",
        ),
        (
            {
                "cpu.yaml": GOOD + "  b: {label: B, greedy_batch: 1, sampled_batch: 1, stages: "
                "[{run_name: r, overrides: [], layers_matched_to: a}]}\n"
            },
            r"cpu.yaml: row b: key layers_matched_to: 'a' is not a row that trains",
        ),
        (
            {"cpu.yaml": GOOD + "    prepare: [{command: [x.py]}]\n"},
            r"cpu.yaml: row a: prepare 0: expected a mapping with the keys command and done",
        ),
        (
            {
                "cpu.yaml": GOOD.replace(
                    "model: sources/x",
                    "flops_matched_to: [arch=tiny]\n    stages: [{run_name: r, overrides: [arch=tiny]}]",
                )
            },
            r"cpu.yaml: row a: stage 0: key overrides: flops_matched_to needs one experiment= override",
        ),
        (
            {"cpu.yaml": GOOD + "    test_overrides: [L_cycles=2, L_cycles]\n"},
            r"cpu.yaml: row a: key test_overrides: expected KEY=VALUE \(e.g. L_cycles=3\), got 'L_cycles'",
        ),
        (
            {
                "cpu.yaml": GOOD + "  b: {label: B, greedy_batch: 1, sampled_batch: 1, stages: "
                "[{run_name: r, overrides: [], source_flops_matched_to: a}]}\n"
            },
            r"cpu.yaml: row b: key source_flops_matched_to: 'a' is not a row that trains",
        ),
    ],
)
def test_a_bad_rows_file_stops_with_one_message_naming_file_row_and_key(tmp_path, files, message):
    directory = _write_rows(tmp_path / "results", files)
    with pytest.raises(RowsFileError, match=message):
        load_rows(["cpu"], directory)


def test_a_row_defined_twice_is_named_with_both_files(tmp_path):
    directory = _write_rows(tmp_path / "results", {"cpu.yaml": GOOD, "gpu.yaml": GOOD})
    with pytest.raises(RowsFileError, match=r"gpu.yaml: row a: already defined in .*cpu.yaml"):
        load_rows(["cpu", "gpu"], directory)


def test_the_script_reports_a_bad_rows_file_in_one_line(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("reproduce_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    directory = _write_rows(tmp_path / "results", {"cpu.yaml": GOOD + "    colour: red\n"})
    monkeypatch.setattr(module, "load_rows", lambda groups: load_rows(["cpu"], directory))
    with pytest.raises(SystemExit, match=r"^error: .*cpu.yaml: row a: unknown key"):
        module.main(["table"])
