"""int8 weight quantization: close logits, both methods, and the quality script end to end."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama

from hrm_codegen.generation import generate
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1
from hrm_codegen.quantization import (
    Int4WeightOnlyLinear,
    Int8WeightOnlyLinear,
    quantize_weights,
    weight_bytes,
)

REPO = Path(__file__).resolve().parents[1]


def _logits(model, ids):
    return model(input_ids=ids).logits


@pytest.mark.parametrize("family", ["hrm", "llama"])
@pytest.mark.parametrize("method", ["fp16", "int8", "int8_dynamic", "int4"])
def test_quantized_models_are_close_smaller_and_decode(tiny_hrm_config, family, method):
    torch.manual_seed(0)
    if family == "hrm":
        model = HierarchicalReasoningModel_ACTV1(
            {**tiny_hrm_config, "hidden_size": 64, "tie_word_embeddings": True}
        ).eval()
    else:
        model = tiny_llama(hidden_size=64, intermediate_size=128, tie_word_embeddings=True).eval()
    ids = torch.randint(1, 97, (2, 10))
    reference = _logits(model, ids)
    before = weight_bytes(model)
    # int4 through the packed kernel whatever the CPU (slow without AVX-512, but exact enough to test)
    quantize_weights(model, method, int4_packed=True if method == "int4" else None)
    logits = _logits(model, ids)
    tolerance = {"int4": 0.35, "fp16": 1e-3}.get(method, 0.1)  # random weights: int4 moves logits more
    assert ((logits - reference).norm() / reference.norm()).item() < tolerance
    if family == "hrm" or method != "int4":
        assert weight_bytes(model) < 0.6 * before
    out = generate(model, ids, max_new_tokens=4)  # the KV-cached decoder runs on the quantized model
    assert len(out.completion_ids[0]) == 4
    # a tied head is quantized as a layer of its own; the embedding table stays as it was
    head = model.get_output_embeddings()
    assert head is not model.get_input_embeddings()
    assert type(head) is not torch.nn.Linear or type(head.weight) is not torch.nn.Parameter  # quantized


def test_unsupported_settings_are_refused_with_one_line(tiny_hrm_config):
    torch.manual_seed(0)
    model = HierarchicalReasoningModel_ACTV1({**tiny_hrm_config, "hidden_size": 64}).eval()
    with pytest.raises(
        ValueError, match="method must be one of fp16, int8, int8_dynamic, int8_smooth, int4, got 'int3'"
    ):
        quantize_weights(model, "int3")
    half = HierarchicalReasoningModel_ACTV1({**tiny_hrm_config, "forward_dtype": "bfloat16"})
    with pytest.raises(ValueError, match="fp32 CPU inference; this model runs in bfloat16"):
        quantize_weights(half, "int8")
    with pytest.raises(ValueError, match="48 input features is not a multiple of the group size 32"):
        Int4WeightOnlyLinear(torch.nn.Linear(48, 8))


def test_int4_kernel_equals_its_dequantized_weights():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    packed, plain = Int4WeightOnlyLinear(linear, packed=True), Int4WeightOnlyLinear(linear, packed=False)
    x = torch.randn(3, 5, 64)
    torch.testing.assert_close(packed(x), plain(x), atol=1e-4, rtol=1e-4)
    # the int4 grid: 16 levels per group of 32 input channels
    assert max(len(group.unique()) for group in plain.weight.reshape(96, 32)) <= 16
    error = (plain.weight - linear.weight).abs().max()
    assert 0 < error <= (linear.weight.max() - linear.weight.min()) / 15


def test_pytorch_int8_weight_only_linear_matches_dequantized_weights():
    linear = torch.nn.Linear(64, 48)
    q = Int8WeightOnlyLinear(linear)
    x = torch.randn(3, 5, 64)
    dequantized = q.weight_int8.float() * q.scale[:, None]
    torch.testing.assert_close(q(x), x @ dequantized.T + linear.bias, atol=1e-4, rtol=1e-4)


def test_bench_quantization_end_to_end(gpt2_dir, mbpp_path, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "bench_quantization", REPO / "scripts/bench_quantization.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_quantization"] = bench
    spec.loader.exec_module(bench)
    out = tmp_path / "q.json"
    args = ["--random-tiny", "--tokenizer", str(gpt2_dir), "--data", str(mbpp_path), "--limit", "3"]
    results = bench.main([*args, "--new-tokens", "4", "--batch-size", "3", "--output", str(out)])
    assert out.is_file()
    assert results["tasks"] == 3 and results["prompts"] == 3
    assert abs(results["val_loss_relative_change"]) < 0.05
    assert 0 <= results["greedy_identical"] <= 1 and 0 <= results["greedy_prefix_agreement"] <= 1
    assert results["int8"]["weight_bytes"] < results["fp32"]["weight_bytes"]
