"""The execution sandbox: result categories, limits, the pass nonce, isolation and clean-up."""

import os
import signal
import time
from pathlib import Path

import pytest

from hrm_codegen.execution import (
    STATUSES,
    ExecResult,
    Sandbox,
    SandboxClosedError,
    SandboxError,
    SandboxLimits,
    classify,
    run_program,
    run_programs,
)

LIMITS = SandboxLimits(timeout_s=2.0, memory_mb=1024, max_output_bytes=200)


def run_all(programs: list[str], limits: SandboxLimits = LIMITS, workers: int = 2) -> list[ExecResult]:
    """Results in program order."""
    results: dict[int, ExecResult] = dict(run_programs(programs, limits, workers=workers, progress=False))
    assert sorted(results) == list(range(len(programs)))
    return [results[i] for i in range(len(programs))]


def reply(report: str = "", returncode: int = 0, timed_out: bool = False) -> dict:
    """A runner reply for `classify`, for program pid 42."""
    return {
        "pid": 42,
        "returncode": returncode,
        "timed_out": timed_out,
        "report": report,
        "output": "",
        "seconds": 0.5,
    }


def test_classify_needs_the_nonce_and_the_programs_pid() -> None:
    assert classify(reply("n0nce 42 passed -\n"), "n0nce").status == "passed"
    assert classify(reply("guess 42 passed -\n"), "n0nce").status == "error"  # forged: wrong nonce
    assert classify(reply("n0nce 43 passed -\n"), "n0nce").status == "error"  # another process
    assert classify(reply("n0nce 42 failed AssertionError\n"), "n0nce") == ExecResult(
        "failed", "AssertionError", 0.5
    )


def test_classify_maps_limits_and_signals() -> None:
    assert classify(reply("n 42 error NameError\n"), "n").detail == "NameError"
    assert classify(reply("n 42 error MemoryError\n"), "n").status == "killed"
    assert classify(reply("n 42 error OSError[EFBIG]\n"), "n").status == "killed"
    assert classify(reply(timed_out=True, returncode=-9), "n").status == "timeout"
    assert classify(reply(returncode=-24), "n").status == "timeout"  # SIGXCPU: the CPU-time limit
    assert classify(reply(returncode=-11), "n") == ExecResult("killed", "SIGSEGV", 0.5)
    assert classify(reply(returncode=0), "n").status == "error"  # ended without reaching the end
    with pytest.raises(SandboxError, match="could not confine"):
        classify(reply("SETUP 42 error OSError: no\n", returncode=70), "n")


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=-1)


def test_result_categories() -> None:
    programs = {
        "passed": "def f(x):\n    return x + 1\nassert f(1) == 2\n",
        "failed": "assert 1 + 1 == 3\n",
        "name_error": "assert undefined_function(1) == 2\n",
        "syntax_error": "def f(:\n",
        "timeout": "while True:\n    pass\n",
        "sleep": "import time\ntime.sleep(30)\n",
        "memory": "x = bytearray(8 * 2**30)\n",
        "sys_exit": "import sys\nsys.exit(0)\nassert False\n",
        "os_exit": "import os\nos._exit(0)\nassert False\n",
        "forged_report": "import os\nos.write(3, b'0123 %d passed -\\n' % os.getpid())\nos._exit(0)\n",
        "segfault": "import ctypes\nctypes.string_at(0)\n",
    }
    results = dict(zip(programs, run_all(list(programs.values())), strict=True))
    assert {name: result.status for name, result in results.items()} == {
        "passed": "passed",
        "failed": "failed",
        "name_error": "error",
        "syntax_error": "error",
        "timeout": "timeout",
        "sleep": "timeout",
        "memory": "killed",
        "sys_exit": "error",
        "os_exit": "error",
        "forged_report": "error",
        "segfault": "killed",
    }
    assert results["failed"].detail == "AssertionError"
    assert results["name_error"].detail == "NameError"
    assert results["syntax_error"].detail == "SyntaxError"
    assert results["sys_exit"].detail == "SystemExit"
    assert results["segfault"].detail == "SIGSEGV"
    assert 1.5 < results["sleep"].seconds < 10
    assert all(result.status in STATUSES for result in results.values())


def test_output_is_captured_and_truncated_and_stdin_is_closed() -> None:
    printing, flooding, reading = run_all(
        [
            "import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\n",
            "print('y' * 100_000)\n",
            "try:\n    input()\nexcept EOFError:\n    print('eof')\n",
        ]
    )
    assert printing.passed and "to stdout" in printing.output and "to stderr" in printing.output
    assert flooding.passed and len(flooding.output) == LIMITS.max_output_bytes
    assert reading.passed and reading.output == "eof\n"


def test_each_program_gets_a_fresh_directory_and_a_clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HRM_CODEGEN_TEST_SECRET", "leaked")
    check = (
        "import os\n"
        "assert os.listdir('.') == []\n"
        "open('marker', 'w').write('x')\n"
        "assert 'HRM_CODEGEN_TEST_SECRET' not in os.environ\n"
        "print(hash('same seed'), os.getcwd())\n"
    )
    with Sandbox(LIMITS, workers=1) as sandbox:  # one runner: the second program reuses it
        first, second = (sandbox.submit(check).result() for _ in range(2))
    assert first.passed and second.passed, (first, second)
    assert first.output.split()[0] == second.output.split()[0]  # PYTHONHASHSEED is fixed
    assert not Path(first.output.split()[1]).exists()  # the work directory is gone (or never visible here)


def test_run_program_single() -> None:
    assert run_program("assert sum(range(4)) == 6\n", LIMITS).passed
    assert run_program("assert sum(range(4)) == 7\n", LIMITS).status == "failed"


def test_processes_left_behind_are_killed() -> None:
    program = (
        "import ctypes, os, time\n"
        "libc = ctypes.CDLL(None)\n"
        "pid = libc.fork()\n"
        "if pid == 0:\n"
        "    libc.setsid()\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print(pid)\n"
    )
    result = run_program(program, LIMITS)
    assert result.passed, result
    escaped = int(result.output.split()[0])
    assert escaped > 0
    try:
        state = Path(f"/proc/{escaped}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z")


def test_isolation_report() -> None:
    with Sandbox(LIMITS, workers=1) as sandbox:
        info = sandbox.info()
    assert {"uid_switch", "network_isolated", "readonly_fs"} <= set(info)
    assert info["limits"]["timeout_s"] == LIMITS.timeout_s
    if os.geteuid() == 0:  # as root, the children always switch to a user of their own
        assert info["uid_switch"] is True
        assert run_program("import os\nassert os.getuid() != 0 and os.getgid() != 0\n", LIMITS).passed


def test_stdlib_imports_work_in_the_sandbox() -> None:
    program = (
        "import asyncio, datetime, decimal, fractions, json, random, statistics, string, textwrap\n"
        "import collections, heapq, itertools, math, re, threading, typing, unicodedata\n"
        "assert json.loads('[1]') == [1] and re.match('a+', 'aa') and math.gcd(4, 6) == 2\n"
    )
    assert run_program(program, LIMITS).passed


def test_a_runner_that_dies_is_replaced() -> None:
    with Sandbox(SandboxLimits(timeout_s=5.0), workers=1) as sandbox:
        sandbox.info()
        (runner,) = sandbox._runners
        running = sandbox.submit("import time\ntime.sleep(3)\n")
        time.sleep(0.5)
        os.killpg(runner._proc.pid, signal.SIGKILL)
        assert running.result() == ExecResult("killed", "sandbox runner died", pytest.approx(0.5, abs=0.45))
        assert sandbox.submit("assert True\n").result().passed
        assert sandbox._runners and sandbox._runners[0] is not runner


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (children first), from /proc."""
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []
    return [d for child in children for d in (child, *_descendants(child))]


def _gone(pid: int) -> bool:
    """True when the process has ended (a zombie not yet reaped counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_leaving_on_an_exception_kills_running_programs_at_once() -> None:
    """Ctrl-C inside `with Sandbox()`: no wait for the programs' timeouts, no result, nothing left running."""
    with_leftover = (
        "import ctypes, time\n"
        "if ctypes.CDLL(None).fork() == 0:\n"
        "    ctypes.CDLL(None).setsid()\n"
        "time.sleep(60)\n"
    )
    sandbox = Sandbox(SandboxLimits(timeout_s=60.0), workers=2)
    with pytest.raises(KeyboardInterrupt), sandbox:
        sandbox.info()
        running = [sandbox.submit(with_leftover), sandbox.submit("import time\ntime.sleep(60)\n")]
        queued = sandbox.submit("assert True\n")
        deadline = time.monotonic() + 30
        while len(pids := [d for r in sandbox._runners for d in _descendants(r._proc.pid)]) < 3:
            assert time.monotonic() < deadline, "the programs did not start"
            time.sleep(0.05)
        runners = list(sandbox._runners)
        stopping = time.monotonic()
        raise KeyboardInterrupt
    # Far under the programs' 60 s (what waiting for them would take); a loaded 2-core machine needs seconds.
    assert time.monotonic() - stopping < 20
    for future in running:
        with pytest.raises(SandboxClosedError):
            future.result()
    assert queued.cancelled()
    assert all(runner._proc.poll() is not None for runner in runners)
    deadline = time.monotonic() + 2  # SIGKILL is delivered asynchronously
    while not all(map(_gone, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in pids if not _gone(pid)] == []
