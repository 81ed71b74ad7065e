"""The recurrence curriculum (`train.cycles_schedule`), the arch and tokenizer of the init checkpoint
(`train.arch_from_init`), and test-time arch overrides (`load_checkpoint(arch_overrides=...)`,
`scripts/evaluate.py --arch-override`)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import kill_after_checkpoint
from omegaconf import OmegaConf
from safetensors.torch import load_file
from test_evaluate_cli import run_cli  # the evaluator as a user runs it
from test_training import ENV, FAST, SCRIPT  # the tiny launcher set-up of the training tests

from hrm_codegen import runs
from hrm_codegen.checkpoint import CheckpointError, read_meta
from hrm_codegen.families import get_family
from hrm_codegen.families.hrm import HrmFamily
from hrm_codegen.inference import load_checkpoint
from hrm_codegen.logging_utils import read_metrics
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1
from hrm_codegen.recurrence import cycles_at, step_recurrence
from hrm_codegen.runs import read_train_state
from hrm_codegen.train_config import compose_config, resolve_arch_from_init, validate_config
from hrm_codegen.training import run

SCHEDULE = "train.cycles_schedule=[[0.0,1,1],[0.25,1,2],[0.5,2,2]]"  # tiny's arch: H_cycles=2, L_cycles=2
# With 8 steps: steps 0-1 run (1, 1), steps 2-3 (1, 2), steps 4-7 (2, 2).
EXPECTED = [(1, 1), (1, 1), (1, 2), (1, 2), (2, 2), (2, 2), (2, 2), (2, 2)]


def _paths(gpt2_dir: Path, mbpp_path: Path, root: Path) -> list[str]:
    return [f"data.path={mbpp_path}", f"tokenizer.name_or_path={gpt2_dir}", f"checkpoint_root={root}"]


def _weights(step_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(step_dir / "hf" / "model.safetensors"))


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory, gpt2_dir, mbpp_path):
    """An 8-step tiny run under SCHEDULE (checkpoints every 2 steps, validation at 0, 4 and 8), with the
    cycles of every training forward and every validation forward recorded."""
    root = tmp_path_factory.mktemp("scheduled")
    overrides = [*FAST, *_paths(gpt2_dir, mbpp_path, root / "ck"), SCHEDULE, "train.max_steps=8"]
    overrides += ["train.ckpt_every=2", "train.eval_every=4"]
    seen: dict[str, list[tuple[int, int]]] = {"train": [], "val": []}
    forward_loss, lm_logits = HrmFamily.forward_loss, HrmFamily.lm_logits

    def cycles(model: torch.nn.Module) -> tuple[int, int]:
        return getattr(model, "module", model).cycles

    def recording_forward_loss(self, model, batch, state, loss_type):
        seen["train"].append(cycles(model))
        return forward_loss(self, model, batch, state, loss_type)

    def recording_lm_logits(self, model, batch):
        seen["val"].append(cycles(model))
        return lm_logits(self, model, batch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HrmFamily, "forward_loss", recording_forward_loss)
        patch.setattr(HrmFamily, "lm_logits", recording_lm_logits)
        result = run(compose_config([*overrides, "run_name=full"]))
    assert isinstance(result, dict)
    return {"run_dir": Path(result["run_dir"]), "overrides": overrides, "seen": seen, "root": root}


def test_cycles_at_and_the_family_hook_follow_the_schedule(tiny_hrm_config):
    schedule = [[0.0, 1, 1], [0.25, 1, 2], [0.5, 2, 2]]
    assert [cycles_at(s, 8, schedule) for s in range(8)] == EXPECTED
    assert [cycles_at(s, 3, schedule) for s in range(3)] == [(1, 1), (1, 2), (2, 2)]  # rounds 0.75 and 1.5
    family, model = get_family("hrm"), HierarchicalReasoningModel_ACTV1({**tiny_hrm_config, "bp_steps": 6})
    arch = {"H_cycles": 2, "L_cycles": 2, "bp_steps": 6}
    train = {"cycles_schedule": schedule, "bp_warmup_ratio": 0.5}
    cfg = OmegaConf.create({"seed": 0, "arch": arch, "train": train})
    seen = []
    for step in range(8):
        family.before_step(model, step, 8, cfg)
        seen.append((model.cycles, model.bp_steps))
        # what the run's FLOPs count: the schedule's cycles, the warm-up's bp_steps
        assert step_recurrence(cfg, step, 8) == (*model.cycles, model.bp_steps, "schedule", True)
    # The bp warm-up (2 up to 6 over 4 steps) is capped at the cycles' own steps: (1, 1) has 2, (1, 2) has 3.
    assert seen == [((1, 1), 2), ((1, 1), 2), ((1, 2), 3), ((1, 2), 3), *[((2, 2), 6)] * 4]
    assert model.config.H_cycles == 2 and model.config.L_cycles == 2  # the arch keeps the target cycles
    full = HierarchicalReasoningModel_ACTV1({**tiny_hrm_config, "bp_steps": 0})
    family.before_step(full, 0, 8, OmegaConf.merge(cfg, {"arch": {"bp_steps": 0}}))  # its run's arch
    assert full.cycles == (1, 1) and full.bp_steps == 0  # 0 (full backpropagation) has no warm-up


def test_training_runs_each_step_and_validation_with_the_cycles_in_force(scheduled):
    train_seen, val_seen = scheduled["seen"]["train"], scheduled["seen"]["val"]
    assert train_seen == EXPECTED  # one micro-batch per step
    # Validation at step 0 (the first entry's cycles), at 4 (after steps 2-3: (1, 2)) and at 8; two batches each.
    assert val_seen == [(1, 1)] * 2 + [(1, 2)] * 2 + [(2, 2)] * 2
    run_dir = scheduled["run_dir"]
    recorded = {n: read_train_state(run_dir / f"step_{n}")["cycles"] for n in (2, 4, 6, 8)}
    assert recorded == {2: [1, 1], 4: [1, 2], 6: [2, 2], 8: [2, 2]}  # the cycles the steps so far ended with
    saved = OmegaConf.load(run_dir / "step_8" / "config.yaml")
    assert (saved.arch.H_cycles, saved.arch.L_cycles) == (2, 2)  # the final model's arch: the target cycles
    assert OmegaConf.to_container(saved.train.cycles_schedule) == [[0.0, 1, 1], [0.25, 1, 2], [0.5, 2, 2]]
    assert load_checkpoint(run_dir).model.cycles == (2, 2)


def test_resume_continues_the_schedule_bit_for_bit(scheduled):
    """Resume from step 2 (before both changes of cycles): the same weights at step 8 as the whole run."""
    full_dir = scheduled["run_dir"]
    resumed_dir = full_dir.parent / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(full_dir / "step_2", resumed_dir / "step_2")
    (resumed_dir / "latest").write_text("step_2\n")
    run(compose_config([*scheduled["overrides"], "run_name=resumed", "resume=auto"]))
    assert _equal(_weights(full_dir / "step_8"), _weights(resumed_dir / "step_8"))
    assert read_train_state(resumed_dir / "step_4")["cycles"] == [1, 2]


def test_stop_after_ends_at_its_step_on_the_whole_run_s_schedules_and_resuming_finishes_that_run(scheduled):
    """train.stop_after=3 of the 8-step run: a checkpoint at step 3 with the cycles and learning rates the 8-step
    run had there (not those of a 3-step run), the run counted finished; resume=auto without the stop trains on to
    the whole run's weights."""
    full_dir = scheduled["run_dir"]
    stopped = run(compose_config([*scheduled["overrides"], "run_name=stopped", "train.stop_after=3"]))
    assert isinstance(stopped, dict) and stopped["step"] == 3
    stopped_dir = Path(stopped["run_dir"])
    assert sorted(p.name for p in stopped_dir.glob("step_*")) == ["step_2", "step_3"]
    state = read_train_state(stopped_dir / "step_3")
    assert state["total_steps"] == 8 and state["stop_after"] == 3
    assert state["cycles"] == [1, 2]  # a 3-step schedule would be at (2, 2) from step round(0.5 x 3) = 2 on
    assert runs.finished(stopped_dir) and not runs.finished(full_dir.parent / "missing")

    def lrs(run_dir: Path) -> dict[int, float]:
        return {r["step"]: r["lr"] for r in read_metrics(run_dir) if "lr" in r}

    assert lrs(stopped_dir) == {s: lr for s, lr in lrs(full_dir).items() if s <= 3}
    assert _equal(_weights(full_dir / "step_2"), _weights(stopped_dir / "step_2"))
    again = run(
        compose_config([*scheduled["overrides"], "run_name=stopped", "train.stop_after=3", "resume=auto"])
    )
    assert isinstance(again, dict) and again["step"] == 3  # already there: nothing trained
    resumed = run(compose_config([*scheduled["overrides"], "run_name=stopped", "resume=auto"]))
    assert isinstance(resumed, dict) and resumed["step"] == 8
    assert _equal(_weights(full_dir / "step_8"), _weights(stopped_dir / "step_8"))


@pytest.mark.slow
def test_sigkill_then_resume_with_a_schedule_equals_an_uninterrupted_run(tmp_path, gpt2_dir, mbpp_path):
    """The real script killed after its first checkpoint, resumed with resume=auto: bitwise equal weights."""
    schedule = "train.cycles_schedule=[[0.0,1,1],[0.5,2,1],[0.75,2,2]]"  # changes at steps 6 and 9 of 12
    args = [*FAST, *_paths(gpt2_dir, mbpp_path, tmp_path / "ck"), schedule]
    args += ["train.global_batch_size=2", "train.max_steps=12", "train.ckpt_every=3"]
    reference = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "run_name=ref"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert reference.returncode == 0, reference.stderr
    killed_dir = tmp_path / "ck" / "killed"
    kill_after_checkpoint(
        [sys.executable, str(SCRIPT), *args, "run_name=killed"], killed_dir / "step_3", tmp_path, ENV
    )
    interrupted_at = read_meta(killed_dir / (killed_dir / "latest").read_text().strip())["step"]
    assert 3 <= interrupted_at < 12 and not (killed_dir / "step_12").exists()
    resumed = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "run_name=killed", "resume=auto"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (killed_dir / "step_12" / "hf" / "model.safetensors").read_bytes() == (
        tmp_path / "ck" / "ref" / "step_12" / "hf" / "model.safetensors"
    ).read_bytes()
    assert read_train_state(killed_dir / "step_12")["cycles"] == [2, 2]
    assert read_train_state(tmp_path / "ck" / "ref" / "step_6")["cycles"] == [1, 1]  # steps 0-5: (1, 1)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("[[0.1,1,1]]", r"cycles_schedule\[0\]: the first entry must start at 0.0, got 0.1"),
        (
            "[[0.0,1,1],[0.5,2,2],[0.5,2,3]]",
            r"cycles_schedule\[2\]: start fractions must be strictly increasing",
        ),
        (
            "[[0.0,1,1],[1.0,2,2]]",
            r"cycles_schedule\[1\]: start_fraction must be a number in \[0, 1\), got 1.0",
        ),
        ("[[0.0,0,1]]", r"cycles_schedule\[0\]: H_cycles must be an integer >= 1, got 0"),
        ("[[0.0,1,1.5]]", r"cycles_schedule\[0\]: L_cycles must be an integer >= 1, got 1.5"),
        ("[[0.0,1]]", r"cycles_schedule\[0\] must be \[start_fraction, H_cycles, L_cycles\], got \[0.0, 1\]"),
        ("[0.0,1,1]", r"cycles_schedule\[0\] must be \[start_fraction, H_cycles, L_cycles\], got 0.0"),
    ],
)
def test_bad_schedules_are_one_clear_error(schedule, message):
    validate_config(
        compose_config(["arch=tiny", "train.cycles_schedule=[[0.0,1,1],[0.5,2,2]]"])
    )  # a good one
    with pytest.raises(ValueError, match=message) as err:
        validate_config(compose_config(["arch=tiny", f"train.cycles_schedule={schedule}"]))
    assert "\n" not in str(err.value) and str(err.value).startswith("train.cycles_schedule")


def test_a_schedule_is_refused_for_families_that_cannot_change_their_cycles():
    with pytest.raises(
        ValueError, match=r"train.cycles_schedule is for arch.name=hrm .* arch.name=transformer"
    ):
        validate_config(compose_config(["arch=transformer_tiny_params", "train.cycles_schedule=[[0.0,1,1]]"]))


# -- train.arch_from_init


def test_arch_from_init_takes_the_arch_and_tokenizer_of_the_checkpoint(scheduled, mbpp_path, tmp_path):
    """The composed arch (hidden 48) and tokenizer (a path that does not exist) are replaced by the init
    checkpoint's, with train.arch_overrides over them; the run's config.yaml records the resolved ones, and a
    resume takes them from its step (the init checkpoint is gone by then)."""
    root = scheduled["root"]
    init_dir = shutil.copytree(scheduled["run_dir"], tmp_path / "init")
    overrides = [o for o in FAST if not o.startswith("arch.hidden_size")] + [
        "arch.hidden_size=48",
        "tokenizer.name_or_path=/nonexistent/tokenizer",
        f"data.path={mbpp_path}",
        f"checkpoint_root={root / 'ck'}",
        "run_name=from_init",
        "train.arch_from_init=true",
        f"train.init_from={init_dir}",
        "+train.arch_overrides.L_cycles=1",
        "train.lr=0",  # so the weights stay the init checkpoint's
        "train.max_steps=1",
    ]
    result = run(compose_config(overrides))
    assert isinstance(result, dict)
    run_dir = Path(result["run_dir"])
    init_step = init_dir / "step_8"
    saved, init_saved = (OmegaConf.load(d / "config.yaml") for d in (run_dir / "step_1", init_step))
    assert OmegaConf.to_container(saved.arch) == {**OmegaConf.to_container(init_saved.arch), "L_cycles": 1}
    assert saved.tokenizer.name_or_path == str((init_step / "tokenizer").resolve())
    assert saved.tokenizer.fingerprint == read_meta(init_step)["tokenizer_fingerprint"]
    assert _equal(_weights(run_dir / "step_1"), _weights(init_step))
    loaded = load_checkpoint(run_dir)  # the evaluator needs nothing else
    assert loaded.model.cycles == (2, 1) and loaded.model.config.hidden_size == 32
    # resume=auto with the same command (two steps now) resolves the same arch and continues the run
    shutil.rmtree(init_dir)
    run(compose_config([*overrides[:-1], "train.max_steps=2", "resume=auto"]))
    resumed = OmegaConf.load(run_dir / "step_2" / "config.yaml")
    assert resumed.arch == saved.arch and resumed.tokenizer == saved.tokenizer


def test_arch_from_init_false_leaves_the_config_alone():
    cfg = compose_config(["arch=tiny"])
    assert resolve_arch_from_init(cfg) is cfg
    with pytest.raises(
        ValueError, match=r"train.arch_overrides=\{'L_cycles': 1\} applies with train.arch_from_init"
    ):
        validate_config(compose_config(["arch=tiny", "+train.arch_overrides.L_cycles=1"]))


def test_arch_from_init_errors_name_the_keys(scheduled, tmp_path):
    step = scheduled["run_dir"] / "step_8"
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    cases = [
        (["train.arch_from_init=true"], r"train.arch_from_init=true needs train.init_from="),
        (
            [f"train.init_from={step / 'hf' / 'model.safetensors'}"],
            r"train.init_from=.*model.safetensors: .* weights file",
        ),
        ([f"train.init_from={plain_dir}"], r"train.init_from=.*plain: .* is not a checkpoint"),
        ([f"train.init_from={tmp_path / 'missing'}"], r"train.init_from=.*missing: .* does not exist"),
        (["train.init_from=owner/model"], r"train.init_from=owner/model is an outside transformers model"),
        (
            [f"train.init_from={step}", "+train.arch_overrides.hidden=64"],
            r"train.arch_overrides: unknown arch key\(s\) \['hidden'\] for arch.name=hrm",
        ),
        (
            [f"train.init_from={step}", "tokenizer.fingerprint=abc"],
            r"tokenizer.fingerprint=abc, but train.arch_from_init=true takes the tokenizer of",
        ),
    ]
    for overrides, message in cases:
        cfg = compose_config(["arch=tiny", "train.arch_from_init=true", *overrides])
        with pytest.raises(ValueError, match=message):
            resolve_arch_from_init(cfg)
    bad = compose_config(
        ["train.arch_from_init=true", f"train.init_from={step}", "+train.arch_overrides.L_cycles=0"]
    )
    with pytest.raises(ValueError, match="L_cycles must be >= 1"):
        validate_config(resolve_arch_from_init(bad))


# -- test-time arch overrides


def test_arch_overrides_change_the_logits_and_shape_changes_fail_clearly(scheduled):
    run_dir = scheduled["run_dir"]
    ids = torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(0))
    plain, one = load_checkpoint(run_dir), load_checkpoint(run_dir, arch_overrides={"L_cycles": 1})
    assert plain.model.cycles == (2, 2) and one.model.cycles == (2, 1)
    assert one.config is not None and one.config.arch.L_cycles == 1
    with torch.no_grad():
        a, b = plain.model.lm_forward(ids), one.model.lm_forward(ids)
    assert a.shape == b.shape and not torch.allclose(a, b)
    with pytest.raises(
        CheckpointError, match=r"arch overrides \{'hidden_size': 64\} change the model's parameters"
    ):
        load_checkpoint(run_dir, arch_overrides={"hidden_size": 64})
    with pytest.raises(ValueError, match=r"arch overrides: unknown arch key\(s\) \['cycles'\]"):
        load_checkpoint(run_dir, arch_overrides={"cycles": 3})
    with pytest.raises(ValueError, match=r"arch overrides \{'L_cycles': 0\}: L_cycles must be >= 1"):
        load_checkpoint(run_dir, arch_overrides={"L_cycles": 0})


def test_fewer_test_time_cycles_than_the_saved_bp_steps_evaluate_with_full_backpropagation(
    scheduled, tmp_path
):
    """A model trained with bp_steps=4 at 2 x 2 cycles loads at 1 x 1 (2 steps) with bp_steps 0, as set_cycles
    does in training; an explicit bp_steps override is still checked."""
    step = scheduled["run_dir"] / "step_8"
    cfg = OmegaConf.load(step / "config.yaml")
    cfg.arch.bp_steps = 4
    fewer = load_checkpoint(step, config=cfg, arch_overrides={"H_cycles": 1, "L_cycles": 1})
    assert fewer.model.cycles == (1, 1) and fewer.config is not None and fewer.config.arch.bp_steps == 0
    kept = load_checkpoint(step, config=cfg, arch_overrides={"L_cycles": 1})  # 2 x (1 + 1) = 4 steps: kept
    assert kept.config is not None and kept.config.arch.bp_steps == 4
    with pytest.raises(ValueError, match=r"bp_steps must be between 2"):
        load_checkpoint(step, config=cfg, arch_overrides={"H_cycles": 1, "L_cycles": 1, "bp_steps": 4})


@pytest.mark.slow
def test_evaluate_arch_override_is_recorded_and_guards_a_resumed_output(scheduled, mbpp_path, tmp_path):
    out = tmp_path / "eval"
    common = ["--ckpt", scheduled["run_dir"], "--mbpp", mbpp_path, "--limit", 1, "--max-new-tokens", 4]
    first = run_cli(
        *common, "--arch-override", "L_cycles=1", "--arch-override", "H_cycles=1", "--output", out
    )
    assert first.returncode == 0, first.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["arch_overrides"] == {"L_cycles": 1, "H_cycles": 1}
    assert summary["num_samples"] == 1
    changed = run_cli(*common, "--arch-override", "L_cycles=3", "--output", out)
    assert changed.returncode == 2 and "arch_overrides={'L_cycles': 1, 'H_cycles': 1}" in changed.stderr
    dropped = run_cli(*common, "--output", out)
    assert dropped.returncode == 2 and "arch_overrides=None" in dropped.stderr
