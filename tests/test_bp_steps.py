"""Multi-step gradient (`arch.bp_steps`, HRM-Text's meaning), its warm-up, and pre-norm (`arch.norm_type`)."""

import pytest
import torch
from omegaconf import OmegaConf

from hrm_codegen.families import get_family
from hrm_codegen.flops import hrm_flops_per_token
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1, HRMConfig
from hrm_codegen.models.hrm_act_v1 import gradient_steps
from hrm_codegen.recurrence import bp_steps_at
from hrm_codegen.train_config import compose_config, validate_config
from hrm_codegen.training import Trainer


def make_model(cfg: dict, **overrides) -> HierarchicalReasoningModel_ACTV1:
    torch.manual_seed(0)
    return HierarchicalReasoningModel_ACTV1({**cfg, **overrides})


def record_gradient_calls(model: HierarchicalReasoningModel_ACTV1) -> dict[str, list[bool]]:
    """Per level, whether each evaluation's output is autograd-tracked, in call order."""
    calls: dict[str, list[bool]] = {"H": [], "L": []}
    model.model.H_level.register_forward_hook(lambda m, i, o: calls["H"].append(o.requires_grad))
    model.model.L_level.register_forward_hook(lambda m, i, o: calls["L"].append(o.requires_grad))
    return calls


def upstream_one_step_logits(model: HierarchicalReasoningModel_ACTV1, ids: torch.Tensor) -> torch.Tensor:
    """Upstream's segment written out: every step under no_grad but the last L and the last H step."""
    backbone, cfg = model.model, model.config
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    kwargs = {"attn_mask": None, "cache": None, "cos_sin": backbone.rotary_emb(positions)}
    x = backbone._input_embeddings(ids, positions)
    carry = backbone.reset_carry(
        torch.ones(ids.shape[0], dtype=torch.bool), backbone.empty_carry(ids.shape[0], ids.shape[1])
    )
    z_H, z_L = carry.z_H, carry.z_L
    with torch.no_grad():
        for h in range(cfg.H_cycles):
            for l_step in range(cfg.L_cycles):
                if not (h == cfg.H_cycles - 1 and l_step == cfg.L_cycles - 1):
                    z_L = backbone.L_level(z_L, z_H + x, **kwargs)
            if h != cfg.H_cycles - 1:
                z_H = backbone.H_level(z_H, z_L, **kwargs)
    z_L = backbone.L_level(z_L, z_H + x, **kwargs)
    z_H = backbone.H_level(z_H, z_L, **kwargs)
    return model.head(z_H)


def test_bp_steps_2_is_the_default_and_upstreams_one_step_gradient_bitwise(tiny_hrm_config):
    assert HRMConfig().bp_steps == 2 and HRMConfig().norm_type == "post"
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(1))
    grads = []
    for build in (lambda: make_model(tiny_hrm_config), lambda: make_model(tiny_hrm_config, bp_steps=2)):
        model = build().train()
        model.lm_forward(ids).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    reference = make_model(tiny_hrm_config).train()
    upstream_one_step_logits(reference, ids).square().mean().backward()
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    for got in grads:
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[n], expected[n]) for n in expected)


@pytest.mark.parametrize(
    ("h_cycles", "l_cycles", "bp_steps", "h_calls", "l_calls"),
    [
        (2, 2, 2, [False, True], [False, False, False, True]),
        (2, 2, 3, [True, True], [False, False, False, True]),
        (2, 2, 5, [True, True], [False, True, True, True]),  # both H steps, the last three L steps
        (2, 2, 6, [True, True], [True, True, True, True]),  # full backpropagation through the segment
        (3, 2, 2, [False, False, True], [False] * 5 + [True]),
        (3, 2, 4, [True, True, True], [False] * 5 + [True]),
        (3, 2, 6, [True, True, True], [False, False, False, True, True, True]),
    ],
)
def test_which_h_and_l_evaluations_carry_gradient(
    tiny_hrm_config, h_cycles, l_cycles, bp_steps, h_calls, l_calls
):
    model = make_model(tiny_hrm_config, H_cycles=h_cycles, L_cycles=l_cycles, bp_steps=bp_steps).train()
    calls = record_gradient_calls(model)
    model.lm_forward(torch.randint(0, 97, (2, 8))).sum().backward()
    assert calls == {"H": h_calls, "L": l_calls}
    assert gradient_steps(bp_steps, h_cycles) == (sum(h_calls), sum(l_calls))
    with torch.no_grad():  # evaluation never builds a graph
        calls["H"].clear()
        calls["L"].clear()
        model.lm_forward(torch.randint(0, 97, (2, 8)))
    assert not any(calls["H"] + calls["L"])


def test_full_backpropagation_changes_the_gradient_not_the_logits(tiny_hrm_config):
    ids = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(2))
    one, full = make_model(tiny_hrm_config).train(), make_model(tiny_hrm_config, bp_steps=6).train()
    a, b = one.lm_forward(ids), full.lm_forward(ids)
    assert torch.equal(a, b)
    a.square().mean().backward()
    b.square().mean().backward()
    name = "model.L_level.layers.0.mlp.down_proj.weight"
    ga, gb = dict(one.named_parameters())[name].grad, dict(full.named_parameters())[name].grad
    assert ga is not None and gb is not None and not torch.allclose(ga, gb)


def test_bp_steps_zero_is_full_backpropagation_at_any_cycle_count(tiny_hrm_config):
    """bp_steps=0 routes gradient through every H and L step, also after the cycles change."""
    ids = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(3))
    zero, full = (
        make_model(tiny_hrm_config, bp_steps=0).train(),
        make_model(tiny_hrm_config, bp_steps=6).train(),
    )
    zero.lm_forward(ids).square().mean().backward()
    full.lm_forward(ids).square().mean().backward()
    for (name, a), (_, b) in zip(zero.named_parameters(), full.named_parameters(), strict=True):
        assert (a.grad is None) == (b.grad is None) and (a.grad is None or torch.equal(a.grad, b.grad)), name
    zero.zero_grad()
    zero.set_cycles(1, 3)  # 1 x (3 L + 1 H) = 4 steps, all with gradient
    assert gradient_steps(0, 1, 3) == (1, 3)
    zero.lm_forward(ids).square().mean().backward()
    assert dict(zero.named_parameters())["model.L_level.layers.0.mlp.down_proj.weight"].grad is not None


def test_set_cycles_keeps_the_forward_s_bp_steps_equal_to_the_config_s(tiny_hrm_config):
    """A bp_steps above the new cycles' steps becomes 0 (full backpropagation) in the config and in what the forward
    uses; back at cycles with enough steps both return to the configured value."""
    model = make_model(tiny_hrm_config, bp_steps=5)  # 2 x (2 L + 1 H) = 6 steps
    assert (model.config.bp_steps, model.bp_steps) == (5, 5)
    model.set_cycles(1, 2)  # 3 steps < 5
    assert (model.config.bp_steps, model.bp_steps, model.configured_bp_steps) == (0, 0, 5)
    model.set_cycles(2, 2)
    assert (model.config.bp_steps, model.bp_steps) == (5, 5)


@pytest.mark.parametrize("bp_steps", [-1, 1, 7])
def test_bp_steps_out_of_range_is_refused(tiny_hrm_config, bp_steps):
    with pytest.raises(ValueError, match="bp_steps"):
        HRMConfig.from_arch({**tiny_hrm_config, "bp_steps": bp_steps})  # H_cycles=2, L_cycles=2: at most 6
    model = make_model(tiny_hrm_config)
    with pytest.raises(ValueError, match="bp_steps"):
        model.bp_steps = bp_steps


def test_warmup_schedule_values():
    # 100 steps, half of them warm-up, from 2 to 6: each of 2, 3, 4, 5 for 12.5 steps, then 6.
    values = {step: bp_steps_at(step, 100, 6, 0.5) for step in (0, 12, 13, 25, 37, 38, 49, 50, 99)}
    assert values == {0: 2, 12: 2, 13: 3, 25: 4, 37: 4, 38: 5, 49: 5, 50: 6, 99: 6}
    assert [bp_steps_at(s, 10, 4, 0.0) for s in range(3)] == [4, 4, 4]  # no warm-up: the target throughout
    assert [bp_steps_at(s, 10, 2, 1.0) for s in range(3)] == [2, 2, 2]
    assert [bp_steps_at(s, 4, 6, 1.0) for s in range(5)] == [2, 3, 4, 5, 6]


def test_the_family_hook_sets_the_models_bp_steps(tiny_hrm_config):
    family, model = get_family("hrm"), make_model(tiny_hrm_config, bp_steps=6)
    arch = {**tiny_hrm_config, "bp_steps": 6}  # the run config's arch, the model's

    def run_config(ratio: float):
        return OmegaConf.create({"seed": 0, "arch": arch, "train": {"bp_warmup_ratio": ratio}})

    family.before_step(model, 0, 100, run_config(0.5))
    assert model.bp_steps == 2 and model.config.bp_steps == 6
    calls = record_gradient_calls(model.train())
    model.lm_forward(torch.randint(0, 97, (1, 8)))
    assert calls == {"H": [False, True], "L": [False, False, False, True]}
    family.before_step(model, 25, 100, run_config(0.5))
    assert model.bp_steps == 4
    family.before_step(model, 0, 100, run_config(0.0))
    assert model.bp_steps == 4  # no warm-up, schedule or draws configured: the hook leaves the model alone


def test_trainer_calls_the_warmup_before_each_step(gpt2_dir, mbpp_path, tmp_path):
    overrides = [
        "arch=tiny",
        "arch.hidden_size=32",
        "arch.seq_len=128",
        "arch.bp_steps=6",
        "arch.prefix_lm=true",
        "data.pack=true",
        "data.train_limit=8",
        "train.global_batch_size=2",
        "train.max_steps=4",
        "train.bp_warmup_ratio=0.5",
        "train.num_threads=1",
        "dry_run=true",
        f"data.path={mbpp_path}",
        f"tokenizer.name_or_path={gpt2_dir}",
        f"checkpoint_root={tmp_path}",
    ]
    trainer = Trainer(compose_config(overrides))
    batch = next(trainer._micro_batches(0))
    assert int(batch["token_type_ids"].sum()) > 0  # packed MBPP blocks carry their prompts
    model = trainer.accelerator.unwrap_model(trainer.model)
    seen = []
    for _ in range(3):
        metrics = trainer.train_step()
        assert metrics is not None and metrics["loss"] == metrics["loss"]
        seen.append(model.bp_steps)
    assert seen == [2, 4, 6]  # warm-up over 2 of the 4 steps
    with pytest.raises(ValueError, match="bp_warmup_ratio"):
        validate_config(compose_config([*overrides, "train.bp_warmup_ratio=1.5"]))


def test_flops_count_backward_only_within_bp_steps(tiny_hrm_config):
    cfg = HRMConfig.from_arch(tiny_hrm_config)  # H_cycles=2, L_cycles=2, one layer per level
    one, full = (
        hrm_flops_per_token(cfg),
        hrm_flops_per_token(HRMConfig.from_arch({**tiny_hrm_config, "bp_steps": 6})),
    )
    layer = one["no_grad"] / 4  # 6 layer evaluations, 2 of them trained
    assert full["no_grad"] == 0.0
    assert full["trained"] == pytest.approx(one["trained"] + 3 * 4 * layer)
    assert full["total"] - one["total"] == pytest.approx(
        2 * 4 * layer
    )  # the backward of the 4 extra evaluations


def test_pre_norm_trains_and_post_stays_the_default(tiny_hrm_config):
    assert compose_config(["arch=hrm_v1"]).arch.norm_type == "post"
    with pytest.raises(ValueError, match="norm_type"):
        HRMConfig.from_arch({**tiny_hrm_config, "norm_type": "sandwich"})
    post, pre = make_model(tiny_hrm_config), make_model(tiny_hrm_config, norm_type="pre")
    assert post.state_dict().keys() == pre.state_dict().keys()  # scale-free norms: no new parameters
    ids = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert not torch.allclose(post.lm_forward(ids), pre.lm_forward(ids))
    optimizer = torch.optim.AdamW(pre.parameters(), lr=3e-3)
    losses = []
    pre.train()
    for _ in range(8):
        logits = pre.lm_forward(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 97), ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.1
