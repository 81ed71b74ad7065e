"""Learned halting (arch.exit_gate): the exit gate trained on whether another L step lowers a token's loss, decoding
with a per-token number of steps (skipped calls' cache entries copied from the token's last computed call), the
never-exit threshold equal to the fixed cycles, and the layer evaluations per token recorded (scripts/evaluate.py
--halt-threshold)."""

import json

import pytest
import torch
from conftest import TINY_HRM, save_step
from omegaconf import OmegaConf
from test_evaluate_cli import load_script, tiny_hrm  # scripts/evaluate.py as a module

from hrm_codegen.families import get_family
from hrm_codegen.generation import generate
from hrm_codegen.losses_codegen import token_cross_entropy
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1
from hrm_codegen.recurrence import exit_targets
from hrm_codegen.tokenization import load_tokenizer

HRM = get_family("hrm")


def _model(**overrides) -> HierarchicalReasoningModel_ACTV1:
    """A tiny HRM whose exit gate has random weights (so thresholds in (0, 1) exit some tokens, not all)."""
    torch.manual_seed(0)
    model = HierarchicalReasoningModel_ACTV1({**TINY_HRM, "exit_gate": True, **overrides}).eval()
    with torch.no_grad():
        model.model.exit_head.weight.normal_(0.0, 1.0)
    return model


def _prompts() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 97, (3, 7), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    return ids, mask


def _decode(model, **options) -> list[list[int]]:
    ids, mask = _prompts()
    return generate(
        model, ids, mask, max_new_tokens=10, eos_token_id=None, pad_token_id=0, **options
    ).completion_ids


@pytest.mark.parametrize("overrides", [{}, {"halt_max_steps": 2}, {"H_cycles": 1, "L_cycles": 3}])
def test_the_never_exit_threshold_decodes_exactly_the_fixed_cycles(overrides):
    model = _model(**overrides)
    fixed = _decode(model)
    model.set_exit_threshold(1.0)
    assert _decode(model) == fixed
    assert _decode(model, cache_implementation="static") == fixed
    summary = model.exit_summary()
    full = model.config.halt_max_steps * model.config.layer_evals_per_segment
    assert summary["mean_layer_evals_per_token"] == full == summary["full_layer_evals_per_token"]
    assert summary["decode_tokens"] == 2 * 3 * 9  # two decodings, three rows, nine one-token steps each
    model.set_exit_threshold(0.0)  # every token leaves after its first L step
    early = _decode(model)
    assert early != fixed
    first_step = model.config.L_layers + model.config.H_layers
    assert model.exit_summary()["mean_layer_evals_per_token"] == first_step


def test_exits_decode_the_same_over_the_dynamic_and_the_static_cache_and_count_fewer_layers():
    model = _model()
    model.set_exit_threshold(0.5)
    dynamic = _decode(model)
    dynamic_stats = model.exit_summary()
    model.set_exit_threshold(0.5)
    assert _decode(model, cache_implementation="static") == dynamic
    assert model.exit_summary() == dynamic_stats
    assert 2 < dynamic_stats["mean_layer_evals_per_token"] < 6  # some tokens left early, not all (full: 6)
    model.set_exit_threshold(None)
    assert model.model.exit_threshold is None and _decode(model) != dynamic


def _level_calls(model) -> dict[str, int]:
    """Count the level calls the model runs (forward hooks on the L and H stacks)."""
    counts = {"L": 0, "H": 0}
    for name in counts:
        getattr(model.model, f"{name}_level").register_forward_hook(
            lambda *_, name=name: counts.__setitem__(name, counts[name] + 1)
        )
    return counts


@pytest.mark.parametrize(("overrides", "cache"), [({}, "dynamic"), ({"halt_max_steps": 2}, "static")])
def test_calls_every_row_has_left_are_not_run_and_decode_the_same_as_masking(overrides, cache):
    model = _model(**overrides)
    counts = _level_calls(model)
    ids, mask = _prompts()
    options = {"max_new_tokens": 8, "eos_token_id": None, "pad_token_id": 0}
    if cache == "static":
        options["cache_implementation"] = "static"

    def decode(row: int, skip: bool):
        model.model.exit_skip_calls = skip
        model.set_exit_threshold(0.5)
        counts.update(L=0, H=0)
        out = generate(model, ids[row : row + 1, mask[row].bool()], **options).completion_ids
        return out, dict(counts), model.exit_summary()

    skipped_any = False
    for row in range(3):  # batch 1: every exit is a call not run
        masked, masked_calls, masked_stats = decode(row, skip=False)
        skipped, skipped_calls, skipped_stats = decode(row, skip=True)
        assert skipped == masked
        assert masked_stats["skipped_layer_evals"] == 0
        assert {k: v for k, v in skipped_stats.items() if k != "skipped_layer_evals"} == {
            k: v for k, v in masked_stats.items() if k != "skipped_layer_evals"
        }
        # what a real exit runs is what ran: the full count less the calls skipped
        full = masked_stats["decode_tokens"] * masked_stats["full_layer_evals_per_token"]
        assert skipped_stats["layer_evals"] == full - skipped_stats["skipped_layer_evals"]
        layers = model.config.L_layers * (masked_calls["L"] - skipped_calls["L"])
        layers += model.config.H_layers * (masked_calls["H"] - skipped_calls["H"])
        assert layers == skipped_stats["skipped_layer_evals"]
        skipped_any |= skipped_stats["skipped_layer_evals"] > 0
    assert skipped_any  # the random gate exits some tokens early
    # in a batch a call runs while any row still needs it: the same tokens as each row alone
    model.model.exit_skip_calls = True
    model.set_exit_threshold(0.5)
    batched = generate(model, ids, mask, **options).completion_ids
    assert batched == [decode(row, skip=True)[0][0] for row in range(3)]


def test_a_token_that_exits_after_step_c_has_its_later_cache_entries_equal_to_step_c():
    """H_cycles = L_cycles = 2, one layer per level: the L calls (0,0), (0,1), (1,0), (1,1) and H calls 0, 1 of one
    decoding step. Row 0 exits after L call (0,0), row 1 after (1,0), row 2 runs everything."""
    model = _model()
    inner = model.model
    exit_after = {0: 0, 1: 2}  # row -> the L call (in order) after which it exits
    calls = []

    def forced_exit_logits(z_l):
        index = len(calls)
        calls.append(index)
        logits = torch.full(z_l.shape[:2], -30.0)
        for row, at in exit_after.items():
            if at == index:
                logits[row] = 30.0
        return logits

    ids, mask = _prompts()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)  # the prefill runs every call
        cache = out.past_key_values
        model.set_exit_threshold(0.5)
        inner.exit_logits = forced_exit_logits  # type: ignore[method-assign]
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        model(
            input_ids=nxt,
            attention_mask=torch.cat([mask, torch.ones_like(nxt)], 1),
            cache=cache,
            use_cache=True,
        )
    assert calls == [0, 1, 2]  # a decision after each L call but the step's last
    slot = {f"L{h}{ell}": inner.cache_slot(0, h, ell, "L") for h in (0, 1) for ell in (0, 1)}
    slot |= {f"H{h}": inner.cache_slot(0, h, None, "H") for h in (0, 1)}

    def entry(name: str, row: int) -> torch.Tensor:
        layer = cache.layers[slot[name]]
        return torch.cat([layer.keys[row, :, -1], layer.values[row, :, -1]])

    def same(a: str, b: str, row: int) -> bool:
        return torch.equal(entry(a, row), entry(b, row))

    assert all(same(name, "L00", 0) for name in ("L01", "L10", "L11")) and same("H1", "H0", 0)
    assert same("L11", "L10", 1) and not same("L10", "L01", 1) and not same("H1", "H0", 1)
    assert not any(same(a, b, 2) for a, b in (("L01", "L00"), ("L10", "L01"), ("L11", "L10"), ("H1", "H0")))
    # earlier columns (the prompt's) are untouched: the prefill computed every call for every token
    assert not torch.equal(cache.layers[slot["L01"]].keys[0, :, -2], cache.layers[slot["L00"]].keys[0, :, -2])
    # layer evaluations a real exit runs: row 0: L + H = 2, row 1: 3 L + 2 H = 5, row 2: 4 + 2 = 6
    assert inner.exit_stats == [3, 13] and model.exit_summary()["mean_layer_evals_per_token"] == 13 / 3


def test_the_exit_gate_learns_whether_another_step_lowers_the_loss_and_leaves_the_lm_alone():
    model = _model().train()
    generator = torch.Generator().manual_seed(6)
    ids = torch.randint(1, 97, (2, 10), generator=generator)
    labels = torch.roll(ids, -1, 1)
    labels[:, -1] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    state = HRM.new_train_state({**TINY_HRM, "exit_gate": True}, OmegaConf.create({"exit_loss_weight": 2.0}))
    out = HRM.forward_loss(model, batch, state, "softmax")
    points = model(batch=batch, segments=1, exit_points=True)["exit_points"]
    assert len(points) == 4  # after each L step of 2 x 2 cycles
    with torch.no_grad():
        losses = [token_cross_entropy(model.head(p.head_states), labels) for p in points]
        final = token_cross_entropy(model(input_ids=ids).logits, labels)
    assert torch.allclose(losses[-1], final, atol=1e-5)  # the last point is the model's output
    targets = exit_targets(losses, 0.0)
    assert all(
        torch.equal(t, (a - b <= 0).float()) for t, a, b in zip(targets, losses, losses[1:], strict=False)
    )
    valid = labels != -100
    bce = sum(
        torch.nn.functional.binary_cross_entropy_with_logits(p.exit_logits, t, reduction="none")[valid].sum()
        for p, t in zip(points, targets, strict=False)
    )
    assert out.extra_sum is not None and torch.allclose(out.extra_sum, 2.0 * bce / 3, atol=1e-5)
    assert torch.allclose(out.metric_sums["exit_target"], sum(t[valid].sum() for t in targets) / 3)
    model.zero_grad()
    out.extra_sum.backward()
    moved = {n for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    assert moved == {"model.exit_head.weight", "model.exit_head.bias"}  # the gate reads detached states


def test_exit_settings_are_checked():
    with pytest.raises(ValueError, match="has no exit gate"):
        HierarchicalReasoningModel_ACTV1(TINY_HRM).set_exit_threshold(0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        _model().set_exit_threshold(1.5)


def test_evaluate_records_the_layer_evaluations_per_token(tmp_path, gpt2_dir, mbpp_path, capsys):
    """scripts/evaluate.py --halt-threshold, run in this process (the script's own functions)."""
    cli = load_script()
    tokenizer = load_tokenizer(gpt2_dir)
    model, arch = tiny_hrm(tokenizer, dict(TINY_HRM), exit_gate=True)
    run_dir = tmp_path / "run"
    save_step(run_dir, 1, model, {"arch": {"name": "hrm", **arch}}, tokenizer)
    out = tmp_path / "eval"
    common = ["--ckpt", str(run_dir), "--mbpp", str(mbpp_path), "--limit", "1", "--max-new-tokens", "5"]
    common += ["--output", str(out), "--no-progress", "--workers", "1", "--threads", "1"]
    threads = torch.get_num_threads()
    try:
        # the untrained gate says 0.5 everywhere: every token leaves after its first L step
        cli.run(cli.parse_args([*common, "--halt-threshold", "0.4"]))
    finally:
        torch.set_num_threads(threads)  # the script sets its own
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["halt_threshold"] == 0.4
    assert summary["halting"]["mean_layer_evals_per_token"] == 2  # one L and one H layer, of 6
    assert summary["halting"]["full_layer_evals_per_token"] == 6 and summary["halting"]["decode_tokens"] >= 1
    with pytest.raises(ValueError, match="halt_threshold=0.4"):  # the output's samples were made with 0.4
        cli.run(cli.parse_args([*common, "--halt-threshold", "1.0"]))
    torch.set_num_threads(threads)
    for bad, message in (("2", "between 0 and 1"), ("0.5 --compile", "drop --compile")):
        with pytest.raises(SystemExit) as stopped:
            cli.parse_args([*common, "--halt-threshold", *bad.split()])
        assert stopped.value.code == 2 and message in capsys.readouterr().err
