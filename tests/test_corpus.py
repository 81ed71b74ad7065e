"""The pre-training corpus: filters and their manifest counts, decontamination, the memmap and the dataset."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hrm_codegen.datasets.corpus import (
    ContaminationIndex,
    CorpusDataset,
    CorpusFilters,
    benchmark_index,
    build_corpus,
    open_tokens,
    python_files,
    read_local_files,
    token_dtype,
)
from hrm_codegen.datasets.mbpp import load_mbpp
from hrm_codegen.tokenization import TokenizerMismatchError, load_tokenizer

REPO = Path(__file__).resolve().parents[1]

CLEAN_A = '''"""Small geometry helpers."""


def area(width, height):
    """Area of a rectangle."""
    return width * height


def perimeter(width, height):
    return 2 * (width + height)
'''

CLEAN_B = """import json


def load(path):
    with open(path) as handle:
        return json.load(handle)


def grid(n):
    return [[i * j for j in range(n)] for i in range(n)]
"""


@pytest.fixture(scope="module")
def tokenizer(gpt2_dir):
    """The GPT-2 CodeTokenizer."""
    return load_tokenizer(gpt2_dir)


@pytest.fixture(scope="module")
def index(mbpp_path):
    """MBPP test/validation + HumanEval contamination index."""
    return benchmark_index(mbpp_path)


@pytest.fixture(scope="module")
def mbpp_rows(mbpp_path):
    """All MBPP tasks."""
    return load_mbpp(mbpp_path)


def _source_tree(root: Path, mbpp_rows) -> Path:
    """A directory with two clean files, a duplicate, a tiny, a too-large, a contaminated and a non-UTF-8 file."""
    test_task = next(row for row in mbpp_rows if row["task_id"] == 11)
    (root / "pkg").mkdir(parents=True)
    (root / "a.py").write_text(CLEAN_A)
    (root / "pkg" / "b.py").write_text(CLEAN_B)
    (root / "pkg" / "copy_of_a.py").write_text(CLEAN_A)
    (root / "tiny.py").write_text("x = 1\n")
    (root / "big.py").write_text("VALUES = [\n" + "    1,\n" * 2000 + "]\n")
    (root / "leak.py").write_text(
        "import sys\n\n\n" + test_task["code"] + "\n\nprint(remove_Occ('hello', 'l'))\n"
    )
    (root / "latin1.py").write_bytes(
        "# caf\u00e9 au lait, a comment in Latin-1\nNAME = 'caf\u00e9'\n".encode("latin-1")
    )
    (root / "README.txt").write_text("not python\n" * 20)
    return root


def test_manifest_counts_each_drop_reason_and_the_memmap_holds_the_kept_files(
    tmp_path, tokenizer, index, mbpp_rows
):
    root = _source_tree(tmp_path / "src", mbpp_rows)
    paths = python_files([root])
    assert len(paths) == 7  # README.txt is not a .py file
    filters = CorpusFilters(min_bytes=32, max_bytes=4000, index=index)
    manifest = build_corpus(read_local_files(paths), tokenizer, tmp_path / "corpus", filters)

    assert manifest["dropped"] == {
        "too_small": 1,
        "too_large": 1,
        "unreadable": 1,
        "licence": 0,
        "duplicate": 1,
        "contaminated": 1,
        "near_duplicate": 0,
    }
    assert manifest["contaminated_files"] == [{"name": str(root / "leak.py"), "benchmark": "mbpp/11"}]
    assert manifest["unreadable_files"] == [str(root / "latin1.py")]
    assert [f["name"] for f in manifest["files"]] == [str(root / "a.py"), str(root / "pkg" / "b.py")]

    expected = [*tokenizer.encode(CLEAN_A), tokenizer.eos_id, *tokenizer.encode(CLEAN_B), tokenizer.eos_id]
    tokens = open_tokens(tmp_path / "corpus")
    assert tokens.dtype == np.uint16
    assert tokens.tolist() == expected
    assert manifest["num_tokens"] == len(expected)
    assert manifest["files"][1]["offset"] == len(tokenizer.encode(CLEAN_A)) + 1
    token_bytes = (tmp_path / "corpus" / "tokens.bin").read_bytes()
    assert manifest["sha256"] == hashlib.sha256(token_bytes).hexdigest()
    assert json.loads((tmp_path / "corpus" / "manifest.json").read_text()) == manifest


def test_contamination_survives_reformatting_and_catches_task_text(index, mbpp_rows):
    code = next(row for row in mbpp_rows if row["task_id"] == 512)["code"]
    reformatted = "\n\n".join("  " + " ".join(line.replace("(", " ( ").split()) for line in code.splitlines())
    assert index.match(reformatted) == "mbpp/512"
    text = next(row for row in mbpp_rows if row["task_id"] == 300)["text"]
    assert index.match(f'def solve(n):\n    """{text.upper()}"""\n    return n\n') == "mbpp/300"
    asserts = next(row for row in mbpp_rows if row["task_id"] == 45)["test_list"]
    assert index.match("def test_gcd():\n    " + "\n    ".join(asserts) + "\n") == "mbpp/45"


def test_training_tasks_common_idioms_and_data_literals_are_not_contamination(index, mbpp_rows):
    train_code = next(row for row in mbpp_rows if row["task_id"] == 700)["code"]
    assert index.match(train_code) is None
    idioms = "for i in range(n):\n    for j in range(i):\n        for k in range(n):\n            pass\n"
    literals = "M = [[0, 0, 0], [0, 0, 0], [1, 2, 3], [4, 5, 6], [7, 8, 9]]\n" * 3
    assert index.match(idioms + literals) is None


def test_short_benchmark_items_are_matched_whole():
    index = ContaminationIndex([("task/1", "def square_perimeter(a):\n  perimeter=4*a\n  return perimeter")])
    assert index.match("x = 2\ndef square_perimeter(a): perimeter = 4 * a; return perimeter\n") == "task/1"
    assert index.match("def square_area(a):\n    return a * a\n") is None


def test_dataset_yields_pre_shifted_blocks(tmp_path, tokenizer, mbpp_rows):
    root = _source_tree(tmp_path / "src", mbpp_rows)
    build_corpus(read_local_files(python_files([root])), tokenizer, tmp_path / "corpus")
    tokens = open_tokens(tmp_path / "corpus")
    dataset = CorpusDataset(tmp_path / "corpus", seq_len=16, tokenizer=tokenizer)
    assert len(dataset) == len(tokens) // 16
    item = dataset[2]
    assert item["input_ids"].tolist() == tokens[32:48].tolist()
    assert item["labels"][:-1].tolist() == tokens[33:48].tolist()
    assert item["labels"][-1].item() == -100
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_dataset_rejects_a_different_tokenizer(tmp_path, tokenizer, mbpp_rows):
    root = _source_tree(tmp_path / "src", mbpp_rows)
    build_corpus(read_local_files(python_files([root])), tokenizer, tmp_path / "corpus")
    manifest_path = tmp_path / "corpus" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["tokenizer"]["fingerprint"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(TokenizerMismatchError, match="manifest.json"):
        CorpusDataset(tmp_path / "corpus", seq_len=16, tokenizer=tokenizer)


def test_token_dtype_widens_for_large_vocabularies():
    assert token_dtype(50257) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(100_000) == np.uint32


@pytest.mark.slow
def test_build_corpus_cli_end_to_end(tmp_path, gpt2_dir, mbpp_path, mbpp_rows):
    root = _source_tree(tmp_path / "src", mbpp_rows)
    out = tmp_path / "corpus"
    command = [
        sys.executable,
        str(REPO / "scripts" / "build_corpus.py"),
        "--out",
        str(out),
        "--tokenizer",
        str(gpt2_dir),
        "--mbpp",
        str(mbpp_path),
        "--min-bytes",
        "32",
        "--max-bytes",
        "4000",
        "--local",
    ]
    done = subprocess.run([*command, str(root)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2 files" in done.stdout and "contaminated 1" in done.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_files"] == 2 and manifest["sources"] == [str(root)]
    assert len(CorpusDataset(out, seq_len=8)) == manifest["num_tokens"] // 8

    missing = subprocess.run(
        [*command, str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=300
    )
    assert missing.returncode != 0
    assert "nowhere does not exist" in missing.stderr and "Traceback" not in missing.stderr
