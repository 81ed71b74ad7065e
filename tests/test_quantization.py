"""int8 weight quantization: close logits, both methods, and the quality script end to end."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from hrm_codegen.generation import generate
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1
from hrm_codegen.quantization import Int8WeightOnlyLinear, quantize_weights, weight_bytes

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", ["int8", "int8_dynamic"])
def test_quantized_hrm_is_close_and_smaller(tiny_hrm_config, method):
    torch.manual_seed(0)
    model = HierarchicalReasoningModel_ACTV1({**tiny_hrm_config, "hidden_size": 64}).eval()
    ids = torch.randint(1, 97, (2, 10))
    reference = model.lm_forward(ids)
    before = weight_bytes(model)
    quantize_weights(model, method)
    logits = model.lm_forward(ids)
    assert ((logits - reference).norm() / reference.norm()).item() < 0.1
    assert weight_bytes(model) < 0.6 * before
    out = generate(model, ids, max_new_tokens=4)  # the KV-cached decoder runs on the quantized model
    assert len(out.completion_ids[0]) == 4
    with pytest.raises(ValueError, match="method"):
        quantize_weights(model, "int4")


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
