"""The HRM in transformers' shape: a backbone (`HrmCodegenModel`, `model.base_model`) whose last hidden states
times the output embeddings are the logits, the Auto classes, inputs_embeds, logits_to_keep and labels,
gradient checkpointing of the level calls, and weights saved before the backbone / head split."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import legacy_state_dict
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModel, AutoModelForCausalLM

from hrm_codegen.checkpoint import save_checkpoint
from hrm_codegen.families import get_family
from hrm_codegen.hf_export import export_hf
from hrm_codegen.inference import build_model, load_checkpoint
from hrm_codegen.models import HrmCodegenForCausalLM, HrmCodegenModel, HRMConfig
from hrm_codegen.models.hrm_act_v1 import HierarchicalReasoningModel_ACTV1Block
from hrm_codegen.tokenization import load_tokenizer
from hrm_codegen.train_config import compose_config


def make_model(cfg: dict, **overrides) -> HrmCodegenForCausalLM:
    torch.manual_seed(0)
    return HrmCodegenForCausalLM({**cfg, **overrides})


def padded_batch(vocab: int = 97) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, vocab, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    return ids, mask


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("extra", [{}, {"halt_max_steps": 2, "norm_type": "pre", "final_norm": "head"}])
def test_backbone_states_times_the_output_embeddings_are_the_logits(tiny_hrm_config, tied, extra):
    """What TRL's fused LM head computes: base_model(...).last_hidden_state @ get_output_embeddings().weight.T."""
    model = make_model(tiny_hrm_config, tie_word_embeddings=tied, **extra).eval()
    assert model.base_model is model.model and isinstance(model.model, HrmCodegenModel)
    head = model.get_output_embeddings()
    assert head is (model.model.embed_tokens if tied else model.lm_head)
    assert head.bias is None
    ids, mask = padded_batch()
    with torch.no_grad():
        states = model.base_model(ids, attention_mask=mask, use_cache=False).last_hidden_state
        logits = model(input_ids=ids, attention_mask=mask).logits
    assert states.shape == (2, 10, tiny_hrm_config["hidden_size"])
    torch.testing.assert_close(states @ head.weight.T, logits, rtol=1e-6, atol=1e-6)


def test_auto_classes_resolve_to_the_backbone_and_the_causal_lm(tiny_hrm_config):
    config = HRMConfig(**tiny_hrm_config)
    assert type(AutoModel.from_config(config)) is HrmCodegenModel
    assert type(AutoModelForCausalLM.from_config(config)) is HrmCodegenForCausalLM


def test_inputs_embeds_stand_for_the_token_embeddings(tiny_hrm_config):
    model = make_model(tiny_hrm_config, pos_encodings="learned").eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        from_ids = model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(model(inputs_embeds=embeds, attention_mask=mask).logits, from_ids)
    for kwargs in ({}, {"input_ids": ids, "inputs_embeds": embeds}):
        with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
            model.base_model(**kwargs)


def test_logits_to_keep_labels_and_positional_input_ids(tiny_hrm_config):
    model = make_model(tiny_hrm_config).eval()
    ids, mask = padded_batch()
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, labels=labels)
        last = model(input_ids=ids, attention_mask=mask, logits_to_keep=3).logits
        picked = model(input_ids=ids, attention_mask=mask, logits_to_keep=torch.tensor([0, 4])).logits
        positional = model(ids, attention_mask=mask).logits  # the transformers call, model(input_ids)
    torch.testing.assert_close(last, full.logits[:, -3:])  # a smaller matmul: other kernel blocking
    torch.testing.assert_close(picked, full.logits[:, [0, 4]])
    torch.testing.assert_close(positional, full.logits, rtol=0, atol=0)
    expected = F.cross_entropy(
        full.logits[:, :-1].reshape(-1, 97), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(full.loss, expected)


def _loss_and_gradients(model: HrmCodegenForCausalLM) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """One forward + backward of the LM loss in training mode; the number of transformer-block calls (backward's
    recomputations included)."""
    calls = []
    for module in model.modules():
        if isinstance(module, HierarchicalReasoningModel_ACTV1Block):
            # a pre-hook: non-reentrant recomputation stops once it has what backward needs, maybe mid-block
            module.register_forward_pre_hook(lambda *_: calls.append(1))
    ids, mask = padded_batch()
    loss = model.train()(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, len(calls)


@pytest.mark.filterwarnings(
    "ignore:`(gradient_checkpointing_enable|is_gradient_checkpointing)` is deprecated:FutureWarning"
)
@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("bp_steps", [2, 0], ids=["1-step-gradient", "full-backprop"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_hrm_config, reentrant, bp_steps):
    """Checkpointing recomputes each gradient-carrying level call in the backward pass (its blocks run again)
    and changes neither the loss nor any gradient (the gates and learned positions included)."""
    config = {**tiny_hrm_config, "bp_steps": bp_steps, "pos_encodings": "learned", "recurrence_gates": True}
    off_loss, off_grads, off_calls = _loss_and_gradients(make_model(config))
    model = make_model(config)
    assert model.supports_gradient_checkpointing and not model.is_gradient_checkpointing
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    assert model.is_gradient_checkpointing
    on_loss, on_grads, on_calls = _loss_and_gradients(model)
    torch.testing.assert_close(on_loss, off_loss)
    assert on_grads.keys() == off_grads.keys() and "model.L_level.gate" in on_grads
    assert "model.embed_pos.embedding_weight" in on_grads
    for name, grad in off_grads.items():
        torch.testing.assert_close(on_grads[name], grad, msg=name)
    # 2 x 2 cycles of one-layer levels: 6 block calls, of which bp_steps (all 6 for 0) are recomputed
    assert off_calls == 6 and on_calls == 6 + (bp_steps or 6)


@pytest.fixture(scope="module")
def tokenizer(gpt2_dir):
    return load_tokenizer(gpt2_dir)


def _old_step(run_dir: Path, gpt2_dir: Path, tokenizer, layout: str) -> tuple[Path, HrmCodegenForCausalLM]:
    """A step as written before the backbone / head split: its weights under upstream's `inner.*` names, in the
    save_pretrained layout (`hf/`) or the older `model.safetensors`."""
    cfg = compose_config(
        ["arch=tiny", "arch.hidden_size=32", "arch.seq_len=64", f"tokenizer.name_or_path={gpt2_dir}"]
    )
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer.vocab_size)
    old = legacy_state_dict(model.state_dict())

    def weights(directory: Path) -> None:
        if layout == "hf":
            get_family("hrm").save_weights(model, model.state_dict(), tokenizer, directory)
            save_file(old, str(directory / "hf" / "model.safetensors"), metadata={"format": "pt"})
        else:
            save_file(old, str(directory / "model.safetensors"))

    save_checkpoint(run_dir, 1, config=cfg, tokenizer=tokenizer, extra_files=weights)
    return run_dir / "step_1", model.eval()


@pytest.mark.parametrize("layout", ["hf", "model.safetensors"])
def test_steps_written_with_the_old_names_load_and_export(gpt2_dir, tokenizer, tmp_path, layout):
    step, model = _old_step(tmp_path / "run", gpt2_dir, tokenizer, layout)
    ids = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 3, 4, 5]])
    mask = (ids != 0).long()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        loaded = load_checkpoint(step).model
        torch.testing.assert_close(
            loaded(input_ids=ids, attention_mask=mask).logits, expected, rtol=0, atol=0
        )
    result = export_hf(step, tmp_path / "export")  # loads the export back with its shipped code
    assert result.max_abs_diff == 0.0


def test_save_pretrained_directories_with_the_old_names_load_and_resave_with_todays(
    gpt2_dir, tokenizer, tmp_path
):
    step, model = _old_step(tmp_path / "run", gpt2_dir, tokenizer, "hf")
    with safe_open(str(step / "hf" / "model.safetensors"), "pt") as saved:
        assert all(key.startswith("inner.") for key in saved.keys())  # noqa: SIM118 - safe_open has no __iter__
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        auto = AutoModelForCausalLM.from_pretrained(step / "hf").eval()
        torch.testing.assert_close(auto(input_ids=ids).logits, expected, rtol=0, atol=0)
        backbone = AutoModel.from_pretrained(step / "hf").eval()
        torch.testing.assert_close(backbone(ids).last_hidden_state @ model.lm_head.weight.T, expected)
    auto.save_pretrained(tmp_path / "resaved")
    with safe_open(str(tmp_path / "resaved" / "model.safetensors"), "pt") as saved:
        assert set(saved.keys()) == set(model.state_dict())  # noqa: SIM118
