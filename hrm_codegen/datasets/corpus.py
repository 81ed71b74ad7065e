"""A pre-training corpus of Python files: filtered, de-duplicated, decontaminated, tokenised once into a memmap.

A corpus directory holds `tokens.bin` (every kept file's tokens followed by EOS, as one flat uint16 or
uint32 array) and `manifest.json` (sources, filters, per-file offsets and hashes, and how many files were
dropped and why). `CorpusDataset` cuts the array into `seq_len` blocks for next-token training.

Decontamination: a file is dropped when it shares a sequence of `ngram` words with the reference code or
the prompt (text and test asserts) of an MBPP test/validation task, or with a HumanEval prompt plus
canonical solution (the pair miner, `pairs_build.py`, uses the same index). Text is normalised to its lowercased words, identifiers and numbers (punctuation and
layout ignored), so reformatting does not hide a copy. Benchmark items shorter than `ngram` words are
matched whole. Idioms are not used: n-grams without a name or word of two or more letters that is not a
keyword or builtin (`for j in range(n): for i in range(n)`, `[1, 2, 3, 4, ...]`), n-grams with few
distinct words, and n-grams found in 3 or more benchmark problems.

Filters, in order: unreadable, too_small, too_large, licence (a file whose distribution is not permissively
licensed, see `licences.py`; a Hub row's own `license` field), duplicate (same bytes), contaminated,
near_duplicate (MinHash LSH, see `dedup.py`). The manifest counts the files and the tokens each drops, and
the tokens before and after each filter (files that cannot be decoded have no token count).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import keyword
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from hrm_codegen.datasets.dedup import DuplicateIndex
from hrm_codegen.datasets.licences import Licence, LicenceIndex, classify_licence
from hrm_codegen.tokenization import CodeTokenizer, check_fingerprint

TOKENS_FILE = "tokens.bin"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
DROP_REASONS = (
    "too_small",
    "too_large",
    "unreadable",
    "licence",
    "duplicate",
    "contaminated",
    "near_duplicate",
)
TOKEN_FILTERS = ("too_small", "too_large", "licence", "duplicate", "contaminated", "near_duplicate")
IDIOM_MIN_PROBLEMS = 3  # an n-gram found in this many benchmark problems is an idiom, not a copy
_WORD = re.compile(r"\w+")
_SYNTAX_WORDS = frozenset(
    [*keyword.kwlist, *keyword.softkwlist, *(name.lower() for name in dir(builtins)), "self", "cls"]
)


def contamination_words(text: str) -> list[str]:
    """The normalised word sequence compared for contamination: lowercased words, identifiers and numbers."""
    return _WORD.findall(text.lower())


def _ngrams(words: list[str], n: int) -> Iterator[tuple[str, ...]]:
    return zip(*(words[i:] for i in range(n)), strict=False)


def _is_specific(gram: tuple[str, ...]) -> bool:
    """True when an n-gram can identify a copy: varied words, at least one of them a real name or word."""
    varied = len(set(gram)) >= max(2, len(gram) // 2)
    return varied and any(len(w) > 1 and not w[0].isdigit() and w not in _SYNTAX_WORDS for w in gram)


class ContaminationIndex:
    """Word n-grams of benchmark items, each mapped to the problem it came from.

    `items` are (problem id, text) pairs: reference code, task text, prompts. Items shorter than `ngram`
    words are kept whole.
    """

    def __init__(self, items: Iterable[tuple[str, str]], ngram: int = 10) -> None:
        if ngram < 2:
            raise ValueError(f"ngram must be >= 2, got {ngram}")
        self.ngram = ngram
        problems: dict[tuple[str, ...], set[str]] = {}
        for problem_id, text in items:
            words = contamination_words(text)
            grams = [tuple(words)] if len(words) < ngram else _ngrams(words, ngram)
            for gram in grams:
                if _is_specific(gram):
                    problems.setdefault(gram, set()).add(problem_id)
        self.grams = {gram: min(ids) for gram, ids in problems.items() if len(ids) < IDIOM_MIN_PROBLEMS}
        self.lengths = sorted({len(gram) for gram in self.grams})

    def __len__(self) -> int:
        return len(self.grams)

    def match(self, text: str) -> str | None:
        """The benchmark problem `text` shares an n-gram with, or None when it is clean."""
        words = contamination_words(text)
        for length in self.lengths:
            if not self.grams.keys().isdisjoint(_ngrams(words, length)):
                return next(self.grams[g] for g in _ngrams(words, length) if g in self.grams)
        return None


def benchmark_items(mbpp_source: str | Path | None, humaneval: bool = True) -> Iterator[tuple[str, str]]:
    """(problem id, text) pairs: MBPP test/validation code and prompts (text + asserts), HumanEval prompt + solution."""
    from hrm_codegen.datasets.humaneval import humaneval_problems
    from hrm_codegen.datasets.mbpp import build_prompt, load_mbpp, split_tasks

    if mbpp_source is not None:
        rows = load_mbpp(mbpp_source)
        for split in ("test", "validation"):
            for task in split_tasks(rows, split):
                yield f"mbpp/{task['task_id']}", task["code"]
                yield f"mbpp/{task['task_id']}", build_prompt(task)
    if humaneval:
        for problem in humaneval_problems():
            yield problem.task_id, problem.prompt + problem.reference


def benchmark_index(
    mbpp_source: str | Path | None, humaneval: bool = True, ngram: int = 10
) -> ContaminationIndex:
    """The contamination index of the evaluation benchmarks (see `benchmark_items`)."""
    return ContaminationIndex(benchmark_items(mbpp_source, humaneval), ngram)


@dataclass(frozen=True)
class SourceFile:
    """One candidate document: a name for the manifest, its raw bytes (None when it could not be read) and,
    for a Hub row that states one, its licence (else the `LicenceIndex` looks the file up by name)."""

    name: str
    data: bytes | None
    licence: Licence | None = None


def python_files(roots: Iterable[str | Path]) -> list[Path]:
    """All `.py` files under the given directories (or the given files), sorted, symlinked dirs not followed."""
    found: list[Path] = []
    for root in map(Path, roots):
        if root.is_file():
            found.append(root)
            continue
        if not root.is_dir():
            raise FileNotFoundError(f"corpus source {root} does not exist; expected a directory of .py files")
        for directory, subdirs, files in os.walk(root):
            subdirs.sort()
            found.extend(Path(directory) / name for name in sorted(files) if name.endswith(".py"))
    return found


def read_local_files(paths: Iterable[Path]) -> Iterator[SourceFile]:
    """Read files as bytes; an unreadable file yields `data=None`."""
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            data = None
        yield SourceFile(str(path), data)


def read_hub_files(
    name: str, split: str = "train", field: str = "content", config: str | None = None
) -> Iterator[SourceFile]:
    """Stream the `field` text of a Hugging Face Hub dataset (e.g. codeparrot/codeparrot-clean-valid)."""
    import datasets

    try:
        rows = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as err:  # any failure here means the Hub dataset is unavailable
        raise ConnectionError(
            f"could not stream {name} (config {config}, split {split}) from the Hub: {err}"
        ) from err
    for number, row in enumerate(rows):
        if field not in row:
            raise ValueError(f"{name}[{split}] row {number} has no field {field!r}; fields: {sorted(row)}")
        label = "/".join(str(row[key]) for key in ("repo_name", "path") if key in row) or str(number)
        text = row[field]
        stated = row.get("license")
        licence = classify_licence(text=str(stated), owner=f"hub:{name}") if stated else None
        yield SourceFile(f"{name}:{label}", text.encode("utf-8") if isinstance(text, str) else None, licence)


@dataclass
class CorpusFilters:
    """What a file must pass to enter the corpus."""

    min_bytes: int = 64
    max_bytes: int = 1_000_000
    index: ContaminationIndex | None = None
    licences: LicenceIndex | None = None  # None: no licence filter (Hub rows' own licences still apply)
    near_duplicates: DuplicateIndex | None = None  # None: exact duplicates only


def file_licence(source: SourceFile, licences: LicenceIndex | None) -> Licence | None:
    """The licence of a source file: its own, else the index's; None when not checked."""
    if source.licence is not None:
        return source.licence
    return licences.licence_of(source.name) if licences is not None else None


@dataclass
class _Report:
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    contaminated: list[dict[str, str]] = field(default_factory=list)
    near_duplicates: list[dict[str, str]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    tokens_dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_FILTERS, 0))
    licences_kept: dict[str, int] = field(default_factory=dict)
    licences_dropped: dict[str, dict[str, Any]] = field(default_factory=dict)

    def licence(self, licence: Licence | None, kept: bool) -> None:
        """Count a file under its licence's owner."""
        owner = licence.owner if licence is not None else "(not checked)"
        if kept:
            self.licences_kept[owner] = self.licences_kept.get(owner, 0) + 1
        else:
            assert licence is not None
            entry = self.licences_dropped.setdefault(
                owner, {"licence": licence.name, "verdict": licence.verdict, "files": 0}
            )
            entry["files"] += 1


class _Verdict(NamedTuple):
    reason: str | None  # None: keep the file
    text: str | None = None  # the decoded text (None when it could not be decoded)
    sha256: str = ""
    other: str | None = None  # the matched problem of a contaminated file, the kept copy of a near duplicate
    licence: Licence | None = None


def _decode(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _check(source: SourceFile, filters: CorpusFilters, seen: set[str]) -> _Verdict:
    """Whether one file is kept, and why not; `seen` holds the hashes of the files kept so far.

    A kept file is added to the near-duplicate index, so this check is the last.
    """
    data = source.data
    if data is None:
        return _Verdict("unreadable")
    if len(data) < filters.min_bytes:
        return _Verdict("too_small", _decode(data))
    if len(data) > filters.max_bytes:
        return _Verdict("too_large", _decode(data))
    text = _decode(data)
    if text is None:
        return _Verdict("unreadable")
    licence = file_licence(source, filters.licences)
    if licence is not None and not licence.permissive:
        return _Verdict("licence", text, licence=licence)
    digest = hashlib.sha256(data).hexdigest()
    if digest in seen:
        return _Verdict("duplicate", text)
    match = filters.index.match(text) if filters.index is not None else None
    if match is not None:
        return _Verdict("contaminated", text, other=match)
    if filters.near_duplicates is not None:
        duplicate = filters.near_duplicates.add(source.name, text)
        if duplicate is not None:
            return _Verdict(duplicate.kind, text, other=duplicate.of)
    return _Verdict(None, text, digest, licence=licence)


def token_filters(kept_tokens: int, dropped: dict[str, int]) -> list[dict[str, Any]]:
    """Tokens before and after each filter in TOKEN_FILTERS order, from the tokens each one dropped."""
    before = kept_tokens + sum(dropped.values())
    stages = []
    for name in TOKEN_FILTERS:
        stages.append({"filter": name, "tokens_before": before, "tokens_after": before - dropped[name]})
        before -= dropped[name]
    return stages


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every token id fits in it, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)


def build_corpus(
    files: Iterable[SourceFile],
    tokenizer: CodeTokenizer,
    out_dir: str | Path,
    filters: CorpusFilters | None = None,
    sources: list[str] | None = None,
    max_tokens: int | None = None,
    total: int | None = None,
    batch_files: int = 64,
    count_dropped_tokens: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Filter, tokenise and write `files` to `out_dir` (tokens.bin + manifest.json); return the manifest.

    With `max_tokens`, stops once that many tokens are written (checked after each batch of files).
    `count_dropped_tokens` tokenises dropped files too, for the manifest's per-filter token counts; `extra`
    is added to the manifest as is.
    """
    filters = filters or CorpusFilters()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    report = _Report()
    kept: list[dict[str, Any]] = []
    digest = hashlib.sha256()
    num_tokens = 0
    pending: list[tuple[str, str, str, str | None]] = []  # (name, text, sha256, drop reason)
    temporary = out_dir / f".{TOKENS_FILE}.tmp"

    def flush(out) -> None:
        nonlocal num_tokens
        if not pending:
            return
        encoded = tokenizer.hf([text for _, text, _, _ in pending], add_special_tokens=False, verbose=False)
        for (name, _, sha256, reason), ids in zip(pending, encoded["input_ids"], strict=True):
            if reason is not None:
                report.tokens_dropped[reason] += len(ids) + 1
                continue
            block = np.asarray([*ids, tokenizer.eos_id], dtype=dtype)
            out.write(block.tobytes())
            digest.update(block.tobytes())
            kept.append(
                {
                    "name": name,
                    "offset": num_tokens,
                    "tokens": len(block),
                    "sha256": sha256,
                }
            )
            num_tokens += len(block)
        pending.clear()

    try:
        with open(temporary, "wb") as out:
            for source in tqdm(files, total=total, desc="corpus files", unit="file"):
                verdict = _check(source, filters, report.seen)
                if verdict.reason is None:
                    report.seen.add(verdict.sha256)
                    report.licence(verdict.licence, kept=True)
                else:
                    report.dropped[verdict.reason] += 1
                    if verdict.reason == "unreadable":
                        report.unreadable.append(source.name)
                    elif verdict.reason == "licence":
                        report.licence(verdict.licence, kept=False)
                    elif verdict.reason == "contaminated":
                        report.contaminated.append({"name": source.name, "benchmark": str(verdict.other)})
                    elif verdict.reason in ("near_duplicate", "duplicate") and verdict.other is not None:
                        report.near_duplicates.append({"name": source.name, "of": verdict.other})
                if verdict.text is not None and (verdict.reason is None or count_dropped_tokens):
                    pending.append((source.name, verdict.text, verdict.sha256, verdict.reason))
                if len(pending) >= batch_files:
                    flush(out)
                if max_tokens is not None and num_tokens >= max_tokens:
                    break
            flush(out)
        os.replace(temporary, out_dir / TOKENS_FILE)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    manifest = {
        "format": MANIFEST_FORMAT,
        "sources": sources or [],
        "tokenizer": {
            "name_or_path": tokenizer.name_or_path,
            "fingerprint": tokenizer.fingerprint,
            "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id,
        },
        "dtype": dtype.name,
        "num_tokens": num_tokens,
        "sha256": digest.hexdigest(),
        "num_files": len(kept),
        "filters": {
            "min_bytes": filters.min_bytes,
            "max_bytes": filters.max_bytes,
            "contamination_ngram": filters.index.ngram if filters.index else None,
            "contamination_ngrams": len(filters.index) if filters.index else 0,
            "licence": filters.licences is not None,
            "near_duplicates": filters.near_duplicates.settings() if filters.near_duplicates else None,
        },
        "dropped": report.dropped,
        "tokens_dropped": report.tokens_dropped if count_dropped_tokens else None,
        "token_filters": token_filters(num_tokens, report.tokens_dropped) if count_dropped_tokens else None,
        "licences": {"kept": report.licences_kept, "dropped": report.licences_dropped},
        "contaminated_files": report.contaminated,
        "duplicate_files": report.near_duplicates,
        "unreadable_files": report.unreadable,
        "files": kept,
        **(extra or {}),
    }
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def load_manifest(directory: str | Path) -> dict[str, Any]:
    """Read and check a corpus directory's manifest."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build the corpus with scripts/build_corpus.py")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None
    missing = [key for key in ("format", "dtype", "num_tokens", "tokenizer") if key not in manifest]
    if missing or manifest["format"] != MANIFEST_FORMAT:
        raise ValueError(f"{path}: not a corpus manifest of format {MANIFEST_FORMAT} (missing {missing})")
    return manifest


def open_tokens(directory: str | Path) -> np.memmap:
    """The corpus token array (read-only memmap), checked against the manifest's length."""
    manifest = load_manifest(directory)
    path = Path(directory) / TOKENS_FILE
    tokens = np.memmap(path, dtype=np.dtype(manifest["dtype"]), mode="r") if path.stat().st_size else None
    size = 0 if tokens is None else len(tokens)
    if size != manifest["num_tokens"]:
        raise ValueError(f"{path}: holds {size} tokens but the manifest says {manifest['num_tokens']}")
    if tokens is None:
        raise ValueError(f"{path}: the corpus is empty (every file was filtered out)")
    return tokens


class CorpusDataset(Dataset):
    """Consecutive `seq_len` blocks of a corpus: `{input_ids, labels}` with labels[i] = input_ids[i+1].

    The last position of a block has label -100; documents are separated by the EOS token; the tokens
    after the last whole block are not used.
    """

    def __init__(self, directory: str | Path, seq_len: int, tokenizer: CodeTokenizer | None = None) -> None:
        self.manifest = load_manifest(directory)
        if tokenizer is not None:
            check_fingerprint(
                self.manifest["tokenizer"]["fingerprint"], tokenizer, str(Path(directory) / MANIFEST_FILE)
            )
        self.tokens = open_tokens(directory)
        self.seq_len = seq_len
        if len(self.tokens) < seq_len:
            raise ValueError(
                f"corpus {directory} has {len(self.tokens)} tokens, fewer than seq_len={seq_len}"
            )

    def __len__(self) -> int:
        return len(self.tokens) // self.seq_len

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"block {index} out of range for {len(self)} blocks")
        start = index * self.seq_len
        input_ids = torch.from_numpy(self.tokens[start : start + self.seq_len].astype(np.int64))
        labels = torch.roll(input_ids, -1)
        labels[-1] = -100
        return {"input_ids": input_ids, "labels": labels}
