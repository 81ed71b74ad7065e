"""compare_evals.py: the side-by-side table and one passing program, preferring a problem the others failed."""

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("compare_evals", REPO / "scripts/compare_evals.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(directory: Path, passed: dict[str, bool]) -> None:
    directory.mkdir(parents=True)
    samples = [
        {"task_id": t, "sample_index": 0, "completion": f"def f_{t}(): pass", "passed": p}
        for t, p in passed.items()
    ]
    (directory / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    (directory / "prompts.jsonl").write_text(
        "".join(json.dumps({"task_id": t, "prompt": f'"""task {t}"""'}) + "\n" for t in passed)
    )
    summary = {"num_problems": len(passed), "pass_at_k": {"1": sum(passed.values()) / len(passed)}}
    (directory / "summary.json").write_text(json.dumps(summary))


def test_show_passing_prefers_a_problem_the_others_failed(tmp_path, capsys):
    compare = _load()
    _write(tmp_path / "hrm", {"1": True, "2": True, "3": False})
    _write(tmp_path / "src", {"1": True, "2": False, "3": False})
    compare.main(["--show-passing", f"HRM={tmp_path / 'hrm'}", f"source={tmp_path / 'src'}"])
    out = capsys.readouterr().out
    assert "pass@1 66.7% (2/3)" in out and "pass@1 33.3% (1/3)" in out
    assert 'task 2 (the others failed it):\n"""task 2"""\ndef f_2(): pass' in out
    _write(tmp_path / "none", {"1": False})
    compare.main(["--show-passing", f"HRM={tmp_path / 'none'}"])
    assert "none: no problem passed" in capsys.readouterr().out


def test_a_program_fitted_to_the_shown_asserts_is_shown_last_and_said_so(tmp_path, capsys):
    compare = _load()
    prompt = '"""Is n a woodall number?\nassert is_woodall(383) == True\nassert is_woodall(254) == False\n"""'
    fitted = "def is_woodall(n):\n    if n == 383:\n        return True\n    return False"
    solved = "def is_woodall(n):\n    return any(k * 2**k - 1 == n for k in range(1, 64))"
    assert compare.fitted_to_asserts(fitted, prompt) and not compare.fitted_to_asserts(solved, prompt)
    assert not compare.fitted_to_asserts("def f(:", prompt)  # unparsable: not judged
    for name, passed in (("hrm", {"1": True, "2": True}), ("src", {"1": False, "2": True})):
        _write(tmp_path / name, passed)
    rows = [
        {"task_id": "1", "sample_index": 0, "completion": fitted, "passed": True},
        {"task_id": "2", "sample_index": 0, "completion": solved, "passed": True},
    ]
    (tmp_path / "hrm" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "hrm" / "prompts.jsonl").write_text(
        "".join(json.dumps({"task_id": t, "prompt": prompt}) + "\n" for t in ("1", "2"))
    )
    compare.main(["--show-passing", f"HRM={tmp_path / 'hrm'}", f"source={tmp_path / 'src'}"])
    out = capsys.readouterr().out
    assert "task 2:" in out and "range(1, 64)" in out  # the solution, though the source solved it too
    (tmp_path / "hrm" / "samples.jsonl").write_text(json.dumps(rows[0]) + "\n")
    compare.main(["--show-passing", f"HRM={tmp_path / 'hrm'}", f"source={tmp_path / 'src'}"])
    out = capsys.readouterr().out
    assert "task 1 (the others failed it) (it answers the shown asserts' inputs literally" in out
