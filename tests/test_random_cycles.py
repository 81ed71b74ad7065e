"""Randomized recurrence (train.random_cycles): each step's cycles drawn from the seed and the step alone (the same
after a resume), recorded in the metrics, validated and saved at the arch's cycles, with bp_steps as the limit of
the backpropagated level calls."""

import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_HRM, load_script
from omegaconf import OmegaConf
from safetensors.torch import load_file
from test_training import FAST  # the tiny launcher set-up of the training tests

from hrm_codegen.families import get_family
from hrm_codegen.families.hrm import HrmFamily
from hrm_codegen.logging_utils import read_metrics
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1
from hrm_codegen.recurrence import (
    draw_cycles,
    run_train_flops_per_token,
    source_matched_steps,
    step_recurrence,
    training_budget,
)
from hrm_codegen.runs import read_train_state
from hrm_codegen.train_config import compose_config, validate_config
from hrm_codegen.training import run

UNIFORM = OmegaConf.create(
    {
        "random_cycles": "uniform",
        "random_L_cycles": [1, 4],
        "random_H_cycles": [1, 2],
        "random_cycles_sigma": 0.5,
    }
)
RANDOM = ["train.random_cycles=uniform", "train.random_L_cycles=[1,3]"]  # tiny's arch: H_cycles=2, L_cycles=2


def test_draws_depend_on_the_seed_and_the_step_only_and_stay_in_range():
    draws = [draw_cycles(7, step, UNIFORM, (2, 2)) for step in range(400)]
    assert draws == [draw_cycles(7, step, UNIFORM, (2, 2)) for step in range(400)]
    assert draw_cycles(7, 123, UNIFORM, (2, 2)) == draws[123]  # any step alone, as a resumed run asks
    assert draws != [draw_cycles(8, step, UNIFORM, (2, 2)) for step in range(400)]
    assert {h for h, _ in draws} == {1, 2} and {ell for _, ell in draws} == {1, 2, 3, 4}
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    draw_cycles(7, 5, UNIFORM, (2, 2))
    assert torch.equal(torch.rand(1), before)  # torch's global RNG (dropout, exploration) is left alone
    only_l = OmegaConf.create({"random_cycles": "uniform", "random_L_cycles": [2, 3]})
    assert {draw_cycles(0, s, only_l, (5, 1))[0] for s in range(50)} == {5}  # H keeps the default


def test_lognormal_poisson_draws_have_the_configured_mean_and_cap():
    spec = OmegaConf.create({"random_cycles": "lognormal_poisson", "random_L_cycles": [4, 12]})
    values = [draw_cycles(0, step, spec, (1, 1))[1] for step in range(3000)]
    assert min(values) >= 1 and max(values) <= 12 and len(set(values)) > 5
    assert 3.6 < sum(values) / len(values) < 4.3  # mean 4 (the cap at 12 trims a little)


def test_the_family_sets_the_drawn_cycles_keeps_bp_steps_and_validates_and_saves_at_the_arch_cycles(tmp_path):
    family = get_family("hrm")
    model = HierarchicalReasoningModel_ACTV1({**TINY_HRM, "bp_steps": 3})
    cfg = OmegaConf.create(
        {"seed": 3, "arch": {"H_cycles": 2, "L_cycles": 2, "bp_steps": 3}, "train": UNIFORM}
    )
    for step in range(12):
        info = family.before_step(model, step, 12, cfg)
        drawn = draw_cycles(3, step, UNIFORM, (2, 2))
        assert info == {"H_cycles": drawn[0], "L_cycles": drawn[1]} and model.cycles == drawn
        # bp_steps 3 backpropagates the last 3 level calls, all of them where a draw has fewer (bp_steps 0)
        assert model.config.bp_steps == (3 if drawn[0] * (drawn[1] + 1) >= 3 else 0)
        assert model.bp_steps == model.config.bp_steps  # what the forward uses: the same number
        # what the run's FLOPs count, and what chose the cycles
        assert step_recurrence(cfg, step, 12) == (*drawn, model.config.bp_steps, "draw", False)
    batch = {"input_ids": torch.randint(0, 97, (2, 8))}
    seen = []
    original = model.model.forward_segment

    def recording(*args, **kwargs):
        seen.append(model.cycles)
        return original(*args, **kwargs)

    model.model.forward_segment = recording  # type: ignore[method-assign]
    family.lm_logits(model, batch)
    assert seen == [(2, 2)] and model.cycles == drawn  # validation: the arch's cycles, then the draw again
    family.save_weights(model, model.state_dict(), _Tokenizer(), tmp_path)
    saved = (tmp_path / "hf" / "config.json").read_text()
    assert '"H_cycles": 2' in saved and '"L_cycles": 2' in saved and model.cycles == drawn


class _Tokenizer:
    bos_id, eos_id, pad_id = 1, 2, 0

    class hf:  # noqa: N801 - the attribute name CodeTokenizer has
        model_max_length = 0

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="module")
def drawn_run(tmp_path_factory, gpt2_dir, mbpp_path):
    """A 4-step tiny run drawing its L cycles (checkpoints at steps 2 and 4), with each step's training cycles."""
    root = tmp_path_factory.mktemp("random")
    paths = [f"data.path={mbpp_path}", f"tokenizer.name_or_path={gpt2_dir}", f"checkpoint_root={root}"]
    overrides = [
        *FAST,
        *paths,
        *RANDOM,
        "train.max_steps=4",
        "train.ckpt_every=2",
        "train.global_batch_size=2",
    ]
    seen: list[tuple[int, int]] = []
    forward_loss = HrmFamily.forward_loss

    def recording(self, model, batch, state, loss_type):
        seen.append(getattr(model, "module", model).cycles)
        return forward_loss(self, model, batch, state, loss_type)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HrmFamily, "forward_loss", recording)
        result = run(compose_config([*overrides, "run_name=full"]))
    assert isinstance(result, dict)
    return {"run_dir": Path(result["run_dir"]), "overrides": overrides, "seen": seen}


def _logged_cycles(run_dir: Path) -> list[tuple[int, int]]:
    return [(r["H_cycles"], r["L_cycles"]) for r in read_metrics(run_dir) if "L_cycles" in r]


def test_a_run_trains_each_step_with_its_draw_and_records_it(drawn_run):
    expected = [draw_cycles(0, step, compose_config(RANDOM).train, (2, 2)) for step in range(4)]
    assert len(set(expected)) > 1  # the draws differ between steps
    assert drawn_run["seen"] == expected
    assert _logged_cycles(drawn_run["run_dir"]) == expected  # metrics.jsonl: every step (log_every=1)
    assert read_train_state(drawn_run["run_dir"] / "step_2")["cycles"] == list(expected[1])
    saved = OmegaConf.load(drawn_run["run_dir"] / "step_4" / "config.yaml")
    assert (saved.arch.H_cycles, saved.arch.L_cycles) == (2, 2)  # the arch keeps its cycles


def test_a_resumed_run_draws_the_same_cycles_and_ends_with_the_same_weights(drawn_run):
    full_dir = drawn_run["run_dir"]
    resumed_dir = full_dir.parent / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(full_dir / "step_2", resumed_dir / "step_2")
    (resumed_dir / "latest").write_text("step_2\n")
    run(compose_config([*drawn_run["overrides"], "run_name=resumed", "resume=auto"]))
    assert _logged_cycles(resumed_dir) == _logged_cycles(full_dir)[2:]
    a, b = (load_file(str(d / "step_4" / "hf" / "model.safetensors")) for d in (full_dir, resumed_dir))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_run_flops_follow_the_draws():
    fixed = compose_config(["arch=tiny", "arch.vocab_size=97", "data.seq_len=64"])
    drawn = compose_config(["arch=tiny", "arch.vocab_size=97", "data.seq_len=64", *RANDOM])
    one = compose_config(["arch=tiny", "arch.vocab_size=97", "data.seq_len=64", "arch.L_cycles=1"])
    three = compose_config(["arch=tiny", "arch.vocab_size=97", "data.seq_len=64", "arch.L_cycles=3"])
    per_l = {1: run_train_flops_per_token(one, 1), 3: run_train_flops_per_token(three, 1)}
    per_l[2] = run_train_flops_per_token(fixed, 1)
    draws = [draw_cycles(0, step, drawn.train, (2, 2))[1] for step in range(10)]
    expected = sum(per_l[cycles] for cycles in draws) / 10
    assert run_train_flops_per_token(drawn, 10) == pytest.approx(expected)
    deep = compose_config(
        [
            "arch=tiny",
            "arch.vocab_size=97",
            "data.seq_len=64",
            "arch.halt_max_steps=2",
            "train.deep_supervision=true",
        ]
    )
    assert run_train_flops_per_token(deep, 3) == pytest.approx(2 * per_l[2])  # two segments a step
    exits = compose_config(["arch=tiny", "arch.vocab_size=97", "data.seq_len=64", "arch.exit_gate=true"])
    assert run_train_flops_per_token(exits, 1) > per_l[2]  # the exit gate's read-outs


def test_the_run_flops_follow_a_cycles_curriculum_and_a_bp_steps_warmup():
    """A curriculum's early steps run fewer cycles, a bp_steps warm-up's fewer gradient steps: both cost less than
    the arch's cycles and bp_steps throughout (the SFT retrofit's 1 -> 2 L cycles curriculum is such a run)."""
    base = ["arch=tiny", "arch.vocab_size=97", "data.seq_len=64", "arch.H_cycles=1"]
    one, two = (compose_config([*base, f"arch.L_cycles={n}"]) for n in (1, 2))
    per_l = {1: run_train_flops_per_token(one, 1), 2: run_train_flops_per_token(two, 1)}
    curriculum = compose_config([*base, "arch.L_cycles=2", "train.cycles_schedule=[[0.0,1,1],[0.25,1,2]]"])
    assert [step_recurrence(curriculum, s, 8)[:2] for s in range(8)] == [(1, 1)] * 2 + [(1, 2)] * 6
    assert {step_recurrence(curriculum, s, 8).cycles_from for s in range(8)} == {"schedule"}
    assert step_recurrence(one, 0, 8) == (1, 1, one.arch.bp_steps, "arch", False)  # the arch's, nothing drawn
    assert run_train_flops_per_token(curriculum, 8) == pytest.approx((2 * per_l[1] + 6 * per_l[2]) / 8)
    full = compose_config([*base, "arch.L_cycles=2", "arch.bp_steps=3"])
    warmed = compose_config([*base, "arch.L_cycles=2", "arch.bp_steps=3", "train.bp_warmup_ratio=0.5"])
    assert [step_recurrence(warmed, s, 4)[2] for s in range(4)] == [2, 2, 3, 3]
    assert all(step_recurrence(warmed, s, 4).bp_warmup for s in range(4))
    assert not step_recurrence(full, 0, 4).bp_warmup
    assert run_train_flops_per_token(warmed, 4) < run_train_flops_per_token(full, 4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.random_cycles=uniform"], "needs a range"),
        (["train.random_L_cycles=[1,3]"], "applies with train.random_cycles"),
        (["train.random_cycles=uniform", "train.random_L_cycles=[3,1]"], "1 <= low <= high"),
        (["train.random_cycles=uniform", "train.random_L_cycles=[1]"], "takes \\[low, high\\]"),
        (["train.random_cycles=lognormal_poisson", "train.random_L_cycles=[1,8]"], "1 < mean <= max"),
        (["train.random_cycles=gaussian", "train.random_L_cycles=[1,3]"], "expected one of"),
        ([*RANDOM, "train.cycles_schedule=[[0.0,1,1]]"], "use one"),
        ([*RANDOM, "train.random_cycles_sigma=0"], "must be > 0"),
    ],
)
def test_bad_settings_are_one_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_config(compose_config(["arch=tiny", *overrides]))


def test_source_matched_steps_spend_at_most_the_source_runs_training_flops():
    base = ["arch=tiny", "arch.vocab_size=97", "data.seq_len=64", "arch.H_cycles=1"]
    identity = compose_config([*base, "arch.L_cycles=1", "arch.bp_steps=0"])
    assert source_matched_steps(identity, 42) == 42  # the source itself: its own steps
    drawn = compose_config([*base, "arch.L_cycles=2", *RANDOM, "arch.bp_steps=0"])
    steps = source_matched_steps(drawn, 42)
    budget = 42 * float(training_budget(drawn, 1)["source_flops_per_token"])
    cost = [run_train_flops_per_token(drawn, n) * n for n in (steps, steps + 1)]
    assert cost[0] <= budget < cost[1] and steps < 42  # 1-3 L cycles cost more per step than one


def test_the_budget_script_prints_a_curriculum_s_flops_and_the_source_s_equal_flops_steps(capsys):
    """scripts/recurrence_budget.py on a curriculum run (1 L cycle for the first half, then 2): the FLOPs per token
    it prints are the run's as the trainer spends them, under those of 2 cycles throughout."""
    tiny = ["arch=tiny", "arch.vocab_size=97", "arch.H_cycles=1", "arch.L_cycles=2", "data.seq_len=64"]
    schedule = "train.cycles_schedule=[[0.0,1,1],[0.5,1,2]]"
    budget = load_script("recurrence_budget")
    budget.main(["--experiment", "mbpp_cpu_compare", "--steps", "8", *tiny, schedule])
    out = capsys.readouterr().out
    cfg = compose_config(["experiment=mbpp_cpu_compare", *tiny, schedule])
    expected = training_budget(cfg, 8)
    assert f"HRM training FLOPs per token     {expected['hrm_flops_per_token']:.4g}" in out
    assert f"source steps at equal FLOPs      {expected['source_steps_equal_flops']}" in out
    fixed = training_budget(compose_config(["experiment=mbpp_cpu_compare", *tiny]), 8)
    assert expected["hrm_flops_per_token"] < fixed["hrm_flops_per_token"]
