"""Checkpoints: layout, atomic writes, keep-last, verified loading, and clear errors for bad paths."""

import datetime
import json
import shutil

import pytest
import torch
from conftest import save_step
from safetensors.torch import save_file

from hrm_codegen import checkpoint as ckpt
from hrm_codegen.checkpoint import CheckpointError
from hrm_codegen.inference import build_model, load_model_for_inference
from hrm_codegen.tokenization import TokenizerMismatchError, load_tokenizer
from hrm_codegen.train_config import compose_config


@pytest.fixture(scope="module")
def tokenizer(gpt2_dir):
    return load_tokenizer(gpt2_dir)


@pytest.fixture
def setup(gpt2_dir, tokenizer):
    cfg = compose_config(
        ["arch=tiny", "arch.hidden_size=32", "arch.seq_len=64", f"tokenizer.name_or_path={gpt2_dir}"]
    )
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer.vocab_size)
    return cfg, model


def _save(run_dir, step, cfg, model, tokenizer, **kwargs):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return save_step(
        run_dir,
        step,
        model,
        config=cfg,
        tokenizer=tokenizer,
        optimizer_state=optimizer.state_dict(),
        rng_state=[{"torch": torch.get_rng_state()}],
        train_state={"tokens_seen": 7},
        **kwargs,
    )


def _logits(model):
    ids = torch.arange(1, 9).view(1, 8)
    with torch.no_grad():
        return model.lm_forward(ids)


def test_layout_latest_and_keep_last(tmp_path, setup, tokenizer):
    cfg, model = setup
    run = tmp_path / "run"
    for step in (10, 20, 30):
        path = _save(run, step, cfg, model, tokenizer, keep_last=2)
    assert path == run / "step_30"
    assert (run / "latest").read_text().strip() == "step_30"
    assert sorted(p.name for p in run.iterdir()) == ["latest", "step_20", "step_30"]
    names = {p.name for p in path.iterdir()}
    assert {
        "hf",  # the HRM's weights: a save_pretrained directory
        "optimizer.pt",
        "rng.pt",
        "train_state.json",
        "config.yaml",
        "tokenizer",
        "meta.json",
    } <= names
    assert (path / "tokenizer" / "fingerprint.txt").read_text().strip() == tokenizer.fingerprint
    meta = ckpt.read_meta(path)
    assert meta["step"] == 30 and meta["tokenizer_fingerprint"] == tokenizer.fingerprint
    assert "hf/model.safetensors" in meta["files"] and "tokenizer/fingerprint.txt" in meta["files"]
    state = ckpt.load_training_state(path)
    assert state["train_state"] == {"step": 30, "tokens_seen": 7}
    assert torch.equal(state["rng"][0]["torch"], torch.get_rng_state())


def test_crash_while_saving_leaves_no_half_checkpoint(tmp_path, setup, tokenizer, monkeypatch):
    cfg, model = setup
    run = tmp_path / "run"
    _save(run, 1, cfg, model, tokenizer)

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "rename", crash)
    with pytest.raises(OSError, match="disk full"):
        _save(run, 2, cfg, model, tokenizer)
    assert not (run / "step_2").exists()
    assert [p.name for p in ckpt.list_steps(run)] == ["step_1"]
    assert ckpt.resolve_checkpoint(run) == run / "step_1"
    monkeypatch.undo()
    assert [p.name.startswith(".tmp_step_2") for p in run.glob(".tmp_*")] == [True]
    _save(run, 2, cfg, model, tokenizer)  # a later save works and clears the leftover temporary directory
    assert ckpt.resolve_checkpoint(run) == run / "step_2"
    assert list(run.glob(".tmp_*")) == []


def test_load_for_inference_from_step_run_and_weights(tmp_path, setup, tokenizer, gpt2_dir):
    cfg, model = setup
    step = _save(tmp_path / "run", 3, cfg, model, tokenizer)
    expected = _logits(model)
    for path in (step, tmp_path / "run", tmp_path / "run" / "latest"):
        loaded, tok = load_model_for_inference(path)
        assert not loaded.training and tok.fingerprint == tokenizer.fingerprint
        assert torch.equal(_logits(loaded), expected)

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(step / "hf" / "model.safetensors", bare / "w.safetensors")
    with pytest.raises(CheckpointError, match="no config.yaml lies next to it"):
        load_model_for_inference(bare / "w.safetensors")
    loaded, _ = load_model_for_inference(bare / "w.safetensors", config=step / "config.yaml")
    assert torch.equal(_logits(loaded), expected)
    loaded, _ = load_model_for_inference(bare / "w.safetensors", config=cfg, tokenizer=tokenizer)
    assert torch.equal(_logits(loaded), expected)

    torch.save({"model": model.state_dict()}, bare / "w.pt")
    shutil.copy(step / "config.yaml", bare / "config.yaml")
    loaded, _ = load_model_for_inference(bare / "w.pt")  # weights_only read, config.yaml beside it
    assert torch.equal(_logits(loaded), expected)


def test_pt_files_are_read_weights_only(tmp_path):
    torch.save({"x": datetime.date(2020, 1, 1)}, tmp_path / "evil.pt")  # arbitrary objects are not unpickled
    with pytest.raises(CheckpointError, match="cannot read weights"):
        ckpt.load_weights(tmp_path / "evil.pt")


def test_truncated_checkpoint_is_a_clear_error(tmp_path, setup, tokenizer):
    cfg, model = setup
    step = _save(tmp_path / "run", 4, cfg, model, tokenizer)
    weights = step / "hf" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt: hf/model.safetensors has"):
        load_model_for_inference(step)
    with pytest.raises(CheckpointError, match="cannot read weights"):
        ckpt.load_weights(weights)
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, flipped bit
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        ckpt.read_meta(step)


def test_missing_and_foreign_checkpoints_are_clear_errors(tmp_path, setup, tokenizer):
    cfg, model = setup
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model_for_inference(tmp_path / "nowhere")

    foreign_dir = tmp_path / "hf_model"  # e.g. a save_pretrained directory
    foreign_dir.mkdir()
    (foreign_dir / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_model_for_inference(foreign_dir)

    step = _save(tmp_path / "run", 5, cfg, model, tokenizer)
    meta = json.loads((step / "meta.json").read_text())
    (step / "meta.json").write_text(json.dumps({**meta, "format": "someone-else"}))
    with pytest.raises(CheckpointError, match="not an hrm-codegen checkpoint"):
        load_model_for_inference(step)
    (step / "meta.json").write_text(json.dumps({**meta, "tokenizer_fingerprint": "0" * 64}))
    with pytest.raises(TokenizerMismatchError, match="tokenizer mismatch"):
        load_model_for_inference(step)

    save_file({"transformer.wte.weight": torch.zeros(4, 4)}, str(tmp_path / "gpt2.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"do not fit .*missing .*unexpected \['transformer.wte.weight'\]"
    ):
        load_model_for_inference(tmp_path / "gpt2.safetensors", config=cfg, tokenizer=tokenizer)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="expected a weights file"):
        load_model_for_inference(tmp_path / "notes.txt")


def test_one_fit_check_names_missing_unexpected_and_wrong_shape_weights(setup):
    _, model = setup
    state = dict(model.state_dict())
    first, second = list(state)[:2]
    state[first] = torch.zeros(3, 5)
    del state[second]
    state["extra.weight"] = torch.zeros(1)
    shape = tuple(model.state_dict()[first].shape)
    with pytest.raises(CheckpointError) as err:
        ckpt.check_weights_fit(state, model, "the file x")
    message = str(err.value)
    assert message.startswith(f"weights in the file x do not fit the {type(model).__name__}")
    assert f"missing ['{second}']" in message and "unexpected ['extra.weight']" in message
    assert f"wrong shape (saved vs built) ['{first} (3, 5) vs {shape}']" in message
    del state["extra.weight"]
    state[first] = model.state_dict()[first]
    ckpt.check_weights_fit(state, model, "the file x", may_lack=[second])  # allowed to lack it: fits


def test_extra_files_are_written_inside_the_atomic_save_and_verified(tmp_path, setup, tokenizer):
    cfg, model = setup
    seen = []

    def extra(directory):
        seen.append(directory)
        assert not (directory / "meta.json").exists()  # before meta.json, inside the temporary directory
        assert directory.name.startswith(".tmp_step_6")
        (directory / "extra" / "sub").mkdir(parents=True)
        (directory / "extra" / "config.json").write_text('{"a": 1}')
        (directory / "extra" / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 4)

    step = _save(tmp_path / "run", 6, cfg, model, tokenizer, extra_files=extra)
    assert len(seen) == 1 and not seen[0].exists()
    files = ckpt.read_meta(step)["files"]
    assert files["extra/config.json"]["bytes"] == 8 and files["extra/sub/weights.bin"]["bytes"] == 1024
    load_model_for_inference(step)  # still loads, every file verified

    weights = step / "extra" / "sub" / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt: extra/sub/weights.bin has 100 bytes"):
        load_model_for_inference(step)
    (step / "extra" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete: extra/config.json is missing"):
        ckpt.read_meta(step)


def test_a_failing_extra_files_hook_leaves_no_step(tmp_path, setup, tokenizer):
    cfg, model = setup
    run = tmp_path / "run"
    _save(run, 1, cfg, model, tokenizer)

    def half_written(directory):
        (directory / "extra").mkdir()
        (directory / "extra" / "config.json").write_text("{")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _save(run, 2, cfg, model, tokenizer, extra_files=half_written)
    assert [p.name for p in ckpt.list_steps(run)] == ["step_1"]
    assert ckpt.resolve_checkpoint(run) == run / "step_1"
