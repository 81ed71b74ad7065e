"""The HRM-Text family (`arch.name=hrm_text`, transformers' HrmTextForCausalLM): training, bit-exact resume,
checkpoints that plain transformers loads, evaluation, `train.init_from` a pretrained model, PrefixLM masks in
training and generation, FLOPs."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import (
    AutoModelForCausalLM,
    HrmTextConfig,
    HrmTextForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from hrm_codegen.checkpoint import read_meta
from hrm_codegen.families import GenerationRequest, get_family
from hrm_codegen.families.base import is_pretrained_source
from hrm_codegen.flops import hrm_text_flops_per_token
from hrm_codegen.inference import build_model, load_checkpoint, load_pretrained
from hrm_codegen.tokenization import load_tokenizer
from hrm_codegen.train_config import compose_config, validate_config
from hrm_codegen.training import Trainer, run

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "train_codegen.py"
EVALUATE = REPO / "scripts" / "evaluate.py"
TINY = ["arch=hrm_text_tiny", "arch.hidden_size=32", "arch.seq_len=128"]
FAST = [
    "train.global_batch_size=2",
    "train.warmup_steps=1",
    "train.lr=3e-3",
    "train.log_every=1",
    "train.eval_every=0",
    "train.num_threads=1",
    "data.train_limit=16",
    "data.eval_limit=4",
    "train.keep_last=0",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
FAMILY = get_family("hrm_text")


@pytest.fixture
def paths(gpt2_dir, mbpp_path, tmp_path):
    return [
        f"data.path={mbpp_path}",
        f"tokenizer.name_or_path={gpt2_dir}",
        f"checkpoint_root={tmp_path / 'ck'}",
    ]


def _tiny_hrm_text(vocab_size: int = 97, **overrides) -> HrmTextForCausalLM:
    torch.manual_seed(0)
    settings = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "head_dim": 8,
        "max_position_embeddings": 128,
        "H_cycles": 2,
        "L_cycles": 2,
        **overrides,
    }
    return HrmTextForCausalLM(HrmTextConfig(**settings)).eval()


def _evaluate(run_or_model: list[str], mbpp_path: Path, output: Path) -> dict:
    """scripts/evaluate.py in this process on 2 MBPP test problems, 6 new tokens each."""
    spec = importlib.util.spec_from_file_location("evaluate_script", EVALUATE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.parse_args(
        [*run_or_model, "--mbpp", str(mbpp_path), "--limit", "2", "--max-new-tokens", "6"]
        + ["--workers", "1", "--no-progress", "--output", str(output)]
    )
    return module.run(args)


def test_configs_match_hrm_v1_and_tiny_and_refuse_unknown_keys():
    full = compose_config(["arch=hrm_text"])
    validate_config(full)
    config = FAMILY.build({**dict(full.arch), "vocab_size": 50257}).config  # type: ignore[union-attr]
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size) == (512, 8, 1536)
    assert (
        config.num_layers_per_stack * config.H_cycles * (config.L_cycles + 1) == 24
    )  # hrm_v1: 2 x (2x4 + 4)
    tiny = compose_config(["arch=hrm_text_tiny"]).arch
    assert (tiny.hidden_size, tiny.num_heads, tiny.num_layers_per_stack, tiny.seq_len) == (64, 4, 1, 256)
    with pytest.raises(ValueError, match="unknown hrm_text config key"):
        validate_config(compose_config(["arch=hrm_text_tiny", "+arch.H_layers=2"]))
    with pytest.raises(ValueError, match="L_bp_cycles"):
        validate_config(compose_config(["arch=hrm_text_tiny", "arch.L_bp_cycles=[1,1,1]"]))
    with pytest.raises(ValueError, match="flash_attn"):
        validate_config(compose_config(["arch=hrm_text_tiny", "arch.attn_backend=flash_attn"]))


def test_flops_count_backward_only_where_l_bp_cycles_route_gradients():
    base = {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
    base |= {"num_attention_heads": 4, "head_dim": 16, "H_cycles": 2, "L_cycles": 3}
    one = hrm_text_flops_per_token(HrmTextConfig(**base, L_bp_cycles=[1]), 100)
    full = hrm_text_flops_per_token(HrmTextConfig(**base, L_bp_cycles=[3, 3]), 100)
    layer = 2.0 * (5 * 64 * 64 + 3 * 64 * 128) + 2.0 * 64 * 101
    # [1] -> [1, 1]: 2 H calls + 2 L calls trained, 4 L calls no-grad; [3, 3]: all 8 calls trained
    assert one["no_grad"] == 4 * 2 * layer and full["no_grad"] == 0
    assert one["trained"] == 3 * 4 * 2 * layer + 6.0 * 1000 * 64
    assert full["total"] - one["total"] == 4 * 2 * 2 * layer


def _changed(ids: torch.Tensor, j: int) -> torch.Tensor:
    other = ids.clone()
    other[0, j] = (other[0, j] + 1) % 97
    return other


def test_prefix_lm_through_the_family():
    model = _tiny_hrm_text()
    ids = torch.randint(1, 97, (1, 12))
    prompt = 5  # positions 0..4 are the prompt (BOS included)
    mask = torch.ones_like(ids)
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": (torch.arange(12) < prompt).long()[None],
    }
    with torch.no_grad():
        logits = FAMILY.lm_logits(model, batch)
        # the prompt is bidirectional: changing prompt token 3 changes the logits of an earlier prompt position
        assert not torch.equal(
            FAMILY.lm_logits(model, {**batch, "input_ids": _changed(ids, 3)})[:, :3], logits[:, :3]
        )
        for j in range(prompt, 12):  # completion tokens are causal: nothing before j moves, bit for bit
            assert torch.equal(
                FAMILY.lm_logits(model, {**batch, "input_ids": _changed(ids, j)})[:, :j], logits[:, :j]
            )
        # without token_type_ids (corpus data) the model is plainly causal, prompt included
        plain = FAMILY.lm_logits(model, {"input_ids": ids, "attention_mask": mask})
        changed = FAMILY.lm_logits(model, {"input_ids": _changed(ids, 3), "attention_mask": mask})
        assert torch.equal(plain[:, :3], changed[:, :3])


def test_cached_generation_with_a_prefix_equals_uncached_greedy():
    model = _tiny_hrm_text()
    prompts = torch.tensor([[0, 0, 11, 12, 13, 14], [21, 22, 23, 24, 25, 26]])  # left-padded
    mask = (prompts != 0).long()
    mask[1] = 1
    request = GenerationRequest(max_new_tokens=8, eos_token_id=96, pad_token_id=0)
    cached = FAMILY.generate(model, prompts, mask, request)
    for row in range(2):  # full recomputation each step: prompt = prefix, generated tokens causal
        real = prompts[row][mask[row].bool()][None]
        ids, expected = real, []
        with torch.no_grad():
            for _ in range(8):
                types = torch.zeros_like(ids)
                types[:, : real.shape[1]] = 1
                token = int(
                    model(input_ids=ids, token_type_ids=types, use_cache=False).logits[0, -1].argmax()
                )
                if token == 96:
                    break
                expected.append(token)
                ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        assert cached.completion_ids[row] == expected
    # the prefix matters: decoding the same prompt plainly causal gives other logits at the prefill
    with torch.no_grad():
        real = prompts[1:]
        prefix = model(input_ids=real, token_type_ids=torch.ones_like(real)).logits[0, -1]
        causal = model(input_ids=real).logits[0, -1]
    assert not torch.equal(prefix, causal)


def test_trains_checkpoints_in_hf_loads_in_plain_transformers_and_evaluates(paths, mbpp_path, tmp_path):
    result = run(compose_config([*TINY, *FAST, *paths, "train.max_steps=3", "run_name=ht"]))
    run_dir = Path(result["run_dir"])
    step = run_dir / "step_3"
    assert (step / "hf" / "model.safetensors").is_file() and not (step / "model.safetensors").exists()
    loaded = load_checkpoint(run_dir)
    assert loaded.family is FAMILY and isinstance(loaded.model, HrmTextForCausalLM)
    plain = AutoModelForCausalLM.from_pretrained(step / "hf").eval()
    assert isinstance(plain, HrmTextForCausalLM)
    ids = torch.randint(0, 50257, (2, 10))
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, loaded.model(input_ids=ids).logits)
    summary = _evaluate(["--ckpt", str(run_dir)], mbpp_path, tmp_path / "eval")
    assert summary["num_problems"] == 2 and summary["config"]["source"] == f"hrm_text {step.resolve()}"


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(paths, tmp_path):
    args = [*TINY, *FAST, *paths, "train.max_steps=12", "train.ckpt_every=3"]
    run_script = [sys.executable, str(SCRIPT), *args]
    reference = subprocess.run(
        [*run_script, "run_name=ref"], cwd=tmp_path, env=ENV, capture_output=True, text=True
    )
    assert reference.returncode == 0, reference.stderr
    killed = tmp_path / "ck" / "killed"
    proc = subprocess.Popen(
        [*run_script, "run_name=killed"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (killed / "step_3").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert read_meta(killed / (killed / "latest").read_text().strip())["step"] < 12
    resumed = subprocess.run(
        [*run_script, "run_name=killed", "resume=auto"], cwd=tmp_path, env=ENV, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    weights = Path("step_12") / "hf" / "model.safetensors"
    assert (killed / weights).read_bytes() == (tmp_path / "ck" / "ref" / weights).read_bytes()


def _save_source(model, gpt2_dir: Path, directory: Path) -> Path:
    model.save_pretrained(directory)
    load_tokenizer(gpt2_dir).save(directory)
    return directory


@pytest.mark.parametrize("kind", ["hrm_text", "llama"])
def test_init_from_a_pretrained_directory_fine_tunes_and_evaluates(
    paths, gpt2_dir, mbpp_path, tmp_path, kind
):
    if kind == "hrm_text":
        source_model, arch = _tiny_hrm_text(50257), TINY
    else:
        torch.manual_seed(0)
        llama = LlamaConfig(vocab_size=50257, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
        llama.num_attention_heads = llama.num_key_value_heads = 4
        llama.max_position_embeddings = 128
        source_model, arch = (
            LlamaForCausalLM(llama).eval(),
            ["arch=transformer_tiny_params", "arch.seq_len=128"],
        )
    source = _save_source(source_model, gpt2_dir, tmp_path / f"{kind}_source")
    assert is_pretrained_source(source) and is_pretrained_source("sapientinc/HRM-Text-1B")
    overrides = [
        *arch,
        *FAST,
        *paths,
        f"train.init_from={source}",
        "train.max_steps=5",
        f"run_name=ft_{kind}",
    ]
    trainer = Trainer(compose_config(overrides))
    batch = {
        "input_ids": torch.randint(0, 50257, (2, 9)),
        "attention_mask": torch.ones(2, 9, dtype=torch.long),
    }
    with torch.no_grad():  # step 0 is the source model
        assert torch.equal(
            trainer.family.lm_logits(trainer.model.eval(), batch), source_model(**batch).logits
        )
    assert trainer.saved_config().tokenizer.fingerprint == load_tokenizer(gpt2_dir).fingerprint
    result = run(compose_config(overrides))
    run_dir = Path(result["run_dir"])
    assert (run_dir / "step_5").is_dir()
    loaded = load_checkpoint(run_dir)
    assert type(loaded.model) is type(source_model)
    with torch.no_grad():
        assert not torch.equal(loaded.model(**batch).logits, source_model(**batch).logits)
    summary = _evaluate(["--ckpt", str(run_dir)], mbpp_path, tmp_path / "eval")
    assert summary["num_problems"] == 2


@pytest.mark.parametrize("kind", ["hrm_text", "llama"])
def test_a_run_from_a_pretrained_model_records_its_arch_and_resumes_without_it(
    paths, gpt2_dir, tmp_path, kind
):
    """config.yaml holds the architecture of train.init_from (not the composed arch), and resume=auto rebuilds
    the model from the step alone: the source directory is gone by then."""
    if kind == "hrm_text":
        source_model, arch = _tiny_hrm_text(50257, hidden_size=48, num_attention_heads=6), TINY
        expected = {"hidden_size": 48, "num_heads": 6, "intermediate_size": 64, "seq_len": 128}
    else:
        torch.manual_seed(0)
        llama = LlamaConfig(
            vocab_size=50257,
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            rope_theta=500.0,
        )
        source_model, arch = (
            LlamaForCausalLM(llama).eval(),
            ["arch=transformer_tiny_params", "arch.seq_len=128"],
        )
        expected = {"hidden_size": 48, "num_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 3}
        expected |= {"intermediate_size": 96, "seq_len": 128, "rope_theta": 500.0}
    source = _save_source(source_model, gpt2_dir, tmp_path / f"{kind}_source")
    overrides = [*arch, *FAST, *paths, f"train.init_from={source}", f"run_name=ft_{kind}"]
    first = run(compose_config([*overrides, "train.max_steps=2"]))
    assert isinstance(first, dict)
    run_dir = Path(first["run_dir"])
    saved = OmegaConf.load(run_dir / "step_2" / "config.yaml")
    assert {k: saved.arch[k] for k in expected} == expected
    assert saved.arch.vocab_size == 50257 and saved.tokenizer.name_or_path == str(source)
    with torch.device("meta"):  # the recorded arch builds the source's architecture
        rebuilt = build_model(saved, 50257)
    shapes = {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert shapes == {k: v.shape for k, v in source_model.state_dict().items()}

    shutil.rmtree(source)
    resumed = run(compose_config([*overrides, "train.max_steps=4", "resume=auto"]))
    assert isinstance(resumed, dict) and resumed["step"] == 4
    assert OmegaConf.load(run_dir / "step_4" / "config.yaml").arch == saved.arch
    assert json.loads((run_dir / "step_4" / "train_state.json").read_text())["step"] == 4
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4]  # steps 3 and 4 continue the run


def test_loaded_hrm_text_decodes_through_its_family(gpt2_dir, tmp_path):
    source = _save_source(_tiny_hrm_text(50257), gpt2_dir, tmp_path / "hrm_text")
    loaded = load_pretrained(source)
    assert loaded.family is FAMILY and loaded.source.startswith("pretrained ")
    assert json.loads((source / "config.json").read_text())["model_type"] == "hrm_text"


def test_packed_examples_stay_apart_with_their_own_prefixes():
    model = _tiny_hrm_text()
    first, second = torch.randint(1, 97, (1, 6)), torch.randint(1, 97, (1, 7))
    types = [torch.tensor([[1, 1, 1, 0, 0, 0]]), torch.tensor([[1, 1, 0, 0, 0, 0, 0]])]
    packed = {
        "input_ids": torch.cat([first, second], dim=1),
        "position_ids": torch.cat([torch.arange(6), torch.arange(7)])[None],
        "segment_ids": torch.tensor([[1] * 6 + [2] * 7]),
        "token_type_ids": torch.cat(types, dim=1),
    }
    with torch.no_grad():
        together = FAMILY.lm_logits(model, packed)
        for ids, kind, span in ((first, types[0], slice(0, 6)), (second, types[1], slice(6, 13))):
            alone = FAMILY.lm_logits(model, {"input_ids": ids, "token_type_ids": kind})
            torch.testing.assert_close(together[:, span], alone, rtol=1e-5, atol=1e-5)
