"""Near-duplicate removal: exact copies, reformatted or lightly edited copies, and distinct documents."""

import random

import pytest

from hrm_codegen.datasets.dedup import Duplicate, DuplicateIndex, shingles


def _document(seed: int, words: int = 400) -> str:
    rng = random.Random(seed)
    return "\n".join(" ".join(f"name{rng.randrange(500)}" for _ in range(8)) for _ in range(words // 8))


def test_shingles_ignore_layout_and_punctuation():
    assert shingles("a = b(c)\n  d", 2) == shingles("A=B( c ) D", 2) == ["a b", "b c", "c d"]
    assert shingles("x y", 5) == ["x y"]


def test_the_first_copy_is_kept_and_later_copies_name_it():
    index = DuplicateIndex(threshold=0.85)
    original = _document(1)
    assert index.add("a", original) is None
    assert index.add("b", original.replace("\n", "\n    ")) == Duplicate("duplicate", "a")
    words = original.split(" ")
    words[100] = "edited"  # one word of 400 changed: similarity about 0.97
    assert index.add("c", " ".join(words)) == Duplicate("near_duplicate", "a")
    assert index.add("d", _document(2)) is None
    assert len(index) == 2


def test_documents_below_the_threshold_are_kept():
    rng = random.Random(0)
    original = _document(3).split(" ")
    edited = list(original)
    for position in rng.sample(range(len(edited)), 40):  # 10% of the words changed: similarity about 0.6
        edited[position] = f"changed{position}"
    index = DuplicateIndex(threshold=0.85)
    assert index.add("a", " ".join(original)) is None
    assert index.add("b", " ".join(edited)) is None


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="threshold"):
        DuplicateIndex(threshold=1.5)
