"""Activation smoothing (SmoothQuant) and the int8_smooth path: the same function before quantization, less int8
error on a model with an outlier channel, the fp32 layers it keeps, and one-line refusals."""

import copy

import pytest
import torch
from conftest import tiny_llama
from torch import nn

from hrm_codegen.generation import generate
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1
from hrm_codegen.quantization import _plain_linear, _replace_linears, _untie_head, quantize_weights
from hrm_codegen.retrofit import LayerSplit, convert
from hrm_codegen.smoothing import calibration_ids, smooth_activations, smoothing_groups

VOCAB = 97


def _llama(tied: bool = True):
    torch.manual_seed(0)
    # 4 query heads on 2 key-value heads: the o-projection scales are shared within each group
    return tiny_llama(VOCAB, hidden_size=64, intermediate_size=128, tie_word_embeddings=tied).eval()


def _retrofit():
    """A retrofitted HRM (pre-norm blocks with norm weights, grouped heads, a tied head) whose second L cycle is
    open, so the recurrence is part of what must stay equal."""
    hrm, _ = convert(_llama(), LayerSplit(0, 1, 1, 2, 1, 2))
    with torch.no_grad():
        hrm.model.L_level.gate.fill_(0.5)
    return hrm.eval()


def _outlier_model(family: str):
    """The family's tiny model with a planted outlier channel (`_plant_outlier`)."""
    model = _retrofit() if family == "hrm" else _llama(tied=False)
    _plant_outlier(model)
    return model


def _calibration(count: int = 4, length: int = 24) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(1, VOCAB, (length,), generator=generator) for _ in range(count)]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _plant_outlier(model) -> None:
    """Give one hidden channel a large scale in every norm that feeds a linear layer, as SmolLM2's residual
    stream has: the activations int8 quantizes then have one outlier channel."""
    with torch.no_grad():
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if name.endswith(("attn_norm", "mlp_norm", "input_layernorm", "post_attention_layernorm")):
                assert weight is not None, name
                weight[3] *= 60.0


@pytest.mark.parametrize("family", ["hrm", "llama"])
def test_smoothing_keeps_the_function_and_shrinks_the_outliers(family):
    model = _outlier_model(family)
    ids = torch.randint(1, VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))
    reference = _logits(model, ids)
    smoothed = copy.deepcopy(model)
    _replace_linears(smoothed, _plain_linear)
    _untie_head(smoothed)
    record = smooth_activations(smoothed, _calibration())
    logits = _logits(smoothed, ids)
    assert (logits - reference).abs().max().item() <= 1e-4 * reference.abs().max().item()
    # four groups per distinct block (the HRM's L block runs twice with one set of weights), and the head
    assert record["groups"] == 4 * 2 + 1 and record["max_outlier_ratio"] > 10
    # the planted channel's weight column of the q/k/v projection took the scale (grown), its norm gave it up
    norm = next(m for n, m in smoothed.named_modules() if n.endswith(("attn_norm", "input_layernorm")))
    assert norm.weight[3].abs() / norm.weight.abs().median() < 60.0 * 0.5


@pytest.mark.parametrize("family", ["hrm", "llama"])
def test_int8_smooth_is_closer_than_int8_dynamic_on_an_outlier_model_and_decodes(family):
    model = _outlier_model(family)
    ids = torch.randint(1, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    reference = _logits(model, ids)
    errors = {}
    for method in ("int8_dynamic", "int8_smooth"):
        quantized = quantize_weights(copy.deepcopy(model), method, calibration=_calibration())
        errors[method] = ((_logits(quantized, ids) - reference).norm() / reference.norm()).item()
        out = generate(quantized, ids, max_new_tokens=3)
        assert len(out.completion_ids[0]) == 3
    assert errors["int8_smooth"] < 0.7 * errors["int8_dynamic"], errors
    # the MLP's down projections keep fp16 weights; every other linear layer is int8 (per output channel)
    kinds = {
        name: str(m._packed_params.dtype)
        for name, m in quantized.named_modules()
        if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)
    }
    assert len(kinds) == (9 if family == "hrm" else 15) and all(
        (kind == "torch.float16") == name.endswith("down_proj") for name, kind in kinds.items()
    ), kinds
    assert quantized.__dict__["smoothing"]["alpha"] == 0.7


def test_unsupported_models_and_missing_calibration_are_one_line_errors(tiny_hrm_config):
    post_norm = HierarchicalReasoningModel_ACTV1({**tiny_hrm_config, "hidden_size": 64}).eval()
    with pytest.raises(ValueError, match=r"needs pre-norm blocks with norm weights .* has post norms"):
        quantize_weights(post_norm, "int8_smooth", calibration=_calibration())
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2)).eval()
    with pytest.raises(ValueError, match="supports the HRM and transformers' llama, qwen2, mistral .* gpt2"):
        quantize_weights(gpt2, "int8_smooth", calibration=_calibration())
    with pytest.raises(ValueError, match="int8_smooth needs the model's tokenizer"):
        quantize_weights(_retrofit(), "int8_smooth")
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        smooth_activations(_retrofit(), _calibration(), alpha=1.5)
    tied = _llama(tied=True)
    _replace_linears(tied, _plain_linear)
    with pytest.raises(ValueError, match="tied LM head needs it untied"):
        smoothing_groups(tied)


def test_calibration_text_is_deterministic_windows(gpt2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)
    first, second = calibration_ids(tokenizer, 3, 64), calibration_ids(tokenizer, 3, 64)
    assert len(first) == 3 and all(len(w) == 64 for w in first)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], first[1])
    with pytest.raises(ValueError, match="fewer than one window"):
        calibration_ids(tokenizer, 1, 10**7)
    assert isinstance(first[0], torch.Tensor) and not isinstance(first[0], nn.Parameter)
