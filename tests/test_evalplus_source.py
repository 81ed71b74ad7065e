"""MBPP+ from EvalPlus's source file: reading and validation, ground truth in the sandbox and its cache, the judge's
verdicts (EvalPlus's comparison rules, base and plus), and the evaluation's base / plus pass@k.

The fixture file holds real MBPP+ tasks (their plus inputs cut to the first six) chosen for a rule each, and two
made-up ones (a plus stage that will not stop, an output large enough to be stored as a fingerprint).
`scripts/compare_evalplus.py` checks the same verdicts against the `evalplus` package on every task.
"""

import collections
import importlib.util
import json
import math
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

from hrm_codegen.datasets import evalplus_judge as judge
from hrm_codegen.datasets import evalplus_source
from hrm_codegen.datasets.evalplus import EvalPlusFormatError, exclude_train_overlap, train_overlap
from hrm_codegen.datasets.mbpp import load_mbpp
from hrm_codegen.datasets.protocols import FORMATS, build_problems
from hrm_codegen.datasets.sources import load_rows
from hrm_codegen.execution import Sandbox, SandboxLimits

SOURCE = SHARED / "data" / "evalplus" / "MbppPlus.jsonl"
REAL_TASKS = (2, 82, 88, 124, 164, 295, 432, 558, 581, 602, 737)
MADE_UP = [
    {  # the completion below swallows the plus stage's time-outs: the judge ends it, keeping the base verdict
        "task_id": "Mbpp/9001",
        "prompt": "'''\nReturn x.\n'''",
        "entry_point": "same",
        "canonical_solution": "\ndef same(x):\n    return x\n",
        "base_input": [[1]],
        "plus_input": [[2], [3]],
        "atol": 0,
        "contract": "",
        "assertion": "\nassert same(1) == 1\nassert same(2) == 2\nassert same(3) == 3\n",
    },
    {  # 300000 ints encode to more than DIGEST_ABOVE_CHARS: the expected output is a fingerprint
        "task_id": "Mbpp/9002",
        "prompt": "'''\nThe numbers below n.\n'''",
        "entry_point": "below",
        "canonical_solution": "\ndef below(n):\n    return list(range(n))\n",
        "base_input": [[3]],
        "plus_input": [[300000]],
        "atol": 0,
        "contract": "",
        "assertion": "\nassert below(3) == [0, 1, 2]\nassert below(1) == [0]\nassert below(0) == []\n",
    },
]


def source_rows() -> list[dict]:
    rows = {json.loads(line)["task_id"]: json.loads(line) for line in SOURCE.read_text().splitlines()}
    picked = [dict(rows[f"Mbpp/{n}"]) for n in REAL_TASKS]
    for row in picked:
        row["plus_input"] = row["plus_input"][:6]
    return picked + MADE_UP


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(the fixture file, its ground-truth cache directory, its MBPP-style rows)."""
    directory = tmp_path_factory.mktemp("mbppplus_source")
    path = write_jsonl(directory / "MbppPlus.jsonl", source_rows())
    cache = directory / "cache"
    return path, cache, evalplus_source.load_mbppplus_source(path, cache_dir=cache, workers=2, progress=False)


def wrap(task: int, body: str) -> str:
    """The canonical solution of a fixture task with its entry point's output passed through `body` (of `out`)."""
    row = next(r for r in source_rows() if r["task_id"] == f"Mbpp/{task}")
    entry = row["entry_point"]
    return (
        f"{row['canonical_solution']}\n_canonical = {entry}\n\n\ndef {entry}(*args):\n"
        f"    out = _canonical(*args)\n    return {body}\n"
    )


SURFACE_ORACLE = (  # Mbpp/581 read as EvalPlus's oracle reads it (the height, not the slant height)
    "import math\n\ndef surface_Area(b, h):\n    return round(b * b + 2 * b * math.sqrt((b / 2) ** 2 + h * h))\n"
)
SWALLOWING = (  # ignores every time-out on the plus inputs (x > 1)
    "import time\n\ndef same(x):\n    while x > 1:\n        try:\n            time.sleep(10)\n"
    "        except BaseException:\n            pass\n    return x\n"
)
# (task, what the completion does): (completion, base verdict, plus verdict)
CASES = {
    **{(n, "canonical"): (None, True, True) for n in (*REAL_TASKS, 9001, 9002)},
    (602, "stub returning None"): ("def first_repeated_char(s):\n    return None\n", False, False),
    (602, "hardcoded for the shown inputs"): (
        "def first_repeated_char(s):\n    return {'abcabc': 'a', 'abc': None, '123123': '1'}.get(s, '?')\n",
        True,
        False,
    ),
    (602, "loops on a plus input"): (
        wrap(602, "out if len(args[0]) <= 6 else [None for _ in iter(int, 1)]"),
        True,
        False,
    ),
    (602, "main block reading stdin"): (
        wrap(602, "out") + "\nif __name__ == '__main__':\n    input()\n",
        True,
        True,
    ),
    (602, "reads stdin at load"): ("input()\n" + wrap(602, "out"), False, False),
    (2, "a list in another order (set-compared)"): (
        "def similar_elements(a, b):\n    return sorted(set(a) & set(b), reverse=True)\n",
        True,
        True,
    ),
    (2, "needs tuples"): (
        "def similar_elements(a, b):\n    assert type(a) is tuple and type(b) is tuple\n"
        "    return tuple(set(a) & set(b))\n",
        True,
        True,
    ),
    (124, "needs a float and a complex"): (
        "import cmath\n\ndef angle_complex(a, b):\n    assert type(a) is float and type(b) is complex\n"
        "    return cmath.phase(a + b)\n",
        True,
        True,
    ),
    (82, "within atol 1e-4"): (wrap(82, "out + 5e-5"), True, True),
    (82, "beyond atol 1e-4"): (wrap(82, "out + 1e-3"), False, False),
    (432, "within the default 1e-6"): (wrap(432, "out + 5e-7"), True, True),
    (432, "beyond the default 1e-6"): (wrap(432, "out + 1e-4"), False, False),
    (432, "an int for a non-integral float"): (wrap(432, "int(out)"), False, False),
    (88, "a dict for a Counter"): (wrap(88, "dict(out)"), True, True),
    (88, "a list of pairs for a Counter"): (wrap(88, "list(out.items())"), False, False),
    (164, "any output (oracle)"): ("def are_equivalent(a, b):\n    return 'anything'\n", True, True),
    (295, "0 (oracle)"): ("def sum_div(n):\n    return 0\n", True, True),
    (581, "EvalPlus's formula (oracle)"): (SURFACE_ORACLE, True, True),
    (581, "canonical + 1"): (wrap(581, "out + 1"), False, False),
    (558, "zero-padded digits (oracle)"): (
        "def digit_distance_nums(a, b):\n    x, y = str(a), str(b)\n    w = max(len(x), len(y))\n"
        "    return sum(abs(int(p) - int(q)) for p, q in zip(x.zfill(w), y.zfill(w)))\n",
        True,
        True,
    ),
    (737, "the string or None (not-None task)"): (
        "import re\n\ndef check_str(s):\n    return s if re.match('^[aeiouAEIOU]', s) else None\n",
        True,
        True,
    ),
    (737, "always True (not-None task)"): ("def check_str(s):\n    return True\n", False, False),
    (9001, "swallows the plus time-outs"): (SWALLOWING, True, False),
    (9002, "floats equal to the ints (fingerprint)"): (
        "def below(n):\n    return [float(i) for i in range(n)]\n",
        True,
        True,
    ),
    (9002, "one item wrong (fingerprint)"): (
        "def below(n):\n    return list(range(n)) if n < 10 else list(range(n - 1)) + [0]\n",
        True,
        False,
    ),
    (9002, "a tuple (fingerprint)"): ("def below(n):\n    return tuple(range(n))\n", False, False),
}


@pytest.fixture(scope="module")
def verdicts(source):
    """{case: samples.jsonl-like record} of every case, run in one sandbox with the judge's limits."""
    rows = source[2]
    problems = {p.task_id: p for p in build_problems("mbppplus", rows, "native")}
    code = {row["task_id"]: row["code"] for row in rows}
    programs = [
        problems[str(n)].program(c if c is not None else code[n]) for (n, _), (c, _, _) in CASES.items()
    ]
    limits = SandboxLimits(
        timeout_s=evalplus_source.JUDGE_TIMEOUT_S, memory_mb=evalplus_source.JUDGE_MEMORY_MB
    )
    keys = list(CASES)
    records = {}
    with Sandbox(limits, workers=2) as sandbox:
        for index, result in sandbox.run(programs, progress=False):
            records[keys[index]] = {
                "passed": result.passed,
                "result": result.status,
                "detail": result.detail,
                "output": result.output,
                "seconds": result.seconds,
            }
    return records


def test_source_rows_are_mbpp_tasks_in_every_format(source, gpt2_dir, mbpp_path, tmp_path, monkeypatch):
    path, cache, rows = source
    by_id = {row["task_id"]: row for row in rows}
    assert list(by_id) == [*REAL_TASKS, 9001, 9002]
    assert by_id[2]["text"] == "Write a function to find the shared elements from the given two lists."
    assert by_id[2]["test_list"][0] == "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)"
    assert by_id[124]["test_imports"] == ["import math"] and all(
        line.startswith("assert") for line in by_id[124]["test_list"]
    )
    assert by_id[602]["code"].strip().startswith("def first_repeated_char(str1):")
    monkeypatch.chdir(tmp_path)  # the default cache, data/cache, here: filled with the fixture's
    shutil.copytree(cache, tmp_path / "data" / "cache")
    assert load_rows("mbppplus", path) == rows  # the source format is found by its fields
    from transformers import AutoTokenizer

    chat = AutoTokenizer.from_pretrained(gpt2_dir)
    chat.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    for fmt in FORMATS:
        problems = build_problems("mbppplus", rows, fmt, tokenizer=chat, shot_rows=load_mbpp(mbpp_path))
        assert [p.task_id for p in problems] == [str(n) for n in by_id]
        program = problems[0].program("def similar_elements(a, b):\n    return ()\n")
        assert program.startswith("SOLUTION = ") and "judge(SOLUTION, " in program
        assert (
            problems[0].syntax_source("def broken(:\n") != program
        )  # the solution, not the judge, is checked


@pytest.mark.parametrize("case", list(CASES), ids=[f"{n}-{what}" for n, what in CASES])
def test_verdict(verdicts, case):
    _, base, plus = CASES[case]
    record = verdicts[case]
    assert (judge.base_passed(record), record["passed"]) == (base, plus), record
    if base and not plus:
        assert record["detail"] in ("PlusTestsFailed", judge.PLUS_HUNG_DETAIL), record
    if not base:
        assert record["detail"] == "BaseTestsFailed", record


def test_time_limits_stop_a_loop_and_a_stage_that_swallows_them(verdicts):
    looping = verdicts[(602, "loops on a plus input")]
    assert looping["detail"] == "PlusTestsFailed" and "TimeLimitExceeded" in looping["output"]
    assert 1.0 <= looping["seconds"] < 10  # the input's limit: max(1 s, 4 x the canonical's time)
    swallowing = verdicts[(9001, "swallows the plus time-outs")]
    assert swallowing["detail"] == judge.PLUS_HUNG_DETAIL  # ended at its budget (2 + 2 s) and the grace (2 s)
    assert 5.5 < swallowing["seconds"] < 20


def test_the_second_load_runs_no_sandbox_and_another_file_is_computed(source, tmp_path, monkeypatch):
    path, cache, rows = source
    assert len(list(cache.glob("mbppplus-ground-truth-*.json"))) == 1
    computed = []
    monkeypatch.setattr(
        evalplus_source, "compute_ground_truth", lambda tasks, *a, **k: computed.append(len(tasks)) or {}
    )
    assert evalplus_source.load_mbppplus_source(path, cache_dir=cache) == rows
    assert computed == []
    other = write_jsonl(tmp_path / "one.jsonl", MADE_UP[:1])
    monkeypatch.setattr(
        evalplus_source,
        "compute_ground_truth",
        lambda tasks, *a, **k: (
            computed.append(len(tasks))
            or {
                "Mbpp/9001": {
                    "base": ["1"],
                    "plus": ["2", "3"],
                    "base_seconds": [0.0],
                    "plus_seconds": [0.0, 0.0],
                }
            }
        ),
    )
    evalplus_source.load_mbppplus_source(other, cache_dir=cache)
    assert computed == [1] and len(list(cache.glob("*.json"))) == 2


def test_exclude_train_overlap_counts_and_drops_the_train_split_tasks(source):
    problems = build_problems("mbppplus", source[2], "native")
    assert train_overlap(problems) == ["602", "737"]
    assert [p.task_id for p in exclude_train_overlap(problems)] == [
        str(n) for n in (*REAL_TASKS[:9], 9001, 9002)
    ]


def load_cli():
    spec = importlib.util.spec_from_file_location(
        "evaluate_cli", Path(__file__).parents[1] / "scripts" / "evaluate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evaluate_reports_base_and_plus_pass_at_k_and_the_overlap(source, tmp_path, monkeypatch, capsys):
    path, cache, _ = source
    monkeypatch.chdir(tmp_path)  # the default cache, data/cache, here: filled with the fixture's
    shutil.copytree(cache, tmp_path / "data" / "cache")
    samples = write_jsonl(
        tmp_path / "samples.jsonl",
        [
            {"task_id": "602", "completion": CASES[(602, "hardcoded for the shown inputs")][0]},
            {"task_id": "602", "completion": CASES[(602, "stub returning None")][0]},
            {"task_id": "2", "completion": CASES[(2, "needs tuples")][0]},
            {"task_id": "2", "completion": CASES[(2, "needs tuples")][0]},
        ],
    )
    common = ["--dataset", "mbppplus", "--data-file", str(path), "--samples", str(samples), "--no-progress"]
    load_cli().main([*common, "--k", "1,2", "--output", str(tmp_path / "all"), "--workers", "2"])
    out, err = capsys.readouterr()
    assert "MBPP+: 2 tasks are in MBPP's train split (601-974), kept" in err
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert summary["num_problems"] == 2 and summary["syntax_valid_rate"] == 1.0
    assert summary["base_pass_at_k"] == {"1": 0.75, "2": 1.0}  # 602: 1 of 2 pass base; 2: both
    assert summary["pass_at_k"] == {"1": 0.5, "2": 0.5}  # 602 fails plus
    assert summary["config"]["timeout"] == evalplus_source.JUDGE_TIMEOUT_S
    assert summary["sandbox"]["limits"]["memory_mb"] == evalplus_source.JUDGE_MEMORY_MB
    assert "base pass@1" in out and "pass@1 (plus)" in out
    write_jsonl(samples, [{"task_id": "2", "completion": CASES[(2, "needs tuples")][0]}])
    load_cli().main([*common, "--exclude-train-overlap", "--output", str(tmp_path / "clean")])
    err = capsys.readouterr().err
    assert "MBPP+: 2 tasks are in MBPP's train split (601-974), excluded: 11 tasks to score" in err
    summary = json.loads((tmp_path / "clean" / "summary.json").read_text())
    assert summary["num_problems"] == 1 and summary["base_pass_at_k"] == summary["pass_at_k"] == {"1": 1.0}


MALFORMED = {
    "bad JSON": ("{not json", "not valid JSON"),
    "missing field": (
        {k: v for k, v in MADE_UP[0].items() if k != "plus_input"},
        "missing field 'plus_input'",
    ),
    "wrong type": (
        {**MADE_UP[0], "base_input": "[[1]]"},
        "field 'base_input' must be a list of argument lists",
    ),
    "an input not a list": (
        {**MADE_UP[0], "plus_input": [[2], 3]},
        "plus_input[1] must be a list of arguments",
    ),
    "negative atol": ({**MADE_UP[0], "atol": -1}, "field 'atol' must be a number >= 0"),
    "a bool atol": ({**MADE_UP[0], "atol": True}, "field 'atol' must be a number >= 0"),
    "bad task id": ({**MADE_UP[0], "task_id": "HumanEval/1"}, "'Mbpp/<number>'"),
    "a repeated task": (MADE_UP[1], "task_id 'Mbpp/9002' repeats"),
    "an input that does not convert": (
        {**MADE_UP[0], "task_id": "Mbpp/124", "base_input": [["0", "not complex"]]},
        "base_input[0] of Mbpp/124 does not fit EvalPlus's conversion",
    ),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_file_is_one_error_naming_its_line(tmp_path, name):
    bad, message = MALFORMED[name]
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps(MADE_UP[1]), bad if isinstance(bad, str) else json.dumps(bad)]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(EvalPlusFormatError) as error:
        evalplus_source.read_source(path)
    assert str(error.value).startswith(f"{path}:2: ") and message in str(error.value), str(error.value)
    assert "\n" not in str(error.value)


def test_a_canonical_solution_that_fails_names_its_line(tmp_path):
    path = write_jsonl(
        tmp_path / "broken.jsonl",
        [MADE_UP[0], {**MADE_UP[1], "canonical_solution": "\ndef below(n):\n    return 1 / 0\n"}],
    )
    expected = f"{path}:2: the canonical solution of Mbpp/9002 did not run to the end in the sandbox (error: "
    with pytest.raises(EvalPlusFormatError, match="^" + re.escape(expected + "ZeroDivisionError)")):
        evalplus_source.load_mbppplus_source(path, cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert not (tmp_path / "cache").exists()


def test_inputs_are_converted_per_task_as_evalplus_does(tmp_path):
    rows = [
        {**MADE_UP[0], "task_id": "Mbpp/115", "base_input": [[[[1, 2], [], 3]]], "plus_input": {}},
        {**MADE_UP[0], "plus_input": [], "task_id": "Mbpp/124", "base_input": [["2", "(1+1j)"]]},
        {**MADE_UP[0], "plus_input": [], "task_id": "Mbpp/580", "base_input": [[[1, [2, [3]]], 4]]},
        {**MADE_UP[0], "plus_input": [], "task_id": "Mbpp/722", "base_input": [[{"a": [1, 2]}, 5, 6]]},
        {**MADE_UP[0], "plus_input": [], "task_id": "Mbpp/278", "base_input": [[[1, [2, 3], 4]]]},
        {**MADE_UP[0], "plus_input": [], "task_id": "Mbpp/75", "base_input": [[[[1, 2], [3, 4]], 2]]},
    ]
    tasks = {t.number: t for t in evalplus_source.read_source(write_jsonl(tmp_path / "convert.jsonl", rows))}
    assert tasks[115].base_input == [[[{1, 2}, {}, {}]]] and tasks[115].plus_input == []  # an empty one: {}
    assert type(tasks[115].base_input[0][0][1]) is dict
    assert tasks[124].base_input == [(2.0, 1 + 1j)] and type(tasks[124].base_input[0][0]) is float
    assert tasks[580].base_input == [((1, (2, (3,))), 4)]
    assert tasks[722].base_input == [[{"a": (1, 2)}, 5, 6]]
    assert tasks[278].base_input == [[(1, (2, 3), 4)]]
    assert tasks[75].base_input == [[[(1, 2), (3, 4)], 2]]


# ------------------------------------------------------------------------------- the comparison rules, in process


def test_the_encoding_keeps_every_type():
    values = [
        None,
        True,
        0,
        -(10**5000),
        1.5,
        -0.0,
        float("inf"),
        "x\ud800",
        b"\x00\xff",
        1 + 2j,
        [1, (2, 3.0)],
        (),
        {frozenset({1, 2}), (1, "a")},
        {(1, 2): [3], "k": {"n": None}},
        collections.Counter("abca"),
        collections.OrderedDict([("b", 1), ("a", 2)]),
        collections.deque([1, 2]),
    ]

    def shape(value):  # the type tree of a value, set and dict order aside
        if isinstance(value, list | tuple | collections.deque):
            return (type(value), [shape(v) for v in value])
        if isinstance(value, set | frozenset):
            return (type(value), sorted(map(repr, map(shape, value))))
        if isinstance(value, dict):
            return (type(value), sorted(repr((shape(k), shape(v))) for k, v in value.items()))
        return (type(value), hex(value) if type(value) is int else repr(value))

    for value in values:
        assert shape(judge.decode(judge.encode(value))) == shape(value)
    nan = judge.decode(judge.encode(float("nan")))
    assert math.isnan(nan)
    with pytest.raises(TypeError, match="cannot store a value of type"):
        judge.encode(iter([]))


def test_a_fingerprint_matches_exactly_what_equals_the_value():
    value = [{"b": {1, 2}, "a": (1, "x")}, [True, 2.0], None]
    digest = judge.Digest(judge.fingerprint(value))
    assert digest.matches(value)
    assert digest.matches([{"a": (1.0, "x"), "b": {2, 1}}, [1, 2], None])  # == holds: other order, 1.0, True
    for other in (
        [{"b": {1, 2}, "a": [1, "x"]}, [True, 2.0], None],
        value[:2],
        tuple(value),
        [*value[:2], 0],
    ):
        assert other != value and not digest.matches(other)
    floats = judge.Digest(judge.fingerprint([0.5, -0.0, 3.0]))
    assert floats.matches([0.5, 0.0, 3]) and not floats.matches([0.5, 0.0, 3.0000001])
    large = [0.25] * 300_000  # longer than DIGEST_ABOVE_CHARS once encoded
    assert judge.decode(judge.encode_expected(large, exact=True)).matches(large)
    assert (
        judge.decode(judge.encode_expected(large, exact=False)) == large
    )  # a tolerance may apply: kept whole
    with_nan = judge.decode(judge.encode_expected([*large, float("nan")], exact=True))
    assert isinstance(with_nan, list) and len(with_nan) == len(large) + 1  # a NaN equals nothing: kept whole


def stage(atol=0):
    return judge._Stage(atol)


def test_outputs_match_follows_evalplus():
    match = judge.outputs_match
    assert match((1, 2), (1, 2), [], None, stage()) and not match([1, 2], (1, 2), [], None, stage())
    assert match(0.1 + 0.2, 0.3, [], None, stage())  # floats: 1e-6 by default
    assert not match(0.3 + 2e-6, 0.3, [], None, stage())
    assert match([1.0, 2.0 + 1e-7], [1.0, 2.0], [], None, stage())  # a list of floats too
    assert not match((1.0, "a"), (1.0 + 1e-9, "a"), [], None, stage())  # not all floats: exact
    assert not match(2, 2.5, [], None, stage(1e-4))  # the types must be equal
    assert not match([1.0], [1.0, 2.0], [], None, stage(1e-4))  # and the lengths
    assert match(1e8 + 1, 10**8, [], None, stage(1e-4)) is False  # an int against a float: type first
    state = stage()  # EvalPlus raises atol to 1e-6 at the first float output, for the rest of the stage
    assert not match(10**8 + 1, 10**8, [], None, state)
    assert match(1.5, 1.5, [], None, state) and state.atol == judge.DEFAULT_FLOAT_ATOL
    assert match(10**8 + 1, 10**8, [], None, state)  # |1| <= 1e-6 + 1e-7 * 1e8 once atol is not 0
    assert match([3, 1, 2], (1, 2, 3), [], "set_eq", stage()) and not match(5, (5,), [], "set_eq", stage())
    assert match(None, False, [], "not_none", stage()) and match("m", True, [], "not_none", stage())
    assert match(False, False, [], "not_none", stage()) and not match(True, False, [], "not_none", stage())
    assert match(object(), 1, [], "always", stage()) and match(0, 7.0, [], "sum_div", stage())
    assert match(35, 33, [3, 4], "surface_area", stage()) and not match(
        34, 33, [3, 4], "surface_area", stage()
    )
    assert match(14, 9, [12345, 9], "digit_distance", stage())  # 12345 and 00009: 1+2+3+4+4
    assert not match(13, 9, [12345, 9], "digit_distance", stage())
    assert not match(1, 9, [-12, 3], "digit_distance", stage())  # EvalPlus's oracle raises on a minus sign
    assert not match(float("nan"), float("nan"), [], None, stage())


def random_value(rng: random.Random, depth: int = 0):
    roll = rng.random()
    if depth < 2 and roll < 0.35:
        size = rng.choice([0, 1, 2, 3])
        items = [random_value(rng, depth + 1) for _ in range(size)]
        if rng.random() < 0.5 and items:  # a rectangular nest most of the time
            items = [items[0]] * size
        return items if rng.random() < 0.5 else tuple(items)
    return rng.choice(
        [
            rng.randint(-3, 3),
            rng.choice([2**63, 2**64, -(2**63) - 1, 10**8]),
            rng.uniform(-2, 2),
            rng.choice([float("inf"), float("nan"), -0.0, 1e-7]),
            rng.random() < 0.5,
            complex(rng.randint(-1, 1), rng.randint(-1, 1)),
            "s",
            None,
        ]
    )


def outcome(function, *args):
    try:
        return bool(function(*args))
    except Exception:
        return "raises"


def test_allclose_is_numpys_on_numbers_and_nests():
    rng = random.Random(0)
    checked = 0
    for _ in range(6000):
        expected = random_value(rng)
        out = random_value(rng) if rng.random() < 0.3 else jitter(expected, rng)
        for atol in (1e-6, 1e-4):
            ours = outcome(judge.allclose, out, expected, judge.RTOL, atol)
            with np.errstate(all="ignore"):
                theirs = outcome(np.allclose, out, expected, judge.RTOL, atol)
            assert ours == theirs, (out, expected, atol)
            checked += ours is True
    assert checked > 1000  # many pairs are close, not only errors and mismatches


def jitter(value, rng: random.Random):
    if isinstance(value, list | tuple):
        items = [jitter(v, rng) for v in value]
        return items if rng.random() < 0.8 else tuple(items)
    if isinstance(value, float) and math.isfinite(value):
        return value + rng.choice([0.0, 5e-7, 5e-5, 1e-3])
    if isinstance(value, int) and not isinstance(value, bool):
        return value + rng.choice([0, 0, 1])
    return value
