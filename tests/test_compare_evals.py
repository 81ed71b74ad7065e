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
