"""The pair miner: doctests to asserts, self-contained code, verification, filters and manifest counts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hrm_codegen.datasets.corpus import benchmark_index, python_files, read_local_files
from hrm_codegen.datasets.licences import LicenceIndex
from hrm_codegen.datasets.mbpp import load_mbpp
from hrm_codegen.datasets.pairs import PairsFormatError, clean_summary, extract_candidates, load_pairs
from hrm_codegen.datasets.pairs_build import FUNCTION_DROPS, PairFilters, build_pairs
from hrm_codegen.execution import SandboxLimits

REPO = Path(__file__).resolve().parents[1]

TEXT_TOOLS = '''"""Text helpers."""

import re
import os.path
from collections import Counter, OrderedDict

_SPACES = re.compile(r"\\s+")
WIDTH = 4
UNUSED = 99


def squash(text, width=WIDTH):
    """Collapse each run of whitespace in *text* to one space (see :func:`re.sub` and ``str.split``).

    The result is cut to ``width`` words.

    >>> squash("a   b")
    'a b'
    >>> words = squash("x  y z")
    >>> len(words) == 5
    True
    >>> print(squash("p  q"))
    p q
    """
    # keep the first `width` words
    return " ".join(_SPACES.sub(" ", text).split(" ")[:width])


def most_common(items):
    """Return the most common item of :class:`list` `items`.

    >>> most_common([1, 2, 2])
    2
    >>> most_common("abca")
    'b'
    """
    return Counter(items).most_common(1)[0][0]


def stem(path):
    """The file name of a path without its extension."""
    return os.path.splitext(os.path.basename(path))[0]


def shout(text):
    """Upper-case a text.

    >>> shout("hi")  # doctest: +ELLIPSIS
    <str object at ...>
    """
    return text.upper()


def uses_helper(x):
    """Call a helper of this module."""
    return _helper(x)


def _helper(x):
    return x


def stub():
    """Not written yet."""
    raise NotImplementedError
'''

SLOW = '''def spin(n):
    """Loop for ever.

    >>> spin(1)
    1
    """
    while True:
        n += 1
'''


@pytest.fixture(scope="module")
def index(mbpp_path):
    """MBPP test/validation + HumanEval contamination index."""
    return benchmark_index(mbpp_path)


def test_summary_markup_is_reduced_to_text():
    assert (
        clean_summary("Use :func:`re.sub`, :py:meth:`~pkg.Class.run` and ``x + 1``.")
        == "Use re.sub, run and x + 1."
    )
    assert clean_summary("A *bold* and **strong** `link`_ word::") == "A bold and strong link word:"
    assert clean_summary("See :ref:`the guide <guide-label>`\n   for more.") == "See the guide for more."
    assert clean_summary("2 * 3 * 4 stays") == "2 * 3 * 4 stays"


def test_a_function_with_doctests_becomes_the_expected_pair():
    candidates, dropped = extract_candidates(TEXT_TOOLS, "text_tools.py")
    by_name = {c.name: c for c in candidates}
    assert set(by_name) == {"squash", "most_common", "stem"}
    squash = by_name["squash"]
    assert squash.text == "Collapse each run of whitespace in text to one space (see re.sub and str.split)."
    assert squash.test_list == [
        "assert squash(\"a   b\") == 'a b'",
        'words = squash("x  y z")',
        "assert (len(words) == 5) == True",
        "assert str(squash(\"p  q\")) == 'p q'",
    ]
    assert squash.code == (
        "import re\n"
        '_SPACES = re.compile(r"\\s+")\n'
        "WIDTH = 4\n\n\n"
        "def squash(text, width=WIDTH):\n"
        "    # keep the first `width` words\n"
        '    return " ".join(_SPACES.sub(" ", text).split(" ")[:width])\n'
    )
    assert by_name["most_common"].code.startswith(
        "from collections import Counter\n\n\ndef most_common(items):"
    )
    assert by_name["stem"].code.startswith("import os.path\n\n\ndef stem(path):")
    assert by_name["stem"].test_list == []  # no examples: an unverified pair
    assert dict(dropped) == {
        "no_docstring": 1,
        "non_literal_output": 1,
        "not_self_contained": 1,
        "no_body": 1,
    }


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _build(root: Path, out: Path, index=None, licences=None, timeout_s=5.0) -> dict:
    filters = PairFilters(
        index=index, licences=licences, limits=SandboxLimits(timeout_s=timeout_s), workers=2
    )
    files = ((str(root), str(root), f) for f in read_local_files(python_files([root])))
    return build_pairs(files, out, filters, sources=[str(root)], progress=False)


def test_build_verifies_filters_and_counts(tmp_path, index, mbpp_path):
    task = next(row for row in load_mbpp(mbpp_path) if row["task_id"] == 11)  # an MBPP test task
    first, *rest = task["code"].replace("\r\n", "\n").split("\n")
    leak = "\n".join([first, '    """Remove the first and last occurrence of a character."""', *rest]) + "\n"
    root = _tree(
        tmp_path / "src",
        {
            "text_tools.py": TEXT_TOOLS,
            "pkg/copy_of_tools.py": TEXT_TOOLS.replace("Text helpers.", "A copy.").replace(
                "WIDTH = 4", "WIDTH  =  4"
            ),
            "leak.py": leak,
            "slow.py": SLOW,
            "broken.py": "def f(:\n    pass\n",
        },
    )
    manifest = _build(root, tmp_path / "out", index=index, timeout_s=1.0)

    pairs = load_pairs(tmp_path / "out" / "pairs.jsonl")
    verified = [p for p in pairs if p["verified"]]
    assert [p["task_id"] for p in verified] == [f"{root}:text_tools.squash"]
    assert [p["task_id"] for p in pairs if not p["verified"]] == [f"{root}:text_tools.stem"]
    assert verified[0]["source"] == f"{root / 'text_tools.py'}:12"
    # most_common's second example is wrong ('a' is the most common): the pair fails in the sandbox
    assert manifest["dropped"]["failed"] == 1 and manifest["failures"]["failed: AssertionError"] == 1
    assert sum(manifest["failures"].values()) == 2
    assert manifest["dropped"]["timed_out"] == 1  # spin
    assert manifest["dropped"]["contaminated"] == 1
    assert manifest["contaminated"] == [{"task_id": f"{root}:leak.remove_Occ", "benchmark": "mbpp/11"}]
    # the copy's functions are whitespace-level duplicates of the originals (the copy is read first)
    assert manifest["dropped"]["duplicate"] + manifest["dropped"]["near_duplicate"] == 3
    assert manifest["files"] == {"read": 5, "dropped": {"unreadable": 0, "licence": 0, "syntax_error": 1}}
    assert manifest["pairs"] == {"verified": 1, "unverified": 1}
    assert set(manifest["dropped"]) == set(FUNCTION_DROPS)
    assert manifest["functions"] == sum(manifest["dropped"].values()) + 2
    assert manifest["by_source"][str(root)]["verified"] == 1
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest


def test_a_gpl_distribution_is_dropped(tmp_path):
    site = tmp_path / "site-packages"
    for name, licence in (
        ("freepkg", "License :: OSI Approved :: MIT License"),
        ("gplpkg", "License :: OSI Approved :: GNU General Public License v3 (GPLv3)"),
    ):
        _tree(site, {f"{name}/__init__.py": TEXT_TOOLS})
        info = site / f"{name}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\nClassifier: {licence}\n"
        )
        (info / "RECORD").write_text(f"{name}/__init__.py,,\n{info.name}/METADATA,,\n")
    licences = LicenceIndex([site])
    manifest = _build(site, tmp_path / "out", licences=licences)
    assert manifest["files"]["dropped"]["licence"] == 1
    assert manifest["licences_dropped"] == {
        "gplpkg": {"licence": "GNU General Public License v3 (GPLv3)", "verdict": "copyleft", "files": 1}
    }
    assert set(manifest["by_source"]) == {"freepkg"}
    assert manifest["pairs"] == {"verified": 1, "unverified": 1}


def test_load_pairs_names_file_and_line_of_a_bad_row(tmp_path):
    good = {
        "task_id": "a",
        "text": "Add.",
        "code": "def f(): pass\n",
        "test_list": [],
        "source": "x",
        "verified": False,
    }
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "task_id": "b", "verified": True}) + "\n")
    with pytest.raises(
        PairsFormatError, match=r"pairs.jsonl:2: a verified pair needs a non-empty 'test_list'"
    ):
        load_pairs(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "test_list": "assert x"}) + "\n")
    with pytest.raises(PairsFormatError, match=r"pairs.jsonl:2: field 'test_list' must be list"):
        load_pairs(path)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(PairsFormatError, match=r"pairs.jsonl:2: not valid JSON"):
        load_pairs(path)
    path.write_text(json.dumps(good) + "\n")
    assert load_pairs(path) == [good] and load_pairs(path, verified=True) == []


@pytest.mark.slow
def test_build_pairs_cli(tmp_path, mbpp_path, gpt2_dir):
    root = _tree(tmp_path / "src", {"text_tools.py": TEXT_TOOLS})
    other = _tree(
        tmp_path / "other",
        {
            "more.py": 'def twice(x):\n    """Double x.\n\n    >>> twice(2)\n    4\n    """\n    return 2 * x\n'
        },
    )
    command = [
        sys.executable,
        str(REPO / "scripts" / "build_pairs.py"),
        str(root),
        str(other),
        "--out",
        str(tmp_path / "out"),
    ]
    command += ["--mbpp", str(mbpp_path), "--tokenizer", str(gpt2_dir), "--workers", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2 verified, 1 unverified pairs from 8 functions" in done.stdout
    ids = [row["task_id"] for row in load_pairs(tmp_path / "out" / "pairs.jsonl")]
    assert ids == [f"{root}:text_tools.squash", f"{other}:more.twice", f"{root}:text_tools.stem"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["tokens"]["verified"] > 0 and manifest["tokens"]["unverified"] > 0
    missing = subprocess.run(
        [*command[:2], str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        missing.returncode != 0
        and "nowhere does not exist" in missing.stderr
        and "Traceback" not in missing.stderr
    )
