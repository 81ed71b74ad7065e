"""Deep supervision within a step (train.deep_supervision): M segments per example, the carry passed on (detached
or not), a weighted next-token loss after each; the first segment of a gated retrofit is its source; the recipe of
the training budget (experiment=recurrence_mbpp_pairs beside posttrain_mbpp_pairs)."""

from pathlib import Path

import pytest
import torch
from conftest import TINY_HRM, tiny_llama
from omegaconf import OmegaConf
from test_training import FAST  # the tiny launcher set-up of the training tests

from hrm_codegen.families import get_family
from hrm_codegen.families.hrm import ActCarryState, SegmentsState
from hrm_codegen.logging_utils import read_metrics
from hrm_codegen.losses_codegen import token_cross_entropy
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1
from hrm_codegen.recurrence import segment_weights
from hrm_codegen.retrofit import LayerSplit, convert
from hrm_codegen.train_config import compose_config, validate_config
from hrm_codegen.training import run

HRM = get_family("hrm")


def _batch(vocab: int = 97, rows: int = 2, width: int = 12) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(1, vocab, (rows, width), generator=generator)
    labels = torch.roll(ids, -1, dims=1)
    labels[:, :3] = -100  # a prompt
    labels[:, -1] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _model(**overrides) -> HierarchicalReasoningModel_ACTV1:
    torch.manual_seed(0)
    return HierarchicalReasoningModel_ACTV1({**TINY_HRM, **overrides})


def _manual_segment_losses(model, batch, segments: int, detach: bool) -> list[torch.Tensor]:
    """Each segment's summed next-token loss, the carry passed on by hand."""
    inner = model.model
    ids, pos, mask, _ = inner._batch_views(batch)
    carry = inner.reset_carry(torch.ones(ids.shape[0], dtype=torch.bool), inner.empty_carry(*ids.shape))
    losses = []
    for _ in range(segments):
        carry, states = inner.forward_segment(carry, ids, pos, mask, detach=detach)
        losses.append(token_cross_entropy(model.head(states), batch["labels"]).sum())
    return losses


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_m_segments_give_m_losses_with_the_configured_weights():
    model, batch = _model(halt_max_steps=3), _batch()
    train = OmegaConf.create({"deep_supervision": True, "deep_supervision_weights": [0.2, 0.0, 0.8]})
    state = HRM.new_train_state({**TINY_HRM, "halt_max_steps": 3}, train)
    assert isinstance(state, SegmentsState) and state.segments == 3 and state.weights == [0.2, 0.0, 0.8]
    out = HRM.forward_loss(model, batch, state, "softmax")
    manual = _manual_segment_losses(model, batch, 3, detach=True)
    assert sorted(out.metric_sums) == ["segment_1_loss", "segment_2_loss", "segment_3_loss"]
    for m, loss in enumerate(manual):
        assert torch.allclose(out.metric_sums[f"segment_{m + 1}_loss"], loss, atol=1e-5)
    assert torch.allclose(out.lm_sum, 0.2 * manual[0] + 0.8 * manual[2], atol=1e-5)
    assert not torch.allclose(manual[0], manual[1])  # the carry changes what a segment computes
    assert int(out.num_tokens) == int((batch["labels"] != -100).sum())
    assert segment_weights(OmegaConf.create({}), 4) == [0.25] * 4  # the default: 1/M each
    # Off (the default): the ACT carry of upstream's training, one segment per step as before
    assert isinstance(
        HRM.new_train_state({**TINY_HRM, "halt_max_steps": 3}, OmegaConf.create({})), ActCarryState
    )


def test_a_detached_carry_stops_the_gradient_and_an_attached_one_passes_it():
    """Full backpropagation (bp_steps=0), only the second segment's loss: detached, its gradient is that of a second
    segment started from a constant carry; attached, the first segment's computation gets gradient too."""
    batch = _batch()
    grads = {}
    for detach in (True, False):
        model = _model(halt_max_steps=2, bp_steps=0)
        train = OmegaConf.create(
            {
                "deep_supervision": True,
                "deep_supervision_weights": [0.0, 1.0],
                "deep_supervision_detach": detach,
            }
        )
        state = HRM.new_train_state({**TINY_HRM, "halt_max_steps": 2, "bp_steps": 0}, train)
        HRM.forward_loss(model, batch, state, "softmax").lm_sum.backward()
        grads[detach] = _grads(model)
        model.zero_grad()
        _manual_segment_losses(model, batch, 2, detach=detach)[1].backward()
        manual = _grads(model)
        assert grads[detach].keys() == manual.keys()
        assert all(torch.allclose(grads[detach][k], manual[k], atol=1e-6) for k in manual)
    assert any(not torch.allclose(grads[True][k], grads[False][k], atol=1e-6) for k in grads[True])


def test_the_first_segment_of_a_gated_retrofit_equals_its_source_and_closed_gates_keep_the_later_ones():
    torch.manual_seed(1)
    source = tiny_llama(num_hidden_layers=4, tie_word_embeddings=True).eval()
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = source(input_ids=ids).logits
    converted, config = convert(source, LayerSplit(0, 2, 2, 4, 1, 2))
    logits = {}
    for later in (True, False):
        model = HierarchicalReasoningModel_ACTV1(
            {**config.arch_dict(), "halt_max_steps": 3, "gate_later_segments": later}
        ).eval()
        model.load_state_dict(converted.state_dict())
        with torch.no_grad():
            logits[later] = model(batch={"input_ids": ids}, segments=3)["segment_logits"]
        assert float((logits[later][0] - expected).abs().max()) <= 1e-4  # segment 1 is the source
    # gate_later_segments: the carried states pass closed gates unchanged, so every segment is the source too
    assert all(float((s - expected).abs().max()) <= 1e-4 for s in logits[True])
    assert float((logits[False][1] - expected).abs().max()) > 1e-3  # without it the carry enters ungated
    with torch.no_grad():
        model.model.L_level.gate.fill_(0.5)
        opened = model(batch={"input_ids": ids}, segments=2)["segment_logits"]
    # an opened gate changes segment 1's second L cycle
    assert float((opened[0] - logits[False][0]).abs().max()) > 1e-3


def test_gate_later_segments_under_act_gates_the_rows_that_go_on_from_their_carry():
    """Upstream's ACT (one segment per step, the carry kept): with closed gates a continuing row's second segment
    returns its first segment's states; a row starting afresh computes from its initial state as always."""
    model = _model(halt_max_steps=2, recurrence_gates=True, gate_later_segments=True, zero_init_states=True)
    batch = _batch()
    carry = model.initial_carry(batch)
    carry, first = model(carry, batch)
    carry.halted[1] = True  # row 1 starts afresh on the same batch, row 0 goes on
    _, second = model(carry, batch)
    assert torch.allclose(second["logits"][0], first["logits"][0], atol=1e-6)
    assert torch.allclose(second["logits"][1], first["logits"][1], atol=1e-6)
    plain = _model(halt_max_steps=2, recurrence_gates=True, zero_init_states=True)
    carry = plain.initial_carry(batch)
    carry, first = plain(carry, batch)
    _, second = plain(carry, batch)
    assert not torch.allclose(second["logits"][0], first["logits"][0], atol=1e-4)


def test_a_run_logs_each_segment_loss_and_the_exit_gate_loss(tmp_path, gpt2_dir, mbpp_path):
    """Through the Trainer: two steps of two segments (weights 0.25 / 0.75) with the exit gate (weight 0.5)."""
    paths = [f"data.path={mbpp_path}", f"tokenizer.name_or_path={gpt2_dir}", f"checkpoint_root={tmp_path}"]
    overrides = [*FAST, *paths, "train.max_steps=2", "train.global_batch_size=2", "arch.halt_max_steps=2"]
    overrides += ["train.deep_supervision=true", "train.deep_supervision_weights=[0.25,0.75]"]
    overrides += ["arch.exit_gate=true", "train.exit_loss_weight=0.5", "run_name=deep"]
    result = run(compose_config(overrides))
    assert isinstance(result, dict)
    records = [r for r in read_metrics(Path(result["run_dir"])) if "loss" in r]
    assert len(records) == 2
    for r in records:
        assert r["lm_loss"] == pytest.approx(
            0.25 * r["segment_1_loss"] + 0.75 * r["segment_2_loss"], rel=1e-5
        )
        assert r["loss"] == pytest.approx(r["lm_loss"] + 0.5 * r["exit_loss"], rel=1e-5)
        assert 0.0 <= r["exit_target"] <= 1.0 and r["segment_1_loss"] != r["segment_2_loss"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.deep_supervision=true"], "set arch.halt_max_steps >= 2"),
        (
            ["train.deep_supervision=true", "arch.halt_max_steps=2", "train.deep_supervision_weights=[1.0]"],
            "expected 2 non-negative numbers",
        ),
        (["train.deep_supervision_weights=[0.5,0.5]"], "applies with train.deep_supervision=true"),
        (
            ["train.deep_supervision=true", "arch.halt_max_steps=2", "arch.enable_q_head=true"],
            "enable_q_head=true is upstream's ACT",
        ),
        (["arch.gate_later_segments=true"], "set recurrence_gates=true"),
        (["data.pairs_with_mbpp_train=true"], "is for data=pairs"),
    ],
)
def test_bad_settings_are_one_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_config(compose_config(["arch=tiny", *overrides]))


def test_the_budget_recipe_and_its_post_trained_source_share_data_order_and_optimizer():
    hrm = compose_config(["experiment=recurrence_mbpp_pairs"])
    source = compose_config(["experiment=posttrain_mbpp_pairs"])
    assert source.arch.name == "transformer" and hrm.train.arch_from_init
    assert OmegaConf.to_container(hrm.data, resolve=True) == OmegaConf.to_container(source.data, resolve=True)
    assert hrm.data.name == "pairs" and hrm.data.pairs_verified_only and hrm.data.pairs_with_mbpp_train
    assert hrm.train.epochs >= 2 and hrm.train.deep_supervision and hrm.train.random_cycles == "uniform"
    recurrence = {
        "init_from",
        "arch_from_init",
        "arch_overrides",
        "deep_supervision",
        "deep_supervision_weights",
    }
    recurrence |= {"random_cycles", "random_L_cycles"}
    a = {k: v for k, v in OmegaConf.to_container(hrm.train, resolve=True).items() if k not in recurrence}
    b = {k: v for k, v in OmegaConf.to_container(source.train, resolve=True).items() if k not in recurrence}
    assert a == b and hrm.seed == source.seed


def test_exit_gate_only_trains_the_gate_alone_at_its_own_learning_rate(tmp_path, gpt2_dir, mbpp_path):
    """Ouro's second stage through the Trainer: from a trained run, train.exit_gate_only moves the exit gate and
    leaves every other weight bit for bit; train.exit_gate_lr_scale gives the gate its own learning rate."""
    from safetensors.torch import load_file

    from hrm_codegen.optim import build_optimizer
    from hrm_codegen.recurrence import configure_exit_gate_training

    paths = [f"data.path={mbpp_path}", f"tokenizer.name_or_path={gpt2_dir}", f"checkpoint_root={tmp_path}"]
    common = [*FAST, *paths, "train.global_batch_size=2", "arch.exit_gate=true", "train.ckpt_every=1000"]
    first = run(compose_config([*common, "train.max_steps=2", "run_name=lm"]))
    assert isinstance(first, dict)
    start = Path(first["run_dir"]) / "step_2"
    gate_only = [*common, "train.max_steps=3", "run_name=gate", f"train.init_from={start}"]
    gate_only += ["train.exit_gate_only=true", "train.exit_gate_lr_scale=30"]
    second = run(compose_config(gate_only))
    assert isinstance(second, dict)
    before = load_file(str(start / "hf" / "model.safetensors"))
    after = load_file(str(Path(second["run_dir"]) / "step_3" / "hf" / "model.safetensors"))
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("model.exit_") for name in changed), changed
    records = [r for r in read_metrics(Path(second["run_dir"])) if "exit_loss" in r]
    assert len(records) == 3

    model = HierarchicalReasoningModel_ACTV1({**TINY_HRM, "exit_gate": True})
    configure_exit_gate_training(model, OmegaConf.create({"exit_gate_lr_scale": 30.0}))
    optimizer = build_optimizer(model, 1e-3, (0.9, 0.95), 0.1, 1e-8, False, False)
    gate_ids = {id(p) for p in [*model.model.exit_head.parameters(), *model.model.exit_norm.parameters()]}
    for group in optimizer.param_groups:
        in_gate = {id(p) in gate_ids for p in group["params"]}
        assert len(in_gate) == 1 and group["lr"] == pytest.approx(3e-2 if in_gate.pop() else 1e-3)
    with pytest.raises(ValueError, match="exit_gate_only=true trains the exit gate alone"):
        validate_config(compose_config(["arch=tiny", "train.exit_gate_only=true"]))
    with pytest.raises(ValueError, match="exit_gate_lr_scale must be a number > 0"):
        validate_config(compose_config(["arch=tiny", "train.exit_gate_lr_scale=0"]))
