"""Tokenizer loading, special ids, fingerprint pinning and formatting-independence, save and mismatch errors."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from hrm_codegen.tokenization import (
    CodeTokenizer,
    TokenizerLoadError,
    TokenizerMismatchError,
    check_fingerprint,
    load_tokenizer,
)

GPT2_FINGERPRINT = "f3b705377ceef8b4fa7394f456dd818c19eadd8438a1c5956264f54378464e9e"


@pytest.fixture(scope="module")
def tok(gpt2_dir: Path) -> CodeTokenizer:
    return load_tokenizer(gpt2_dir)


def _copy_without_tokenizer_json(gpt2_dir: Path, target: Path) -> Path:
    """The slow-format files only (vocab.json + merges.txt), so that those two files are what gets loaded."""
    target.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(gpt2_dir / name, target / name)
    return target


def test_gpt2_special_ids_and_vocab_size(tok: CodeTokenizer) -> None:
    assert tok.vocab_size == len(tok.hf) == 50257
    assert tok.bos_id == tok.eos_id == 50256
    assert tok.hf.convert_ids_to_tokens(tok.eos_id) == "<|endoftext|>"
    assert tok.pad_id == 50256


def test_encode_adds_no_special_tokens_and_decode_skips_them(tok: CodeTokenizer) -> None:
    code = "def f(a , b):\n\treturn a ; b  # don 't clean up\n"
    ids = tok.encode(code)
    assert tok.bos_id not in ids and tok.eos_id not in ids
    assert tok.decode(ids) == code
    assert tok.decode([tok.bos_id, *ids, tok.eos_id]) == code


def test_fingerprint_of_shared_gpt2_is_pinned(tok: CodeTokenizer) -> None:
    assert tok.fingerprint == GPT2_FINGERPRINT


def test_fingerprint_is_sha256_of_vocab_and_merges_files(gpt2_dir: Path) -> None:
    vocab = json.loads((gpt2_dir / "vocab.json").read_text(encoding="utf-8"))
    lines = (gpt2_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [line.split(" ") for line in lines[1:] if line]
    canonical = {"vocab": sorted(([t, i] for t, i in vocab.items()), key=lambda p: p[1]), "merges": merges}
    payload = json.dumps(canonical, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert hashlib.sha256(payload).hexdigest() == GPT2_FINGERPRINT


def test_fingerprint_ignores_vocab_json_formatting(gpt2_dir: Path, tmp_path: Path) -> None:
    variant = _copy_without_tokenizer_json(gpt2_dir, tmp_path / "reformatted")
    vocab = json.loads((variant / "vocab.json").read_text(encoding="utf-8"))
    reordered = dict(sorted(vocab.items(), reverse=True))
    (variant / "vocab.json").write_text(json.dumps(reordered, indent=3, ensure_ascii=True), encoding="utf-8")
    assert (variant / "vocab.json").read_bytes() != (gpt2_dir / "vocab.json").read_bytes()
    assert load_tokenizer(variant).fingerprint == GPT2_FINGERPRINT


def test_fingerprint_ignores_tokenizer_json_formatting(gpt2_dir: Path, tmp_path: Path) -> None:
    variant = tmp_path / "indented"
    shutil.copytree(gpt2_dir, variant)
    (variant / "tokenizer.json").chmod(0o644)
    data = json.loads((gpt2_dir / "tokenizer.json").read_text(encoding="utf-8"))
    (variant / "tokenizer.json").write_text(json.dumps(data, indent=7), encoding="utf-8")
    assert load_tokenizer(variant).fingerprint == GPT2_FINGERPRINT


def test_changed_merge_changes_fingerprint(gpt2_dir: Path, tmp_path: Path) -> None:
    variant = _copy_without_tokenizer_json(gpt2_dir, tmp_path / "swapped")
    lines = (variant / "merges.txt").read_text(encoding="utf-8").split("\n")
    lines[1], lines[2] = lines[2], lines[1]
    (variant / "merges.txt").chmod(0o644)
    (variant / "merges.txt").write_text("\n".join(lines), encoding="utf-8")
    changed = load_tokenizer(variant)
    assert changed.vocab_size == 50257
    assert len(changed.fingerprint) == 64 and changed.fingerprint != GPT2_FINGERPRINT


def test_save_writes_self_contained_directory(tok: CodeTokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path / "ckpt" / "tokenizer")
    saved = tmp_path / "ckpt" / "tokenizer"
    assert (saved / "fingerprint.txt").read_text().strip() == GPT2_FINGERPRINT
    reloaded = load_tokenizer(saved)
    assert reloaded.fingerprint == GPT2_FINGERPRINT
    assert (reloaded.bos_id, reloaded.eos_id, reloaded.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    text = "for i in range(10):\n    print(i)"
    assert reloaded.encode(text) == tok.encode(text)


def test_saved_directory_with_wrong_fingerprint_fails(tok: CodeTokenizer, tmp_path: Path) -> None:
    tok.save(tmp_path)
    (tmp_path / "fingerprint.txt").write_text("0" * 64 + "\n")
    with pytest.raises(TokenizerMismatchError) as err:
        load_tokenizer(tmp_path)
    message = str(err.value)
    assert "0" * 64 in message and GPT2_FINGERPRINT in message and "fingerprint.txt" in message


def test_check_fingerprint_names_both_and_where(tok: CodeTokenizer) -> None:
    check_fingerprint(GPT2_FINGERPRINT, tok, "ckpt/step_10")
    other = "ab" * 32
    with pytest.raises(TokenizerMismatchError) as err:
        check_fingerprint(other, tok, "ckpt/step_10")
    message = str(err.value)
    assert other in message and GPT2_FINGERPRINT in message and "ckpt/step_10" in message
    assert isinstance(err.value, ValueError)


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_tokenizer"
    with pytest.raises(FileNotFoundError, match="no_such_tokenizer"):
        load_tokenizer(missing)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer("./no/such/tokenizer")


def test_invalid_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a tokenizer")
    with pytest.raises(TokenizerLoadError, match=str(tmp_path)):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerLoadError, match="is a file"):
        load_tokenizer(tmp_path / "notes.txt")
