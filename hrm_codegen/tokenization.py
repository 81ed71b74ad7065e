"""Tokenizer loading, explicit BOS/EOS/pad ids, and a fingerprint that ties checkpoints to their tokenizer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

FINGERPRINT_FILE = "fingerprint.txt"


class TokenizerMismatchError(ValueError):
    """A tokenizer's fingerprint differs from the one a checkpoint (or saved directory) was made with."""


class TokenizerLoadError(ValueError):
    """A tokenizer name or directory could not be loaded."""


def tokenizer_fingerprint(hf_tokenizer: Any) -> str:
    """Sha256 hex digest over the vocabulary (token -> id) and the BPE merges, independent of file formatting."""
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerLoadError(
            f"{type(hf_tokenizer).__name__} has no `tokenizers` backend; load a fast tokenizer"
        )
    merges = json.loads(backend.to_str())["model"].get("merges", [])
    canonical = {
        "vocab": sorted(([token, index] for token, index in hf_tokenizer.get_vocab().items()), key=_by_id),
        "merges": [m.split(" ", 1) if isinstance(m, str) else list(m) for m in merges],
    }
    payload = json.dumps(canonical, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _by_id(pair: list) -> int:
    """Sort key of a [token, id] pair."""
    return pair[1]


class CodeTokenizer:
    """A Hugging Face tokenizer with explicit special-token ids, its vocabulary size and fingerprint.

    BOS falls back to EOS when the tokenizer has no BOS (GPT-2 uses `<|endoftext|>` for both);
    when no pad token is defined, EOS is set as `hf`'s pad token (padding is always masked out).
    """

    def __init__(self, hf_tokenizer: Any, name_or_path: str | Path) -> None:
        self.hf = hf_tokenizer
        self.name_or_path = str(name_or_path)
        if hf_tokenizer.eos_token_id is None:
            raise TokenizerLoadError(f"tokenizer {self.name_or_path} defines no EOS token")
        if hf_tokenizer.pad_token is None:
            hf_tokenizer.pad_token = hf_tokenizer.eos_token
        self.eos_id: int = hf_tokenizer.eos_token_id
        bos = hf_tokenizer.bos_token_id
        self.bos_id: int = self.eos_id if bos is None else bos
        self.pad_id: int = hf_tokenizer.pad_token_id
        self.vocab_size: int = len(hf_tokenizer)
        self.fingerprint: str = tokenizer_fingerprint(hf_tokenizer)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        return self.hf.encode(text, add_special_tokens=False, verbose=False)

    def decode(self, ids: Any) -> str:
        """Text of `ids`, skipping special tokens and leaving spacing exactly as tokenised."""
        return self.hf.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer files and `fingerprint.txt` into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(directory)
        (directory / FINGERPRINT_FILE).write_text(self.fingerprint + "\n", encoding="utf-8")

    def __repr__(self) -> str:
        return (
            f"CodeTokenizer({self.name_or_path!r}, vocab_size={self.vocab_size}, bos={self.bos_id}, "
            f"eos={self.eos_id}, pad={self.pad_id}, fingerprint={self.fingerprint[:12]})"
        )


def _looks_like_path(name: str | Path) -> bool:
    """True when `name` can only be a local path, not a Hub repository id."""
    text = str(name)
    return isinstance(name, Path) or text.startswith((".", "/", "~")) or text.count("/") > 1


def load_tokenizer(name_or_path: str | Path) -> CodeTokenizer:
    """Load a tokenizer from a local directory or a Hub name; a saved `fingerprint.txt` is verified."""
    path = Path(name_or_path).expanduser()
    if path.exists() and not path.is_dir():
        raise TokenizerLoadError(f"tokenizer path {path} is a file; expected a directory of tokenizer files")
    if not path.exists() and _looks_like_path(name_or_path):
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    source = str(path) if path.is_dir() else str(name_or_path)
    try:
        hf = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        where = f"directory {path}" if path.is_dir() else f"{source!r} (not a local directory; tried the Hub)"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TokenizerLoadError(
            f"could not load a tokenizer from {where}: expected tokenizer.json or vocab.json + merges.txt "
            f"with tokenizer_config.json ({first_line})"
        ) from err
    tokenizer = CodeTokenizer(hf, source)
    saved = path / FINGERPRINT_FILE
    if path.is_dir() and saved.is_file():
        check_fingerprint(saved.read_text(encoding="utf-8").strip(), tokenizer, str(saved))
    return tokenizer


def check_fingerprint(expected: str, tokenizer: CodeTokenizer, where: str) -> None:
    """Raise TokenizerMismatchError unless `tokenizer` has the fingerprint `expected` recorded in `where`."""
    if tokenizer.fingerprint != expected:
        raise TokenizerMismatchError(
            f"{where}: tokenizer mismatch: expected fingerprint {expected}, but tokenizer "
            f"{tokenizer.name_or_path} has fingerprint {tokenizer.fingerprint}"
        )
