"""Retrofitted recurrence: a pretrained Llama / Qwen2 converted into the HRM (hrm_codegen/retrofit.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from conftest import kill_after_checkpoint
from omegaconf import OmegaConf
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    Qwen2Config,
)

from hrm_codegen.families.hrm import gate_metrics
from hrm_codegen.hf_export import export_hf
from hrm_codegen.inference import load_checkpoint
from hrm_codegen.retrofit import LayerSplit, RetrofitError, convert, max_logit_difference, retrofit
from hrm_codegen.tokenization import load_tokenizer
from hrm_codegen.train_config import compose_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "retrofit.py"
TRAIN = REPO / "scripts" / "train_codegen.py"
EVALUATE = REPO / "scripts" / "evaluate.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
TOL = 1e-4


def _perturb_ones_and_zeros(model: torch.nn.Module, seed: int) -> None:
    """Random norm scales and biases, so a wrongly mapped norm or bias cannot go unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=generator))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=generator))


def _tiny_source(kind: str, vocab: int, tmp: Path) -> Path:
    """A tiny random Llama (GQA, tied embeddings) or Qwen2 (q/k/v biases, untied head), saved with save_pretrained."""
    common = {
        "vocab_size": vocab,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "initializer_range": 0.2,
    }
    if kind == "llama":
        config = LlamaConfig(**common, tie_word_embeddings=True, rope_theta=500.0)
    else:
        config = Qwen2Config(
            **common, tie_word_embeddings=False, rope_theta=20000.0, use_sliding_window=False
        )
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _perturb_ones_and_zeros(model, seed=2)
    out = tmp / kind
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tokenizer(gpt2_dir):
    return load_tokenizer(gpt2_dir)


def _saved_source(kind: str, tmp_path_factory, tokenizer) -> tuple[Path, torch.nn.Module]:
    directory = _tiny_source(kind, tokenizer.vocab_size, tmp_path_factory.mktemp("src"))
    tokenizer.hf.save_pretrained(directory)
    return directory, AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def source(request, tmp_path_factory, tokenizer):
    """(source directory with the GPT-2 tokenizer beside the weights, loaded model)."""
    return _saved_source(request.param, tmp_path_factory, tokenizer)


@pytest.fixture(scope="module")
def llama_source(tmp_path_factory, tokenizer):
    """The tiny Llama source alone (the command-line tests)."""
    return _saved_source("llama", tmp_path_factory, tokenizer)


def _ids(vocab: int, rows: int = 3, width: int = 24) -> torch.Tensor:
    return torch.randint(0, vocab, (rows, width), generator=torch.Generator().manual_seed(5))


def test_identity_split_equals_the_source(source):
    """H_cycles = L_cycles = 1, L = [0, k), H = [k, n): the HRM's logits are the source's, for every k."""
    _, model = source
    ids = _ids(model.config.vocab_size)
    for k in (1, 2, 3):
        hrm, config = convert(model, LayerSplit(0, k, k, 4))
        assert not config.recurrence_gates
        assert max_logit_difference(hrm, model, ids) <= TOL
    if model.config.model_type == "qwen2":
        assert config.attention_bias and not config.tie_word_embeddings
        assert "model.L_level.layers.0.self_attn.qkv_proj.bias" in dict(hrm.named_parameters())
    else:
        assert config.tie_word_embeddings and config.num_key_value_heads == 2
        assert "lm_head.weight" not in dict(hrm.named_parameters())


def test_right_padded_batch_equals_the_source_on_real_tokens(source):
    _, model = source
    ids = _ids(model.config.vocab_size, rows=2, width=12)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    hrm, _ = convert(model, LayerSplit(0, 2, 2, 4))
    with torch.no_grad():
        ours = hrm.lm_forward(ids, attention_mask=mask)
        theirs = model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert float((ours[real] - theirs[real]).abs().max()) <= TOL


@pytest.mark.parametrize(("h_cycles", "l_cycles"), [(1, 2), (2, 1), (2, 3)])
def test_gated_recurrence_equals_the_source_at_the_target_cycles_until_trained(source, h_cycles, l_cycles):
    """Closed gates: the extra cycles change nothing when training starts; opened, they do."""
    _, model = source
    ids = _ids(model.config.vocab_size)
    hrm, config = convert(model, LayerSplit(0, 2, 2, 4, h_cycles, l_cycles))
    assert config.recurrence_gates and hrm.cycles == (h_cycles, l_cycles)
    assert max_logit_difference(hrm, model, ids) <= TOL
    with torch.no_grad():
        hrm.model.L_level.gate.fill_(0.5) if l_cycles > 1 else hrm.model.H_level.gate.fill_(0.5)
    assert max_logit_difference(hrm, model, ids) > 1e-3
    plain, _ = convert(model, LayerSplit(0, 2, 2, 4, h_cycles, l_cycles), gates=False)
    assert max_logit_difference(plain, model, ids) > 1e-3  # naive looping is not the source


def test_dropped_layers_are_not_the_source_and_the_step_records_it(source, tokenizer, tmp_path):
    directory, model = source
    step = retrofit(
        model, tokenizer.hf, LayerSplit(0, 1, 3, 4, 1, 2), tmp_path / "run", {"source": str(directory)}
    )
    record = OmegaConf.load(step / "retrofit.json")
    assert record.function_preserving is False and record.layer_evals_per_token == 3
    assert record.probe_max_abs_logit_diff > 1e-3


def test_written_step_loads_like_a_run_with_the_sources_logits_and_tokenizer(source, tokenizer, tmp_path):
    directory, model = source
    split = LayerSplit(0, 2, 2, 4, 1, 2)
    step = retrofit(model, tokenizer.hf, split, tmp_path / "run", {"source": str(directory)})
    loaded = load_checkpoint(tmp_path / "run")
    assert loaded.family.name == "hrm" and loaded.tokenizer.fingerprint == tokenizer.fingerprint
    assert max_logit_difference(loaded.model, model, _ids(model.config.vocab_size)) <= TOL
    saved = OmegaConf.load(step / "config.yaml")
    assert saved.arch.L_cycles == 2 and saved.arch.zero_init_states and saved.arch.bp_steps == 0
    compose_config([f"train.init_from={tmp_path / 'run'}"])  # the saved config composes with the launcher's


def _script(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=REPO,
        timeout=300,
    )


def _main(capsys, *args: str | Path) -> tuple[int, str, str]:
    """scripts/retrofit.py's main() in this process: (exit status, stdout, stderr)."""
    spec = importlib.util.spec_from_file_location("retrofit_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        module.main([str(a) for a in args])
        status = 0
    except SystemExit as exit_:
        status = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def test_script_writes_a_step_and_prints_the_split(llama_source, tmp_path):
    directory, _ = llama_source
    done = _script("--source", directory, "--out", tmp_path / "run", "--l-layers", "0:2", "--h-layers", "2:4")
    assert done.returncode == 0, done.stderr
    assert "4 layer evaluations per token" in done.stdout
    assert (tmp_path / "run" / "step_0" / "hf" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--l-layers", "0:2", "--h-layers", "2:5"], "--h-layers 2:5 is not a non-empty range"),
        (["--l-layers", "0:3", "--h-layers", "2:4"], "overlap"),
        (["--l-layers", "2:2", "--h-layers", "2:4"], "--l-layers 2:2 is not a non-empty range"),
        (["--l-layers", "0-2"], "expected START:STOP"),
        (["--L-cycles", "0"], "--L-cycles must be >= 1"),
        (["--H-cycles", "-1"], "--H-cycles must be >= 1"),
    ],
)
def test_bad_splits_and_cycles_are_one_line_errors_that_write_nothing(
    llama_source, tmp_path, capsys, flags, message
):
    directory, _ = llama_source
    status, _, err = _main(capsys, "--source", directory, "--out", tmp_path / "run", *flags)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 1 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_unsupported_architectures_are_refused(tmp_path, tokenizer, capsys):
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=2))
    with pytest.raises(RetrofitError, match="unsupported source architecture 'gpt2'"):
        convert(gpt2, LayerSplit(0, 1, 1, 2))
    gpt2.save_pretrained(tmp_path / "gpt2")
    tokenizer.hf.save_pretrained(tmp_path / "gpt2")
    status, _, err = _main(capsys, "--source", tmp_path / "gpt2", "--out", tmp_path / "run")
    assert status == 1 and "unsupported source architecture 'gpt2'" in err
    assert not (tmp_path / "run").exists()
    bert_dir = tmp_path / "bert"  # an encoder: no causal LM loads from it
    BertModel(
        BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(bert_dir)
    status, _, err = _main(capsys, "--source", bert_dir, "--out", tmp_path / "run")
    assert status == 1 and "error:" in err and "bert" in err.lower() and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()
    gguf_file = tmp_path / "encoder.gguf"  # a GGUF that is not a causal LM
    writer = gguf.GGUFWriter(str(gguf_file), "bert")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    status, _, err = _main(capsys, "--source", gguf_file, "--out", tmp_path / "run")
    assert status == 1 and "'bert'" in err and "causal LM" in err, err
    assert not (tmp_path / "run").exists()


def test_source_tensors_that_do_not_fit_the_hrm_are_named(llama_source, monkeypatch):
    _, model = llama_source
    state = dict(model.state_dict())
    state["model.layers.0.self_attn.o_proj.weight"] = torch.zeros(3, 3)
    monkeypatch.setattr(model, "state_dict", lambda: state)
    with pytest.raises(
        RetrofitError,
        match=r"do not fit .*wrong shape \(saved vs built\) \['model.L_level.layers.0.self_attn.o_proj.weight "
        r"\(3, 3\) vs \(32, 32\)'\]",
    ):
        convert(model, LayerSplit(0, 2, 2, 4))


def test_an_existing_non_empty_out_is_refused(source, tokenizer, tmp_path):
    directory, model = source
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with pytest.raises(RetrofitError, match="not empty"):
        retrofit(model, tokenizer.hf, LayerSplit(0, 2, 2, 4), tmp_path / "run", {"source": str(directory)})
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


def test_a_retrofitted_run_resumes_after_sigkill_bit_exactly_evaluates_and_exports(
    llama_source, tokenizer, tmp_path, mbpp_path
):
    """experiment=retrofit_mbpp from a retrofitted tiny Llama with a cycles schedule: SIGKILL + resume=auto equals
    an uninterrupted run; the run evaluates with --ckpt alone; the export loads in transformers with its logits."""
    directory, model = llama_source
    retrofit(
        model, tokenizer.hf, LayerSplit(0, 2, 2, 4, 1, 2), tmp_path / "retro", {"source": str(directory)}
    )
    args = [
        "experiment=retrofit_mbpp",
        f"train.init_from={tmp_path / 'retro'}",
        f"data.path={mbpp_path}",
        f"checkpoint_root={tmp_path / 'ck'}",
        "data.seq_len=384",
        "data.train_limit=24",
        "data.eval_limit=4",
        "train.global_batch_size=2",
        "train.max_steps=6",
        "train.ckpt_every=2",
        "train.keep_last=0",
        "train.lr=3e-3",
        "train.num_threads=1",
        "train.cycles_schedule=[[0.0,1,1],[0.5,1,2]]",
        "+train.arch_overrides.recurrence_gate_lr_scale=10",
    ]
    command = [sys.executable, str(TRAIN), *args]
    reference = subprocess.run([*command, "run_name=ref"], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    killed = tmp_path / "ck" / "killed"
    kill_after_checkpoint([*command, "run_name=killed"], killed / "step_2" / "meta.json", REPO, ENV)
    assert not (killed / "step_6").exists()
    resumed = subprocess.run(
        [*command, "run_name=killed", "resume=auto"], cwd=REPO, env=ENV, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    ref = tmp_path / "ck" / "ref"
    assert (killed / "step_6" / "hf" / "model.safetensors").read_bytes() == (
        ref / "step_6" / "hf" / "model.safetensors"
    ).read_bytes()
    states = [json.loads((ref / f"step_{s}" / "train_state.json").read_text())["cycles"] for s in (2, 6)]
    assert states == [[1, 1], [1, 2]]
    gate = load_checkpoint(ref).model.model.L_level.gate
    assert float(gate.detach().abs().max()) > 0  # training opened the gate of the second L cycle
    logged = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r]
    # the gates as each step starts
    assert steps and all({"L_gate_abs", "L_gate_neg"} <= set(r) for r in steps)
    assert 0 < steps[-1]["L_gate_abs"] < float(gate.detach().abs().max())

    out = tmp_path / "eval"
    evaluated = subprocess.run(
        [sys.executable, str(EVALUATE), "--ckpt", str(ref), "--mbpp", str(mbpp_path), "--limit", "2"]
        + ["--max-new-tokens", "8", "--workers", "1", "--no-progress", "--output", str(out)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((out / "summary.json").read_text())["num_problems"] == 2

    export_hf(ref, tmp_path / "export")  # verifies the export's logits against the checkpoint's itself
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export", trust_remote_code=True).eval()
    ids = _ids(model.config.vocab_size, rows=2, width=10)
    with torch.no_grad():
        ours = load_checkpoint(ref).model.lm_forward(ids)
        theirs = exported(input_ids=ids).logits
    assert float((ours - theirs).abs().max()) <= TOL


def test_retrofit_and_posttrain_recipes_share_data_order_and_optimizer():
    """The comparison's two recipes differ only in where the model comes from."""
    post, retro = compose_config(["experiment=posttrain_mbpp"]), compose_config(["experiment=retrofit_mbpp"])
    assert post.arch.name == "transformer" and retro.train.arch_from_init
    assert OmegaConf.to_container(post.data, resolve=True) == OmegaConf.to_container(retro.data, resolve=True)
    assert post.data.pack and post.data.seq_len == 512
    differ = {"init_from", "arch_from_init"}
    a = {k: v for k, v in OmegaConf.to_container(post.train, resolve=True).items() if k not in differ}
    b = {k: v for k, v in OmegaConf.to_container(retro.train, resolve=True).items() if k not in differ}
    assert a == b and post.seed == retro.seed


def test_nonneg_gates_shut_negative_channels_and_still_learn_from_closed(source):
    """recurrence_gate_nonneg: a gate entry below zero acts as zero (so extra cycles never step away from the
    state), the model still equals its source at closed gates, and a closed gate still gets a gradient."""
    _, model = source
    ids = _ids(model.config.vocab_size)
    free, config = convert(model, LayerSplit(0, 2, 2, 4, 1, 3))
    config.recurrence_gate_nonneg = True
    nonneg = type(free)(config).eval()
    nonneg.load_state_dict(free.state_dict())
    assert nonneg.model.L_level.gate_nonneg and not free.model.L_level.gate_nonneg
    assert max_logit_difference(nonneg, model, ids) <= TOL
    signs = torch.where(torch.arange(config.hidden_size) % 2 == 0, 0.4, -0.4)
    with torch.no_grad():
        nonneg.model.L_level.gate.copy_(-signs.abs())
        assert max_logit_difference(nonneg, model, ids) <= TOL  # every channel pushed negative: shut
        nonneg.model.L_level.gate.copy_(signs)
        free.model.L_level.gate.copy_(signs.clamp(min=0))
        both = nonneg.lm_forward(ids), free.lm_forward(ids)
        free.model.L_level.gate.copy_(signs)
        mixed = free.lm_forward(ids)
    assert float((both[0] - both[1]).abs().max()) <= TOL
    assert float((both[0] - mixed).abs().max()) > 1e-3
    read = {m: {k: v for k, v in gate_metrics(m).items() if k.startswith("L_")} for m in (nonneg, free)}
    assert read[nonneg] == pytest.approx({"L_gate_abs": 0.2, "L_gate_neg": 0.5})  # what the forward reads
    assert read[free] == pytest.approx({"L_gate_abs": 0.4, "L_gate_neg": 0.5})
    with torch.no_grad():
        nonneg.model.L_level.gate.zero_()
    nonneg.lm_forward(ids).float().pow(2).mean().backward()
    grad = nonneg.model.L_level.gate.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="recurrence_gate_nonneg"):
        type(config)(**{**config.arch_dict(), "recurrence_gates": False})


def test_the_gates_learn_at_their_own_scaled_rate_and_do_not_decay(source):
    from hrm_codegen.optim import build_optimizer

    _, model = source
    hrm, config = convert(model, LayerSplit(0, 2, 2, 4, 2, 2))
    optimizer = build_optimizer(hrm, lr=1e-4, weight_decay=0.1)
    gates = [g for g in optimizer.param_groups if "lr_scale" in g]
    assert len(gates) == 1 and gates[0]["lr"] == pytest.approx(1e-4 * config.recurrence_gate_lr_scale)
    assert {id(p) for p in gates[0]["params"]} == {id(hrm.model.L_level.gate), id(hrm.model.H_level.gate)}
    assert gates[0]["weight_decay"] == 0.0
    others = [p for g in optimizer.param_groups if "lr_scale" not in g for p in g["params"]]
    assert len(others) + 2 == len(list(hrm.parameters()))
