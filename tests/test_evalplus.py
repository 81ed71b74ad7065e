"""MBPP+ / HumanEval+ loaders from local jsonl and parquet files, their problems in each format, the sandbox,
and the MBPP train-split overlap."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hrm_codegen.datasets.evalplus import (
    EVALPLUS_TIMEOUT_S,
    EvalPlusFormatError,
    exclude_train_overlap,
    humanevalplus_problems,
    load_humanevalplus,
    load_mbppplus,
    mbppplus_problems,
    train_overlap,
)
from hrm_codegen.datasets.mbpp import load_mbpp
from hrm_codegen.datasets.protocols import DEFAULT_TIMEOUT_S, build_problems, default_timeout_s
from hrm_codegen.datasets.sources import load_rows
from hrm_codegen.execution import SandboxLimits, run_programs

PLUS_TEST = """def assertion(out, exp, atol):
    assert out == exp, f"out: {out}, exp: {exp}"

inputs = [[(3, 4, 5, 6), (5, 7, 4, 10)], [(1, 2, 3, 4), (5, 4, 3, 7)], [(), (1,)], [(1, 1), (1,)]]
results = [{4, 5}, {3, 4}, set(), {1}]
for i, (inp, exp) in enumerate(zip(inputs, results)):
    assertion(set(similar_elements(*inp)), exp, 0)
"""

MBPPPLUS_ROWS = [
    {
        "task_id": 2,
        "prompt": "Write a function to find the shared elements from the given two lists.",
        "code": "def similar_elements(test_tup1, test_tup2):\n  return tuple(set(test_tup1) & set(test_tup2))\n",
        "test_list": [
            "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
            "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))",
            "assert set(similar_elements((11, 12, 14, 13),(17, 15, 14, 13))) == set((13, 14))",
        ],
        "test_imports": [],
        "test": PLUS_TEST,
    },
    {
        "task_id": 602,
        "prompt": "Write a python function to find the first repeated character in a given string.",
        "code": (
            "def first_repeated_char(str1):\n  for index, c in enumerate(str1):\n"
            "    if str1[:index+1].count(c) > 1:\n      return c\n  return None\n"
        ),
        "test_list": [
            'assert first_repeated_char("abcabc") == "a"',
            'assert first_repeated_char("abc") == None',
            'assert first_repeated_char("123123") == "1"',
        ],
        "test_imports": ["import math"],
        "test": "assert math.pi > 3\nfor s, e in [('abcabc', 'a'), ('abc', None), ('xyzzy', 'z')]:\n"
        "    assert first_repeated_char(s) == e\n",
    },
]

HUMANEVALPLUS_ROWS = [
    {
        "task_id": "HumanEval/23",
        "prompt": 'def strlen(string: str) -> int:\n    """ Return length of given string\n    """\n',
        "entry_point": "strlen",
        "canonical_solution": "    return len(string)\n",
        "test": "def check(candidate):\n    for s in ['', 'x', 'asdasnakj', 'a' * 1000]:\n"
        "        assert candidate(s) == len(s)\n",
    }
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def mbpp_rows(mbpp_path):
    return load_mbpp(mbpp_path)


def test_mbppplus_from_jsonl_and_parquet(tmp_path):
    from_jsonl = load_mbppplus(write_jsonl(tmp_path / "mbppplus.jsonl", MBPPPLUS_ROWS))
    from_parquet = load_mbppplus(write_parquet(tmp_path / "mbppplus.parquet", MBPPPLUS_ROWS))
    assert from_jsonl == from_parquet
    assert [row["task_id"] for row in from_jsonl] == [2, 602]
    assert from_jsonl[0]["text"] == MBPPPLUS_ROWS[0]["prompt"] and from_jsonl[1]["test_imports"] == [
        "import math"
    ]
    renamed = [dict(MBPPPLUS_ROWS[0], task_id="Mbpp/2")]
    assert load_mbppplus(write_jsonl(tmp_path / "named.jsonl", renamed))[0]["task_id"] == 2
    assert load_rows("mbppplus", tmp_path / "mbppplus.parquet") == from_jsonl


def test_humanevalplus_from_jsonl_and_parquet(tmp_path):
    from_jsonl = load_humanevalplus(write_jsonl(tmp_path / "he.jsonl", HUMANEVALPLUS_ROWS))
    assert from_jsonl == load_humanevalplus(write_parquet(tmp_path / "he.parquet", HUMANEVALPLUS_ROWS))
    assert from_jsonl == HUMANEVALPLUS_ROWS


def test_mbppplus_problems_in_each_format(tmp_path, mbpp_rows):
    rows = load_mbppplus(write_jsonl(tmp_path / "mbppplus.jsonl", MBPPPLUS_ROWS))
    native = mbppplus_problems(rows)
    assert [p.task_id for p in native] == ["2", "602"]
    assert native[0].prompt == (
        '"""\nWrite a function to find the shared elements from the given two lists.\n'
        "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))\n"
        "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))\n"
        "assert set(similar_elements((11, 12, 14, 13),(17, 15, 14, 13))) == set((13, 14))\n"
        '"""\n'
    )
    assert native[0].program("CODE") == "CODE\n" + PLUS_TEST + "\n"
    assert native[1].test_program.startswith("import math\nassert math.pi > 3\n")
    assert native[0].entry_point == "similar_elements" and native[0].dataset == "mbppplus"
    bigcode = mbppplus_problems(rows, "bigcode")[0]
    assert bigcode.prompt == (
        '"""\nWrite a function to find the shared elements from the given two lists.\n'
        "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))\n"
        '"""\n'
    )
    assert bigcode.program("CODE\nassert 0") == bigcode.prompt + "CODE" + "\n" + PLUS_TEST
    lm_eval = mbppplus_problems(rows, "lm-eval", shot_rows=mbpp_rows)[0]
    mbpp_11 = build_problems("mbpp", mbpp_rows, "lm-eval")[0].prompt
    shots = mbpp_11[
        : mbpp_11.index(
            "You are an expert Python programmer, and here is your task: Write a python function to remove"
        )
    ]
    assert lm_eval.prompt == shots + (
        "You are an expert Python programmer, and here is your task: Write a function to find the shared elements"
        " from the given two lists. Your code should pass these tests:\n\n"
        "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))\n"
        "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))\n"
        "assert set(similar_elements((11, 12, 14, 13),(17, 15, 14, 13))) == set((13, 14))\n[BEGIN]\n"
    )
    assert lm_eval.program("CODE[DONE]") == "CODE\n" + PLUS_TEST
    with pytest.raises(ValueError, match=r"shots from MBPP tasks \[3, 4\], missing"):
        mbppplus_problems(rows, "lm-eval")  # MBPP+ rows alone lack the shot tasks


def test_humanevalplus_problems(tmp_path):
    rows = load_humanevalplus(write_jsonl(tmp_path / "he.jsonl", HUMANEVALPLUS_ROWS))
    native, bigcode = humanevalplus_problems(rows)[0], humanevalplus_problems(rows, "bigcode")[0]
    assert native.prompt == HUMANEVALPLUS_ROWS[0]["prompt"] and native.include_prompt
    assert native.program("    return 0\n") == (
        HUMANEVALPLUS_ROWS[0]["prompt"]
        + "    return 0\n\n"
        + HUMANEVALPLUS_ROWS[0]["test"]
        + "\ncheck(strlen)\n"
    )
    assert (
        bigcode.program("\n    return 0\n")
        == (
            HUMANEVALPLUS_ROWS[0]["prompt"].strip()
            + "\n    return 0\n"
            + "\n\n"
            + HUMANEVALPLUS_ROWS[0]["test"]
        )
        + "\ncheck(strlen)"
    )


def test_end_to_end_in_the_sandbox(tmp_path, mbpp_rows):
    """The canonical solutions pass the extended tests; wrong ones fail."""
    mbpp = mbppplus_problems(load_mbppplus(write_jsonl(tmp_path / "m.jsonl", MBPPPLUS_ROWS)))
    he = humanevalplus_problems(load_humanevalplus(write_jsonl(tmp_path / "h.jsonl", HUMANEVALPLUS_ROWS)))
    programs = [
        mbpp[0].program(mbpp[0].reference),
        mbpp[1].program(mbpp[1].reference),
        he[0].program(he[0].reference),
        # wrong: right on the three prompt asserts, wrong on the extended inputs (empty and repeated tuples)
        mbpp[0].program("def similar_elements(a, b):\n    return tuple(set(a) & set(b)) or (1,)\n"),
        he[0].program("    return min(len(string), 100)\n"),
    ]
    limits = SandboxLimits(timeout_s=EVALPLUS_TIMEOUT_S)
    results = dict(run_programs(programs, limits, workers=2, progress=False))
    assert [results[i].status for i in range(len(programs))] == ["passed"] * 3 + ["failed"] * 2
    assert (
        EVALPLUS_TIMEOUT_S == default_timeout_s("mbppplus") > DEFAULT_TIMEOUT_S == default_timeout_s("mbpp")
    )


def test_train_overlap(tmp_path):
    problems = mbppplus_problems(load_mbppplus(write_jsonl(tmp_path / "m.jsonl", MBPPPLUS_ROWS)))
    assert train_overlap(problems) == ["602"]
    assert [p.task_id for p in exclude_train_overlap(problems)] == ["2"]
    assert train_overlap(problems, train_task_ids=[2, 3]) == ["2"]
    assert exclude_train_overlap(problems, train_task_ids=[]) == problems


def test_bad_files_get_one_clear_error(tmp_path):
    missing = dict(MBPPPLUS_ROWS[0])
    del missing["test"]
    path = write_jsonl(tmp_path / "missing.jsonl", [MBPPPLUS_ROWS[1], missing])
    with pytest.raises(EvalPlusFormatError, match=r"missing\.jsonl:2: missing field 'test'"):
        load_mbppplus(path)
    wrong = write_parquet(tmp_path / "wrong.parquet", [dict(HUMANEVALPLUS_ROWS[0], entry_point=3)])
    with pytest.raises(EvalPlusFormatError, match=r"wrong\.parquet row 0: field 'entry_point' must be str"):
        load_humanevalplus(wrong)
    (tmp_path / "bad.jsonl").write_text('{"task_id": 2\n')
    with pytest.raises(EvalPlusFormatError, match=r"bad\.jsonl:1: not valid JSON"):
        load_mbppplus(tmp_path / "bad.jsonl")
    (tmp_path / "rows.csv").write_text("task_id\n")
    with pytest.raises(EvalPlusFormatError, match=r"rows\.csv: expected a \.jsonl or \.parquet file"):
        load_mbppplus(tmp_path / "rows.csv")
    (tmp_path / "fake.parquet").write_text("not parquet")
    with pytest.raises(EvalPlusFormatError, match=r"fake\.parquet: not a readable parquet file"):
        load_mbppplus(tmp_path / "fake.parquet")
    twice = write_jsonl(tmp_path / "twice.jsonl", [MBPPPLUS_ROWS[0], MBPPPLUS_ROWS[0]])
    with pytest.raises(EvalPlusFormatError, match="duplicate task_id 2"):
        load_mbppplus(twice)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_humanevalplus(tmp_path / "absent.jsonl")
    with pytest.raises(ValueError, match="only the 'test' split"):
        build_problems(
            "mbppplus", load_mbppplus(write_jsonl(tmp_path / "ok.jsonl", MBPPPLUS_ROWS)), split="train"
        )
