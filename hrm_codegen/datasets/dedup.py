"""Exact and near-duplicate removal of documents, streaming: the first copy is kept, later copies dropped.

Exact duplicates share the sha256 of their text with whitespace runs collapsed. Near duplicates are found
with MinHash LSH (the Rust-backed `rensa` library): a document's shingles are its `shingle`-word windows
of lowercased words, identifiers and numbers (punctuation and layout ignored); a document whose estimated
Jaccard similarity to a kept one reaches `threshold` is a near duplicate.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

from rensa.rensa import RMinHash, RMinHashDeduplicator  # the compiled module (rensa re-exports it)

_WORD = re.compile(r"\w+")
BAND_ROWS = 8


def shingles(text: str, size: int) -> list[str]:
    """The distinct `size`-word windows of a text's lowercased words (the whole text when shorter)."""
    words = _WORD.findall(text.lower())
    if len(words) <= size:
        return [" ".join(words)]
    return sorted({" ".join(words[i : i + size]) for i in range(len(words) - size + 1)})


class Duplicate(NamedTuple):
    """Why a document is not new: `kind` "duplicate" (exact) or "near_duplicate", and the kept copy's key."""

    kind: str
    of: str


class DuplicateIndex:
    """The documents kept so far; `add` keeps a new one or names the kept document it duplicates."""

    def __init__(
        self, threshold: float = 0.85, num_perm: int = 128, shingle: int = 5, seed: int = 42
    ) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        if shingle < 1 or num_perm < 1:
            raise ValueError(f"shingle and num_perm must be positive, got {shingle} and {num_perm}")
        self.threshold, self.num_perm, self.shingle, self.seed = threshold, num_perm, shingle, seed
        self._exact: dict[str, str] = {}
        # Bands of BAND_ROWS rows: a pair at the default 0.85 similarity becomes a candidate with
        # probability 0.99 (the library then checks the candidates' estimated similarity).
        self._near = RMinHashDeduplicator(
            threshold=threshold,
            num_perm=num_perm,
            use_lsh=True,
            num_bands=max(1, num_perm // BAND_ROWS),
            seed=seed,
        )

    def __len__(self) -> int:
        return len(self._exact)

    def add(self, key: str, text: str) -> Duplicate | None:
        """Keep `text` under `key` (unique) and return None, or return the Duplicate it is (keeping nothing)."""
        digest = hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()
        if digest in self._exact:
            return Duplicate("duplicate", self._exact[digest])
        minhash = RMinHash(num_perm=self.num_perm, seed=self.seed)
        minhash.update(shingles(text, self.shingle))
        similar = self._near.get_duplicates(minhash)
        if similar:
            return Duplicate("near_duplicate", min(similar))
        self._near.add(key, minhash)
        self._exact[digest] = key
        return None

    def settings(self) -> dict:
        """The parameters, for a manifest."""
        return {
            "library": "rensa",
            "threshold": self.threshold,
            "num_perm": self.num_perm,
            "shingle": self.shingle,
        }
