"""The CUDA paths: bf16 attention kernels, the KV cache, bf16 training of the HRM and the baseline.

These need a CUDA device. On a CPU-only machine (CI) they are reported as skipped, not passed; the README's
"GPU" section says where and when they last ran on a GPU.
"""

import pytest
import torch
from safetensors.torch import load_file
from torch.nn.attention import SDPBackend, sdpa_kernel

from hrm_codegen.generation import generate
from hrm_codegen.inference import load_model_for_inference
from hrm_codegen.logging_utils import read_metrics
from hrm_codegen.models import HierarchicalReasoningModel_ACTV1
from hrm_codegen.models import layers as hrm_layers
from hrm_codegen.train_config import compose_config
from hrm_codegen.training import run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA_KERNELS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)


def cuda_model(config: dict, seed: int = 0, **overrides) -> HierarchicalReasoningModel_ACTV1:
    torch.manual_seed(seed)
    return HierarchicalReasoningModel_ACTV1({**config, **overrides}).cuda().eval()


@pytest.mark.parametrize("kernel", CUDA_KERNELS, ids=lambda k: k.name)
def test_bf16_sdpa_kernels_are_causal_bitwise_and_agree_with_eager(tiny_hrm_config, kernel):
    """Each SDPA kernel (FlashAttention-2 included) runs the bf16 HRM causally and matches eager attention."""
    model = cuda_model(tiny_hrm_config, forward_dtype="bfloat16", attn_backend="sdpa", halt_max_steps=2)
    reference = cuda_model(tiny_hrm_config, forward_dtype="bfloat16", attn_backend="eager", halt_max_steps=2)
    torch.manual_seed(1)
    ids = torch.randint(0, 97, (2, 32), device="cuda")
    j = 20
    changed = ids.clone()
    changed[:, j] = (ids[:, j] + 1) % 97
    with torch.no_grad(), sdpa_kernel(kernel):  # only this kernel may run: an unusable one raises
        a = model.lm_forward(ids)
        b = model.lm_forward(changed)
    with torch.no_grad():
        eager = reference.lm_forward(ids)
    assert a.dtype == torch.bfloat16 and torch.isfinite(a).all()  # logits come in the forward dtype
    assert torch.equal(a[:, :j], b[:, :j])
    assert not torch.allclose(a[:, j:], b[:, j:])
    # bf16 activations through 2 segments x 2 cycles x 2 levels: compare as relative error, not bitwise.
    assert ((a.float() - eager.float()).norm() / eager.float().norm()).item() < 3e-2


def test_flash_attn_package_matches_sdpa(tiny_hrm_config):
    """attn_backend=flash_attn (the optional flash-attn package) gives SDPA's logits on unpadded bf16 input."""
    if hrm_layers.flash_attn_func is None:
        pytest.skip("the optional flash-attn package is not installed")
    flash = cuda_model(tiny_hrm_config, forward_dtype="bfloat16", attn_backend="flash_attn")
    sdpa = cuda_model(tiny_hrm_config, forward_dtype="bfloat16", attn_backend="sdpa")
    ids = torch.randint(0, 97, (2, 32), device="cuda")
    with torch.no_grad():
        a, b = flash.lm_forward(ids).float(), sdpa.lm_forward(ids).float()
    assert ((a - b).norm() / b.norm()).item() < 3e-2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_cached_greedy_equals_full_recompute(tiny_hrm_config, dtype):
    """The KV cache on CUDA: the same greedy tokens as recomputing the whole sequence, left padding included."""
    model = cuda_model(tiny_hrm_config, forward_dtype=dtype, halt_max_steps=2)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 97, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :5], mask[2, :8] = 0, 0
    ids, mask = ids.cuda(), mask.cuda()
    cached = generate(model, ids, mask, max_new_tokens=16, use_cache=True, return_logits=True)
    full = generate(model, ids, mask, max_new_tokens=16, use_cache=False, return_logits=True)
    assert cached.sequences.is_cuda
    assert cached.logits is not None and full.logits is not None
    if dtype == "float32":
        assert torch.equal(cached.sequences, full.sequences)
        torch.testing.assert_close(cached.logits, full.logits, atol=1e-3, rtol=0)
    else:  # bf16 kernels differ between the prefill and the one-token steps: compare the first steps' logits
        first = cached.logits[:, 0]
        assert ((first - full.logits[:, 0]).norm() / full.logits[:, 0].norm()).item() < 3e-2


@pytest.mark.parametrize("arch", ["tiny", "transformer_tiny_params"])
def test_bf16_training_on_cuda_learns_and_saves_fp32_weights(gpt2_dir, mbpp_path, tmp_path, arch):
    """The launcher on one GPU in bf16: the loss on 8 repeated examples falls, fp32 master weights are saved."""
    overrides = [
        f"arch={arch}",
        "arch.hidden_size=64",
        "arch.seq_len=512",
        "train.global_batch_size=8",
        "train.max_steps=40",
        "train.warmup_steps=2",
        "train.lr=3e-3",
        "train.log_every=1",
        "train.eval_every=0",
        "train.mixed_precision=bf16",
        "data.train_limit=8",
        "data.eval_limit=8",
        f"data.path={mbpp_path}",
        f"tokenizer.name_or_path={gpt2_dir}",
        f"checkpoint_root={tmp_path}",
        "run_name=gpu",
    ]
    if arch == "tiny":
        overrides.append("arch.forward_dtype=bfloat16")
    run(compose_config(overrides))
    losses = [r["loss"] for r in read_metrics(tmp_path / "gpu") if "loss" in r]
    assert len(losses) == 40 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    weights = load_file(str(tmp_path / "gpu" / "step_40" / "hf" / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in weights.values())
    model, _ = load_model_for_inference(tmp_path / "gpu", device="cuda")
    assert next(model.parameters()).is_cuda
