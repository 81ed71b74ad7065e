"""The HRM port: shapes, parameter names, causality, 1-step gradient, ACT wrapper, upstream import."""

import contextlib
import math

import pytest
import torch
from conftest import legacy_state_dict
from torch.nn.attention import SDPBackend, sdpa_kernel

from hrm_codegen.models import HierarchicalReasoningModel_ACTV1, HRMConfig
from hrm_codegen.models.hrm_act_v1 import rename_legacy_key
from hrm_codegen.models.layers import trunc_normal_init_
from hrm_codegen.models.upstream import load_upstream_weights


def make_model(cfg: dict, **overrides) -> HierarchicalReasoningModel_ACTV1:
    torch.manual_seed(0)
    return HierarchicalReasoningModel_ACTV1({**cfg, **overrides})


def upstream_key_list(cfg: HRMConfig) -> set[str]:
    """The state_dict contract of UPSTREAM_HRM.md, written out by hand (upstream's names)."""
    keys = {"inner.embed_tokens.embedding_weight", "inner.lm_head.weight", "inner.H_init", "inner.L_init"}
    if cfg.enable_q_head:
        keys |= {"inner.q_head.weight", "inner.q_head.bias"}
    if cfg.pos_encodings == "learned":
        keys.add("inner.embed_pos.embedding_weight")
    for level, n in (("H_level", cfg.H_layers), ("L_level", cfg.L_layers)):
        for i in range(n):
            prefix = f"inner.{level}.layers.{i}."
            keys |= {
                prefix + "self_attn.qkv_proj.weight",
                prefix + "self_attn.o_proj.weight",
                prefix + "mlp.gate_up_proj.weight",
                prefix + "mlp.down_proj.weight",
            }
    return keys


def test_logits_shape(tiny_hrm_config):
    model = make_model(tiny_hrm_config)
    logits = model.lm_forward(torch.randint(0, 97, (2, 16)))
    assert logits.shape == (2, 16, 97)
    carry = model.initial_carry({"input_ids": torch.zeros(2, 16, dtype=torch.long)})
    _, outputs = model(carry, {"input_ids": torch.randint(0, 97, (2, 16))})
    assert outputs["logits"].shape == (2, 16, 97)


def test_no_puzzle_embedding_and_q_head_flag(tiny_hrm_config):
    off = make_model(tiny_hrm_config, enable_q_head=False)
    on = make_model(tiny_hrm_config, enable_q_head=True)
    assert not any("puzzle_emb" in name for name, _ in off.named_parameters())
    assert not any("puzzle_emb" in name for name, _ in on.named_parameters())
    assert not any("q_head" in name for name, _ in off.named_parameters())
    assert {"model.q_head.weight", "model.q_head.bias"} <= {name for name, _ in on.named_parameters()}
    assert torch.all(on.model.q_head.weight == 0) and torch.all(on.model.q_head.bias == -5)


def test_puzzle_embeddings_and_unknown_keys_are_refused(tiny_hrm_config):
    with pytest.raises(ValueError, match="puzzle_emb_ndim"):
        HierarchicalReasoningModel_ACTV1({**tiny_hrm_config, "puzzle_emb_ndim": 32})
    with pytest.raises(ValueError, match="hiden_size"):
        HierarchicalReasoningModel_ACTV1({**tiny_hrm_config, "hiden_size": 32})


@pytest.mark.parametrize("pos", ["rope", "learned"])
@pytest.mark.parametrize("q_head", [False, True])
def test_state_dict_keys_match_upstream_contract(tiny_hrm_config, pos, q_head):
    model = make_model(tiny_hrm_config, pos_encodings=pos, enable_q_head=q_head, H_layers=2, L_layers=3)
    # upstream's names, the backbone's under `model.` and the head on top (`rename_legacy_key`)
    assert set(model.state_dict()) == {rename_legacy_key(k) for k in upstream_key_list(model.config)}
    cfg = model.config
    inter = math.ceil(round(cfg.expansion * cfg.hidden_size * 2 / 3) / 256) * 256
    sd = model.state_dict()
    assert sd["model.H_level.layers.0.self_attn.qkv_proj.weight"].shape == (
        3 * cfg.hidden_size,
        cfg.hidden_size,
    )
    assert sd["model.L_level.layers.2.mlp.gate_up_proj.weight"].shape == (2 * inter, cfg.hidden_size)
    assert sd["model.L_level.layers.2.mlp.down_proj.weight"].shape == (cfg.hidden_size, inter)
    assert sd["model.H_init"].shape == (cfg.hidden_size,)


def test_no_norm_parameters_and_rope_buffers_not_persistent(tiny_hrm_config):
    model = make_model(tiny_hrm_config)
    assert not any("norm" in name for name, _ in model.named_parameters())
    all_buffers = {name for name, _ in model.named_buffers()}
    assert {"model.rotary_emb.cos_cached", "model.rotary_emb.sin_cached"} <= all_buffers
    assert "model.rotary_emb.cos_cached" not in model.state_dict()


def test_truncated_normal_has_requested_std_and_bounds():
    torch.manual_seed(0)
    t = trunc_normal_init_(torch.empty(200_000), std=0.5)
    assert abs(t.std().item() - 0.5) < 0.01
    assert t.abs().max().item() <= 2 * 0.5 / 0.87962566 + 1e-6  # clip at 2 "uncorrected" stds


def _sdpa_backends() -> list[SDPBackend]:
    """SDPA kernels that actually run causal attention on this machine."""
    q = torch.randn(1, 2, 8, 8)
    usable = []
    for backend in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            with sdpa_kernel(backend):
                torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
            usable.append(backend)
        except RuntimeError:
            continue
    return usable


BACKENDS = [("eager", None)] + [("sdpa", b) for b in _sdpa_backends()]


def test_math_sdpa_backend_is_among_those_tested():
    assert ("sdpa", SDPBackend.MATH) in BACKENDS


@pytest.mark.parametrize(("attn_backend", "kernel"), BACKENDS, ids=[f"{a}-{k}" for a, k in BACKENDS])
@pytest.mark.parametrize("padded", [False, True])
def test_causality_is_bitwise(tiny_hrm_config, attn_backend, kernel, padded):
    model = make_model(tiny_hrm_config, attn_backend=attn_backend, halt_max_steps=2).eval()
    torch.manual_seed(1)
    ids = torch.randint(0, 97, (2, 16))
    mask = torch.ones_like(ids)
    if padded:
        mask[0, 12:] = 0  # right padding on one row exercises the explicit-mask path
    j = 9
    changed = ids.clone()
    changed[:, j] = (ids[:, j] + 1) % 97
    ctx = sdpa_kernel(kernel) if kernel is not None else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        a = model.lm_forward(ids, attention_mask=mask)
        b = model.lm_forward(changed, attention_mask=mask)
    assert torch.equal(a[:, :j], b[:, :j])
    assert not torch.allclose(a[:, j:12], b[:, j:12])


def test_non_causal_attention_sees_the_future(tiny_hrm_config):
    model = make_model(tiny_hrm_config, causal=False).eval()
    ids = torch.randint(0, 97, (1, 16))
    changed = ids.clone()
    changed[0, 9] = (ids[0, 9] + 1) % 97
    with torch.no_grad():
        a, b = model.lm_forward(ids), model.lm_forward(changed)
    assert not torch.allclose(a[:, :9], b[:, :9])


def test_left_padding_does_not_change_real_token_logits(tiny_hrm_config):
    for pos in ("rope", "learned"):
        model = make_model(tiny_hrm_config, pos_encodings=pos).eval()
        ids = torch.randint(0, 97, (1, 10))
        padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], 1)
        mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 10, dtype=torch.long)], 1)
        with torch.no_grad():
            plain = model.lm_forward(ids)
            left = model.lm_forward(padded, attention_mask=mask)
        torch.testing.assert_close(left[:, 4:], plain, atol=1e-5, rtol=1e-5)
        assert torch.isfinite(left).all()


def test_packed_segments_do_not_attend_across_examples(tiny_hrm_config):
    model = make_model(tiny_hrm_config).eval()
    a, b = torch.randint(0, 97, (1, 6)), torch.randint(0, 97, (1, 7))
    packed = torch.cat([a, b], 1)
    segment_ids = torch.tensor([[0] * 6 + [1] * 7])
    position_ids = torch.cat([torch.arange(6), torch.arange(7)])[None]
    with torch.no_grad():
        batch = {"input_ids": packed, "segment_ids": segment_ids, "position_ids": position_ids}
        carry = model.initial_carry(batch)
        _, outputs = model(carry, batch)
        alone_b = model.lm_forward(b)
    torch.testing.assert_close(outputs["logits"][:, 6:], alone_b, atol=1e-5, rtol=1e-5)


def test_only_last_l_and_h_step_carry_gradient(tiny_hrm_config):
    model = make_model(tiny_hrm_config, H_cycles=3, L_cycles=2).train()
    calls: dict[str, list[bool]] = {"H": [], "L": []}
    model.model.H_level.register_forward_hook(lambda m, i, o: calls["H"].append(o.requires_grad))
    model.model.L_level.register_forward_hook(lambda m, i, o: calls["L"].append(o.requires_grad))
    logits = model.lm_forward(torch.randint(0, 97, (2, 8)))
    assert calls["L"] == [False] * 5 + [True]  # H_cycles * L_cycles calls, only the last differentiable
    assert calls["H"] == [False, False, True]
    logits.sum().backward()
    assert model.model.L_level.layers[0].mlp.down_proj.weight.grad is not None


def _run_act_until_halted(model, batch, max_calls=10):
    carry = model.initial_carry(batch)
    carry, _ = model(carry, batch)
    calls = 1
    while not bool(carry.halted.all()) and calls < max_calls:
        carry, _ = model(carry, batch)
        calls += 1
    return calls, carry


def test_act_eval_runs_all_segments(tiny_hrm_config):
    for q_head in (False, True):
        model = make_model(tiny_hrm_config, halt_max_steps=3, enable_q_head=q_head).eval()
        if q_head:
            model.model.q_head.bias.data = torch.tensor([5.0, -5.0])  # would halt at once in training
        calls, carry = _run_act_until_halted(model, {"input_ids": torch.randint(0, 97, (2, 8))})
        assert calls == 3 and carry.steps.tolist() == [3, 3]


def test_act_training_halts_per_q_head(tiny_hrm_config):
    batch = {"input_ids": torch.randint(0, 97, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    model = make_model(
        tiny_hrm_config, halt_max_steps=3, enable_q_head=True, halt_exploration_prob=0.0
    ).train()
    model.model.q_head.bias.data = torch.tensor([5.0, -5.0])  # q_halt > q_continue: halt after one segment
    carry = model.initial_carry(batch)
    carry, outputs = model(carry, batch)
    assert carry.halted.tolist() == [True, True] and carry.steps.tolist() == [1, 1]
    assert {"q_halt_logits", "q_continue_logits", "target_q_continue"} <= set(outputs)
    model.model.q_head.bias.data = torch.tensor([-5.0, 5.0])  # continue until the step limit
    calls, carry = _run_act_until_halted(model, batch)
    assert calls == 3


def test_q_head_reads_last_real_token(tiny_hrm_config):
    model = make_model(tiny_hrm_config, enable_q_head=True).eval()
    model.model.q_head.weight.data.normal_()
    ids = torch.randint(1, 97, (1, 12))
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    other_pad = ids.clone()
    other_pad[0, 8:] = 0
    other_last = ids.clone()
    other_last[0, 7] = (ids[0, 7] + 1) % 97

    def q_halt(x):
        batch = {"input_ids": x, "attention_mask": mask}
        return model(model.initial_carry(batch), batch)[1]["q_halt_logits"]

    with torch.no_grad():
        base = q_halt(ids)
        assert torch.equal(base, q_halt(other_pad))
        assert not torch.equal(base, q_halt(other_last))


def test_upstream_checkpoint_import(tiny_hrm_config):
    model = make_model(tiny_hrm_config, pos_encodings="learned")
    upstream = make_model(tiny_hrm_config, pos_encodings="learned", vocab_size=13, enable_q_head=True)
    state = {f"_orig_mod.model.{k}": v.clone() for k, v in legacy_state_dict(upstream.state_dict()).items()}
    state["_orig_mod.model.inner.puzzle_emb.weights"] = torch.zeros(5, 32)
    before = model.state_dict()["model.embed_tokens.embedding_weight"].clone()
    report = load_upstream_weights(model, state)
    layer = "model.L_level.layers.0.self_attn.qkv_proj.weight"
    assert layer in report.loaded and "model.H_init" in report.loaded
    assert torch.equal(model.state_dict()[layer], upstream.state_dict()[layer])
    skipped = report.skipped
    assert "puzzle" in skipped["_orig_mod.model.inner.puzzle_emb.weights"]
    assert "q_head" in skipped["_orig_mod.model.inner.q_head.weight"]
    assert "shape" in skipped["_orig_mod.model.inner.embed_tokens.embedding_weight"]
    assert "shape" in skipped["_orig_mod.model.inner.lm_head.weight"]
    assert set(report.missing) == {"model.embed_tokens.embedding_weight", "lm_head.weight"}
    assert torch.equal(model.state_dict()["model.embed_tokens.embedding_weight"], before)


def test_upstream_import_from_file(tiny_hrm_config, tmp_path):
    model = make_model(tiny_hrm_config)
    path = tmp_path / "step_100"
    torch.save({k: v + 1 for k, v in model.state_dict().items()}, path)
    report = load_upstream_weights(model, path)
    assert not report.skipped and not report.missing
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_upstream_weights(model, tmp_path / "missing.pt")
