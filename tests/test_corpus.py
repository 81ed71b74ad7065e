"""The pre-training corpus: filters and their manifest counts, decontamination, the memmap and the dataset."""

import base64
import hashlib
import json
import subprocess
import sys
import zipfile
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
from hrm_codegen.datasets.dedup import DuplicateIndex
from hrm_codegen.datasets.licences import LicenceIndex, classify_licence
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


def _fake_distribution(site: Path, name: str, classifier: str, source: str) -> None:
    """An installed distribution in `site`: a package and its .dist-info (METADATA, RECORD)."""
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text(source)
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\nClassifier: {classifier}\n"
    )
    (info / "RECORD").write_text(f"{name}/__init__.py,,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


MIT = "License :: OSI Approved :: MIT License"
GPL = "License :: OSI Approved :: GNU General Public License v3 (GPLv3)"


def test_licence_and_near_duplicate_filters_count_files_and_tokens(tmp_path, tokenizer):
    site, stdlib = tmp_path / "site-packages", tmp_path / "stdlib"
    _fake_distribution(site, "freepkg", MIT, CLEAN_A)
    _fake_distribution(site, "gplpkg", GPL, CLEAN_B)
    (site / "stray.py").write_text(CLEAN_B + "\n# not listed in any RECORD\n")
    stdlib.mkdir()
    module = "\n\n".join(f"def scale_{i}(x, offset):\n    return x * {i} + offset\n" for i in range(40))
    (stdlib / "lib.py").write_text(module)
    (stdlib / "lib_copy.py").write_text(
        module.replace("def scale_7(x, offset):", "def scale_7(x, offset):  # copied")
    )
    filters = CorpusFilters(
        min_bytes=32, licences=LicenceIndex([site], [stdlib]), near_duplicates=DuplicateIndex()
    )
    paths = python_files([site, stdlib])
    manifest = build_corpus(read_local_files(paths), tokenizer, tmp_path / "corpus", filters)

    assert [Path(f["name"]).name for f in manifest["files"]] == ["__init__.py", "lib.py"]
    assert manifest["dropped"]["licence"] == 2 and manifest["dropped"]["near_duplicate"] == 1
    assert manifest["licences"] == {
        "kept": {"freepkg": 1, "stdlib": 1},
        "dropped": {
            "gplpkg": {"licence": "GNU General Public License v3 (GPLv3)", "verdict": "copyleft", "files": 1},
            "unlisted": {"licence": "", "verdict": "unknown", "files": 1},
        },
    }
    assert manifest["duplicate_files"] == [
        {"name": str(stdlib / "lib_copy.py"), "of": str(stdlib / "lib.py")}
    ]
    copy_tokens = len(tokenizer.encode((stdlib / "lib_copy.py").read_text())) + 1
    assert manifest["tokens_dropped"]["near_duplicate"] == copy_tokens
    stages = {stage["filter"]: stage for stage in manifest["token_filters"]}
    assert stages["near_duplicate"]["tokens_after"] == manifest["num_tokens"]
    assert stages["near_duplicate"]["tokens_before"] == manifest["num_tokens"] + copy_tokens
    assert (
        stages["licence"]["tokens_before"] - stages["licence"]["tokens_after"]
        == manifest["tokens_dropped"]["licence"]
    )
    assert stages["too_small"]["tokens_before"] == manifest["num_tokens"] + sum(
        manifest["tokens_dropped"].values()
    )


@pytest.mark.parametrize(
    ("expression", "classifiers", "text", "verdict"),
    [
        ("MIT OR Apache-2.0", [], None, "permissive"),
        ("Apache-2.0 WITH LLVM-exception AND BSD-3-Clause", [], None, "permissive"),
        ("MPL-2.0 AND MIT", [], None, "copyleft"),
        ("GPL-3.0-or-later", [MIT], None, "copyleft"),
        (None, [MIT, "License :: OSI Approved :: BSD License"], None, "permissive"),
        (
            None,
            ["License :: OSI Approved :: GNU Lesser General Public License v3 (LGPLv3)"],
            "MIT",
            "copyleft",
        ),
        (None, ["License :: Other/Proprietary License"], None, "unknown"),
        (None, [], "BSD 3-Clause License\n\nCopyright (c) 2021, someone", "permissive"),
        (None, [], "Apache 2.0", "permissive"),
        (None, [], "UNKNOWN", "unknown"),
        (None, [], None, "unknown"),
    ],
)
def test_licence_classification(expression, classifiers, text, verdict):
    assert classify_licence(expression, classifiers, text).verdict == verdict


@pytest.mark.slow
def test_build_corpus_cli_installs_requirements_and_filters_licences(tmp_path, gpt2_dir, mbpp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name, classifier, source in (("freepkg", MIT, CLEAN_A), ("gplpkg", GPL, CLEAN_B)):
        _wheel(wheels / f"{name}-1.0-py3-none-any.whl", name, classifier, source)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("".join(f"{path}\n" for path in sorted(wheels.iterdir())))
    out = tmp_path / "corpus"
    command = [sys.executable, str(REPO / "scripts" / "build_corpus.py"), "--out", str(out), "--tokenizer"]
    command += [
        str(gpt2_dir),
        "--mbpp",
        str(mbpp_path),
        "--min-bytes",
        "32",
        "--requirements",
        str(requirements),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [Path(f["name"]).parent.name for f in manifest["files"]] == ["freepkg"]
    assert manifest["licences"]["dropped"]["gplpkg"]["files"] == 1
    assert manifest["requirements"]["installed"] == ["freepkg==1.0", "gplpkg==1.0"]
    assert "licence:" in done.stdout.replace(" ", "")


def _wheel(path: Path, name: str, classifier: str, source: str) -> None:
    """A pure-Python wheel holding one package."""
    info = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": source,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\nClassifier: {classifier}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for member, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{member},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
