"""The Llama baseline: sizes matched to the HRM, analytic FLOPs against counted ones, save/load round trip."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM, AutoTokenizer

from hrm_codegen.families.transformers_lm import HF_DIR, TRANSFORMER
from hrm_codegen.flops import attention_flops, hrm_flops_per_token, llama_flops_per_token
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1
from hrm_codegen.models.baseline import (
    build_baseline,
    llama_config_from_hrm,
    swiglu_intermediate_size,
)
from hrm_codegen.tokenization import load_tokenizer


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_param_matched_baseline_has_hrm_layers_and_parameters(tiny_hrm_config):
    tiny_hrm_config.update(H_layers=2, L_layers=3)
    hrm = HierarchicalReasoningModel_ACTV1(tiny_hrm_config)
    llama = build_baseline({**tiny_hrm_config, "match": "params"})
    layers = 2 + 3
    assert llama.config.num_hidden_layers == layers
    hrm_params, llama_params = _num_params(hrm), _num_params(llama)
    # The only difference: Llama's RMSNorms have learned scales (2 per layer + the final norm), the HRM's none.
    assert llama_params - hrm_params == (2 * layers + 1) * tiny_hrm_config["hidden_size"]
    assert abs(llama_params - hrm_params) / hrm_params < 0.03


def test_compute_matched_baseline_has_one_layer_per_hrm_layer_evaluation(tiny_hrm_config):
    tiny_hrm_config.update(H_cycles=3, L_cycles=2, H_layers=1, L_layers=2, halt_max_steps=2)
    config = llama_config_from_hrm(tiny_hrm_config, match="compute")
    assert config.num_hidden_layers == 3 * (2 * 2 + 1) * 2


def test_llama_shares_the_hrm_width_rope_and_norm_settings(tiny_hrm_config):
    tiny_hrm_config.update(rope_theta=5000.0, rms_norm_eps=1e-4)
    hrm = HierarchicalReasoningModel_ACTV1(tiny_hrm_config)
    gate_up = hrm.model.L_level.layers[0].mlp.gate_up_proj.weight
    config = llama_config_from_hrm(tiny_hrm_config)
    assert config.intermediate_size == gate_up.shape[0] // 2
    assert swiglu_intermediate_size(512, 4.0) == 1536
    assert swiglu_intermediate_size(100, 4.0) == 512
    assert (config.hidden_size, config.num_attention_heads) == (32, 4)
    assert config.max_position_embeddings == tiny_hrm_config["seq_len"]
    assert not config.tie_word_embeddings
    assert not config.attention_bias and not config.mlp_bias
    assert config.rms_norm_eps == 1e-4
    llama = build_baseline(tiny_hrm_config)
    positions = torch.arange(tiny_hrm_config["seq_len"])[None]
    cos, sin = llama.model.rotary_emb(torch.zeros(1, dtype=torch.float32), positions)
    hrm_cos, hrm_sin = hrm.model.rotary_emb(positions)
    torch.testing.assert_close((cos, sin), (hrm_cos, hrm_sin))


def test_unknown_key_and_bad_match_are_reported(tiny_hrm_config):
    with pytest.raises(ValueError, match="hiden_size"):
        build_baseline({**tiny_hrm_config, "hiden_size": 64})
    with pytest.raises(ValueError, match="match must be one of"):
        llama_config_from_hrm(tiny_hrm_config, match="flops")


def test_save_and_reload_through_auto_classes_gives_identical_logits(tiny_hrm_config, gpt2_dir, tmp_path):
    tokenizer = load_tokenizer(gpt2_dir)
    tiny_hrm_config["vocab_size"] = tokenizer.vocab_size
    model = build_baseline({**tiny_hrm_config, "name": "transformer", "match": "params"})
    model.eval()
    TRANSFORMER.save_weights(model, model.state_dict(), tokenizer, tmp_path)  # a step's hf/, as in training
    saved = tmp_path / HF_DIR

    reloaded = AutoModelForCausalLM.from_pretrained(saved).eval()
    assert load_tokenizer(saved).fingerprint == tokenizer.fingerprint
    ids = torch.tensor([AutoTokenizer.from_pretrained(saved).encode("def add(a, b):\n    return a + b")])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
    assert reloaded.generation_config.eos_token_id == tokenizer.eos_id
    assert (saved / "model.safetensors").is_file()


def _matmul_flops_per_token(forward, input_ids: torch.Tensor) -> float:
    """Measured weight-matmul FLOPs per token (attention products excluded) of forward + loss + backward."""
    with FlopCounterMode(display=False) as counter:
        logits = forward(input_ids)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), input_ids.reshape(-1)).backward()
    counts = counter.get_flop_counts()["Global"]
    return sum(v for op, v in counts.items() if str(op) in ("aten.mm", "aten.addmm")) / input_ids.numel()


def test_analytic_flops_match_counted_matmuls_with_no_grad_layers_forward_only(tiny_hrm_config):
    seq_len, hidden = tiny_hrm_config["seq_len"], tiny_hrm_config["hidden_size"]
    ids = torch.randint(0, tiny_hrm_config["vocab_size"], (2, seq_len))
    hrm = HierarchicalReasoningModel_ACTV1(tiny_hrm_config)
    analytic = hrm_flops_per_token(hrm.config, seq_len)
    trained_layers = tiny_hrm_config["H_layers"] + tiny_hrm_config["L_layers"]
    no_grad_layers = hrm.config.layer_evals_per_segment - trained_layers
    attention = (no_grad_layers + 3 * trained_layers) * attention_flops(hidden, seq_len)
    assert _matmul_flops_per_token(hrm.lm_forward, ids) == analytic["total"] - attention
    assert no_grad_layers > 0 and analytic["no_grad"] > 0

    for match in ("params", "compute"):
        llama = build_baseline({**tiny_hrm_config, "match": match})
        analytic = llama_flops_per_token(llama.config, seq_len)
        attention = 3 * llama.config.num_hidden_layers * attention_flops(hidden, seq_len)
        measured = _matmul_flops_per_token(lambda x, llama=llama: llama(input_ids=x).logits, ids)
        assert measured == analytic["total"] - attention
