"""The evaluator: samples.jsonl and summary.json, resuming, samples files, hostile programs, MBPP references."""

import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from hrm_codegen import evaluation as evaluation_module
from hrm_codegen.datasets.humaneval import humaneval_problems
from hrm_codegen.datasets.mbpp import load_mbpp, mbpp_problems
from hrm_codegen.datasets.problems import Problem
from hrm_codegen.evaluation import (
    SUMMARY_FILE,
    SamplesFileError,
    completions_from_file,
    evaluate,
    evaluate_file,
    file_completion_source,
    format_summary_table,
)
from hrm_codegen.execution import SANDBOX_UIDS, UID_LOCK_DIR, Sandbox, SandboxLimits, run_program

LIMITS = SandboxLimits(timeout_s=2.0, memory_mb=1024)
SQUARE = Problem(task_id="square", prompt="", test_program="assert square(3) == 9\nassert square(-2) == 4")
ADD = Problem(
    task_id="add", prompt="def add(a, b):\n", test_program="assert add(2, 3) == 5", include_prompt=True
)
GOOD_SQUARE = "def square(x):\n    return x * x\n"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_samples(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "samples.jsonl").read_text().splitlines()]


def test_completions_from_file(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text(
        '{"task_id": 11, "completion": "a"}\n\n{"task_id": "11", "completion": "b"}\n{"task_id": "x", "completion": ""}\n'
    )
    assert completions_from_file(path) == {"11": ["a", "b"], "x": [""]}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"task_id": "a", "completion": "x"}\n{"task_id": "a", "completion": \n', ":2: not valid JSON"),
        ('{"task_id": "a"}\n', ":1: expected a 'completion' string"),
        ('{"completion": "x"}\n', ":1: expected a 'task_id'"),
        ("[1, 2]\n", ":1: expected a JSON object"),
    ],
)
def test_bad_samples_file_lines_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(SamplesFileError, match=f"bad.jsonl{message}"):
        completions_from_file(path)


def test_unknown_task_id_in_samples_file(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "s.jsonl",
        [{"task_id": "square", "completion": GOOD_SQUARE}, {"task_id": "nope", "completion": ""}],
    )
    with pytest.raises(SamplesFileError, match=r"s.jsonl:2: task_id 'nope'"):
        evaluate_file(
            [SQUARE], path, ks=[1], output_dir=tmp_path / "out", limits=LIMITS, workers=1, progress=False
        )


COMPLETIONS = {
    "square": [GOOD_SQUARE, "def square(x):\n    return x + x\n", "def square(x) return x\n"],
    "add": ["    return a + b\n", "    return a + b\n", "    return a - b\n"],
}


def test_evaluate_writes_samples_and_summary(tmp_path: Path) -> None:
    output_dir = tmp_path / "out"
    summary = evaluate(
        [SQUARE, ADD],
        file_completion_source(COMPLETIONS),
        num_samples=3,
        ks=[1, 2, 5],
        output_dir=output_dir,
        limits=LIMITS,
        workers=2,
        config={"temperature": 0.8},
        progress=False,
    )
    samples = read_samples(output_dir)
    assert sorted((s["task_id"], s["sample_index"]) for s in samples) == [
        (t, i) for t in ("add", "square") for i in range(3)
    ]
    passed = {(s["task_id"], s["sample_index"]): s["passed"] for s in samples}
    assert passed == {
        ("square", 0): True,
        ("square", 1): False,
        ("square", 2): False,
        ("add", 0): True,
        ("add", 1): True,
        ("add", 2): False,
    }
    by_key = {(s["task_id"], s["sample_index"]): s for s in samples}
    assert by_key[("square", 2)]["result"] == "error" and by_key[("square", 2)]["detail"] == "SyntaxError"
    assert by_key[("square", 1)]["result"] == "failed"
    assert by_key[("add", 0)]["completion"] == "    return a + b\n"
    # per problem (n=3): square c=1, add c=2 -> pass@1 = (1/3 + 2/3) / 2; pass@2 = (1 - 1/3 + 1) / 2
    assert summary["pass_at_k"]["1"] == pytest.approx(0.5)
    assert summary["pass_at_k"]["2"] == pytest.approx((2 / 3 + 1) / 2)
    assert summary["pass_at_k"]["5"] is None
    assert summary["results"] == {"passed": 3, "failed": 2, "error": 1, "timeout": 0, "killed": 0}
    assert summary["syntax_valid_rate"] == pytest.approx(5 / 6)
    assert summary["config"] == {"temperature": 0.8}
    assert summary["samples_run"] == 6 and summary["samples_resumed"] == 0
    assert json.loads((output_dir / SUMMARY_FILE).read_text()) == summary
    table = format_summary_table(summary)
    assert "pass@1" in table and "50.00%" in table and "n/a" in table


def test_every_record_is_written_before_the_summary_even_when_callbacks_lag(
    tmp_path: Path, monkeypatch
) -> None:
    """`wait()` on futures returns before their done-callbacks run: the summary must still count every sample.

    Seen on a 16-worker GPU machine: the last samples of a run were missing from samples.jsonl and summary.json.
    Delaying every callback makes that window wide enough to hit on every run.
    """
    original = evaluation_module._Appender.callback

    def lagging(self, *args):
        done = original(self, *args)

        def late(future):
            time.sleep(0.3)
            done(future)

        return late

    monkeypatch.setattr(evaluation_module._Appender, "callback", lagging)
    output_dir = tmp_path / "out"
    summary = evaluate(
        [SQUARE, ADD],
        file_completion_source(COMPLETIONS),
        num_samples=3,
        ks=[1],
        output_dir=output_dir,
        limits=LIMITS,
        workers=2,
        progress=False,
        batch_size=1,
    )
    assert summary["num_samples"] == 6 and summary["samples_per_problem"] == 3
    assert summary["samples_run"] == 6
    assert len(read_samples(output_dir)) == 6


def test_rerun_skips_done_samples_and_survives_a_cut_line(tmp_path: Path) -> None:
    output_dir = tmp_path / "out"
    kwargs = {
        "num_samples": 3,
        "ks": [1, 2],
        "output_dir": output_dir,
        "limits": LIMITS,
        "workers": 2,
        "progress": False,
    }
    first = evaluate([SQUARE, ADD], file_completion_source(COMPLETIONS), **kwargs)
    lines = (output_dir / "samples.jsonl").read_text().splitlines(keepends=True)
    dropped = {(json.loads(line)["task_id"], json.loads(line)["sample_index"]) for line in lines[-2:]}
    (output_dir / "samples.jsonl").write_text("".join(lines[:-2]) + lines[-2][:15])  # killed mid-line
    asked: list[tuple[str, int]] = []
    serve = file_completion_source(COMPLETIONS)

    def recording_source(problems: list[Problem], indices: list[list[int]]) -> list[list[str]]:
        asked.extend((p.task_id, i) for p, wanted in zip(problems, indices, strict=True) for i in wanted)
        return serve(problems, indices)

    second = evaluate([SQUARE, ADD], recording_source, **kwargs)
    assert set(asked) == dropped and len(asked) == 2
    assert second["pass_at_k"] == first["pass_at_k"] and second["results"] == first["results"]
    assert second["samples_run"] == 2 and second["samples_resumed"] == 4
    assert len(read_samples(output_dir)) == 6
    third = evaluate([SQUARE, ADD], recording_source, **kwargs)
    assert len(asked) == 2 and third["samples_run"] == 0


def test_generation_time_of_a_resumed_run_counts_every_sample(tmp_path: Path) -> None:
    """Each line keeps its share of its batch's generation time, so a run that resumes every sample still reports
    the time the samples took (`generation_seconds_all`); a line written before that record makes it None."""
    output_dir = tmp_path / "out"
    kwargs = {"num_samples": 2, "ks": [1], "output_dir": output_dir, "limits": LIMITS, "progress": False}
    serve = file_completion_source(COMPLETIONS)

    def slow_source(problems: list[Problem], indices: list[list[int]]) -> list[list[str]]:
        time.sleep(0.2)
        return serve(problems, indices)

    first = evaluate([SQUARE, ADD], slow_source, batch_size=1, **kwargs)
    shares = [row["generation_seconds"] for row in read_samples(output_dir)]
    assert len(shares) == 4 and all(share >= 0.1 for share in shares)  # 0.2 s per batch of 2 samples
    assert first["generation_seconds_all"] == pytest.approx(first["generation_seconds"], abs=0.01)
    again = evaluate([SQUARE, ADD], slow_source, batch_size=1, **kwargs)
    assert again["samples_run"] == 0 and again["generation_seconds"] == 0
    assert again["generation_seconds_all"] == pytest.approx(sum(shares), abs=0.01) and sum(shares) >= 0.4
    rows = read_samples(output_dir)
    del rows[0]["generation_seconds"]
    write_jsonl(output_dir / "samples.jsonl", rows)
    assert evaluate([SQUARE, ADD], slow_source, **kwargs)["generation_seconds_all"] is None


def test_ctrl_c_stops_at_once_keeping_finished_samples_for_the_rerun(tmp_path: Path, caplog) -> None:
    """A KeyboardInterrupt while a 60 s program runs: out within seconds, the finished sample kept, resumable."""
    output_dir = tmp_path / "out"
    kwargs = {"ks": [1], "output_dir": output_dir, "workers": 2, "progress": False, "batch_size": 1}
    slow = "import time\ntime.sleep(60)\n"

    def interrupted(problems: list[Problem], indices: list[list[int]]) -> list[list[str]]:
        if problems[0] is SQUARE:  # the first batch: one quick sample, one that runs for a minute
            return [[GOOD_SQUARE if i == 0 else slow for i in indices[0]]]
        deadline = time.monotonic() + 30  # the second batch: Ctrl-C once the quick sample is written
        while not (output_dir / "samples.jsonl").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        raise KeyboardInterrupt

    limits = SandboxLimits(timeout_s=60.0)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        evaluate([SQUARE, ADD], interrupted, num_samples={"square": 2, "add": 1}, limits=limits, **kwargs)
    assert time.monotonic() - started < 10
    assert [(r["task_id"], r["sample_index"], r["passed"]) for r in read_samples(output_dir)] == [
        ("square", 0, True)
    ]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]  # e.g. a callback writing a closed file

    quick = file_completion_source({"square": [GOOD_SQUARE, GOOD_SQUARE], "add": ["    return a + b\n"]})
    summary = evaluate([SQUARE, ADD], quick, num_samples={"square": 2, "add": 1}, limits=LIMITS, **kwargs)
    assert summary["samples_resumed"] == 1 and summary["samples_run"] == 2
    assert summary["pass_at_k"]["1"] == 1.0 and len(read_samples(output_dir)) == 3


def test_a_completion_source_returning_too_few_completions_is_an_error(tmp_path: Path) -> None:
    def short(problems: list[Problem], indices: list[list[int]]) -> list[list[str]]:
        return [[GOOD_SQUARE] for _ in problems]

    with pytest.raises(ValueError, match="1 completions for square, expected 2"):
        evaluate(
            [SQUARE],
            short,
            num_samples=2,
            ks=[1],
            output_dir=tmp_path,
            limits=LIMITS,
            workers=1,
            progress=False,
        )


def _hostile_completions(tmp_path: Path, port: int, os_level: dict) -> list[str]:
    """Hostile completions (none may pass); the ctypes bypasses only where the OS confines the program."""
    canary, outside = tmp_path / "canary", tmp_path / "outside.txt"
    hostile = [
        "while True:\n    pass\n",
        "import os\nwhile True:\n    os.fork()\n",
        "x = bytearray(50 * 10**9)\n",
        "def square(x):\n    return square(x)\n",
        "import sys\nwhile True:\n    sys.stdout.write('x' * 10**6)\n",
        "import os\nos.kill(os.getppid(), 9)\n",
        f"import os\nos.kill({os.getpid()}, 9)\n",
        f"import shutil\nshutil.rmtree({str(canary)!r})\n",
        f"import os\nos.remove({str(canary / 'keep')!r})\n",
        f"open({str(outside)!r}, 'w').write('escaped')\n",
        f"import os\nos.open({str(outside)!r}, os.O_CREAT | os.O_WRONLY)\n",
        "import sys\nsys.exit(0)\n" + GOOD_SQUARE,
        "import os\nos._exit(0)\n",
        "import builtins\nbuiltins.AssertionError = Exception\ndef square(x):\n    return x + 1\n",
        "AssertionError = None\nimport builtins\nbuiltins.print = None\ndef square(x):\n    return 0\n",
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n",
        "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass\n",
    ]
    if os_level["uid_switch"] or os_level["readonly_fs"]:
        hostile += [
            f"import ctypes\nlibc = ctypes.CDLL(None)\nlibc.unlink({str(canary / 'keep').encode()!r})\nlibc.rmdir({str(canary).encode()!r})\n",
            f"import ctypes\nctypes.CDLL(None).creat({str(outside).encode()!r}, 0o644)\n",
        ]
    if os_level["uid_switch"]:
        hostile += [
            f"import ctypes\nctypes.CDLL(None).kill({os.getpid()}, 9)\n",
            "import ctypes\nlibc = ctypes.CDLL(None)\nwhile True:\n    libc.fork()\n",
        ]
    if os_level["network_isolated"]:
        hostile.append(
            f"import _socket\ns = _socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))\n"
        )
    return hostile


def _sandbox_process_users() -> set[int]:
    """The sandbox user ids that own a process now."""
    owners = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                owners.add(entry.stat().st_uid)
            except FileNotFoundError:  # the process ended during the scan
                continue
    return owners & set(SANDBOX_UIDS)


def _leftover_sandbox_users() -> set[int]:
    """Sandbox user ids that own a process although no live sandbox holds their lock: what a sandbox left behind.
    A user id whose lock is held belongs to a sandbox still running (another test under pytest -n, or another
    evaluator on the machine) and is not this test's business."""
    unclaimed = set()
    for uid in _sandbox_process_users():
        path = UID_LOCK_DIR / f"{uid}.lock"
        if not path.exists():
            unclaimed.add(uid)
            continue
        with path.open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            fcntl.flock(lock, fcntl.LOCK_UN)
            unclaimed.add(uid)
    return unclaimed & _sandbox_process_users()  # still running after their lock was found free


def test_hostile_programs_fail_and_everything_else_is_scored(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep").write_text("canary")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    connections: list = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connections.append(listener.accept())
            except OSError:
                continue

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    with Sandbox(LIMITS, workers=1) as probe:
        os_level = probe.info()
    hostile = _hostile_completions(tmp_path, listener.getsockname()[1], os_level)
    good = [GOOD_SQUARE, "def square(y):\n    return y ** 2\n", "square = lambda x: x * x\n"]
    rows = [
        {"task_id": "square", "completion": c} for c in good[:1] + hostile[: len(hostile) // 2] + good[1:]
    ]
    rows += [{"task_id": "square", "completion": c} for c in hostile[len(hostile) // 2 :]]
    rows += [{"task_id": "add", "completion": "    return a + b\n"}] * 2
    samples = write_jsonl(tmp_path / "samples.jsonl", rows)
    output_dir = tmp_path / "out"
    try:
        summary = evaluate_file(
            [SQUARE, ADD], samples, ks=[1], output_dir=output_dir, limits=LIMITS, workers=2, progress=False
        )
    finally:
        stop.set()
        acceptor.join()
        listener.close()
    results = read_samples(output_dir)
    assert len(results) == len(rows)
    verdicts = {(r["task_id"], r["completion"]): r for r in results}
    for completion in good:
        assert verdicts[("square", completion)]["passed"], verdicts[("square", completion)]
    assert verdicts[("add", "    return a + b\n")]["passed"]
    for completion in hostile:
        assert not verdicts[("square", completion)]["passed"], completion
    assert summary["results"]["passed"] == len(good) + 2
    assert summary["num_samples"] == len(rows)
    assert (canary / "keep").read_text() == "canary"
    assert not (tmp_path / "outside.txt").exists()
    assert connections == []
    assert run_program("assert True\n", LIMITS).passed  # the evaluator and its sandbox still work
    if os_level["uid_switch"]:  # nothing is left running as a sandbox user that no live sandbox holds
        assert not _leftover_sandbox_users()


@pytest.mark.slow
def test_mbpp_test_references_pass_and_empty_completions_fail(tmp_path: Path, mbpp_path: Path) -> None:
    problems = mbpp_problems(load_mbpp(mbpp_path), "test")
    assert len(problems) == 500
    limits = SandboxLimits(timeout_s=20.0)
    references = evaluate(
        problems,
        lambda ps, idx: [[p.reference] * len(i) for p, i in zip(ps, idx, strict=True)],
        num_samples=1,
        ks=[1],
        output_dir=tmp_path / "references",
        limits=limits,
        workers=2,
        progress=False,
    )
    failing = [
        (r["task_id"], r["result"], r["detail"])
        for r in read_samples(tmp_path / "references")
        if not r["passed"]
    ]
    assert references["pass_at_k"]["1"] >= 0.99, failing
    empty = evaluate(
        problems,
        lambda ps, idx: [[""] * len(i) for i in idx],
        num_samples=1,
        ks=[1],
        output_dir=tmp_path / "empty",
        limits=limits,
        workers=2,
        progress=False,
    )
    assert empty["pass_at_k"]["1"] == 0.0
    assert empty["results"]["passed"] == 0


@pytest.mark.slow
def test_humaneval_canonical_solutions_pass(tmp_path: Path) -> None:
    problems = humaneval_problems()
    summary = evaluate(
        problems,
        lambda ps, idx: [[p.reference] * len(i) for p, i in zip(ps, idx, strict=True)],
        num_samples=1,
        ks=[1],
        output_dir=tmp_path,
        limits=SandboxLimits(timeout_s=20.0),
        workers=2,
        progress=False,
    )
    failing = [(r["task_id"], r["result"], r["detail"]) for r in read_samples(tmp_path) if not r["passed"]]
    assert summary["pass_at_k"]["1"] == 1.0, failing
