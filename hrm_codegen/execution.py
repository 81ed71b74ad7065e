"""Sandboxed execution of untrusted programs: one confined process per program, run in parallel.

Each worker owns a long-lived runner process (`_sandbox_runner.py`, standard library only) that
isolates itself once (read-only file system and no network where the OS allows it) and forks one
confined child per program: its own session, rlimits, a fresh work directory, its own user id when the
evaluator is root, and a guard against process, file-removal and network calls. A program passes only
when the runner's report after the last line of the program arrives with the request's nonce, so an
early `sys.exit(0)` or `os._exit(0)` is not a pass. See the runner's docstring for the details.
A `Sandbox` left by an exception (Ctrl-C included) stops at once: queued programs are cancelled and the
runners told to kill the running ones, whose futures then fail with `SandboxClosedError` (no result).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import pwd
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

STATUSES = ("passed", "failed", "error", "timeout", "killed")
RUNNER = Path(__file__).with_name("_sandbox_runner.py")
RUNNER_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONHASHSEED": "0",
    "PYTHONUTF8": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}
SANDBOX_UIDS = range(61000, 62000)  # user ids for the children when the evaluator is root (unused ones)
UID_LOCK_DIR = Path("/tmp/hrm_codegen_sandbox_uids")  # one lock file per user id in use, machine-wide
STARTUP_TIMEOUT_S = 60.0
REPLY_GRACE_S = 10.0  # beyond the program's timeout, before the runner itself is presumed stuck


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program): the runner did not start or could not confine."""


class SandboxClosedError(SandboxError):
    """The sandbox was stopped early (e.g. by Ctrl-C) before the program finished: the program has no result."""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits applied to every program: wall clock, CPU time, memory, file size, processes, output."""

    timeout_s: float = 10.0
    cpu_s: float | None = None  # None: the wall-clock timeout
    memory_mb: int = 2048  # address space, interpreter included
    file_size_mb: int = 16  # largest file the program may write, its stdout/stderr included
    max_processes: int = 64  # processes and threads of the sandbox user (binding only below root)
    max_output_bytes: int = 10_000  # stdout+stderr kept per program

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and not value > 0:
                raise ValueError(f"SandboxLimits.{name} must be positive, got {value!r}")

    def request(self) -> dict:
        """The limits in the runner's request format."""
        return {
            "timeout_s": float(self.timeout_s),
            "cpu_s": max(1, math.ceil(self.cpu_s if self.cpu_s is not None else self.timeout_s)),
            "memory_bytes": int(self.memory_mb * 2**20),
            "file_size_bytes": int(self.file_size_mb * 2**20),
            "max_processes": int(self.max_processes),
            "max_output_bytes": int(self.max_output_bytes),
        }


@dataclass
class ExecResult:
    """How one program ended: status in STATUSES, a detail (exception type, signal, limit) and seconds."""

    status: str
    detail: str
    seconds: float
    output: str = ""  # captured stdout+stderr, truncated to max_output_bytes

    @property
    def passed(self) -> bool:
        """True when the program ran to its end."""
        return self.status == "passed"


def classify(reply: dict, nonce: str) -> ExecResult:
    """Turn the runner's reply for one program into an ExecResult."""
    seconds, output = reply["seconds"], reply["output"]
    for fields in (line.split(maxsplit=3) for line in reply["report"].splitlines()):
        if len(fields) == 4 and fields[0] == "SETUP" and fields[1] == str(reply["pid"]):
            raise SandboxError(f"the sandbox could not confine a program: {fields[3]}")
        if len(fields) != 4 or fields[0] != nonce or fields[1] != str(reply["pid"]):
            continue
        kind, name = fields[2], fields[3]
        if kind == "passed":
            return ExecResult("passed", "", seconds, output)
        if kind == "failed":
            return ExecResult("failed", name, seconds, output)
        if name == "MemoryError":
            return ExecResult("killed", "memory limit (MemoryError)", seconds, output)
        if name.endswith("[EFBIG]"):
            return ExecResult("killed", f"file size limit ({name})", seconds, output)
        return ExecResult("error", name, seconds, output)
    if reply["timed_out"]:
        return ExecResult("timeout", "wall-clock limit", seconds, output)
    code = reply["returncode"]
    if code < 0:
        name = _signal_name(-code)
        if name == "SIGXCPU":
            return ExecResult("timeout", "CPU time limit (SIGXCPU)", seconds, output)
        if name == "SIGXFSZ":
            return ExecResult("killed", "file size limit (SIGXFSZ)", seconds, output)
        return ExecResult("killed", name, seconds, output)
    return ExecResult("error", f"exited with code {code} before the end", seconds, output)


def _signal_name(number: int) -> str:
    """SIGKILL for 9, and so on."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _user_exists(uid: int) -> bool:
    """True when the user database knows `uid`."""
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _claim_uid() -> tuple[int | None, IO[str] | None]:
    """A sandbox user id no other evaluator on this machine holds, and its held lock (None when not root)."""
    if os.geteuid() != 0:
        return None, None
    UID_LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    if UID_LOCK_DIR.is_symlink() or UID_LOCK_DIR.stat().st_uid != 0:
        raise SandboxError(f"{UID_LOCK_DIR} must be a directory owned by root")
    for uid in SANDBOX_UIDS:
        if _user_exists(uid):  # never a real user: the runner kills every process of its user id
            continue
        lock = open(UID_LOCK_DIR / f"{uid}.lock", "w")  # noqa: SIM115  (held for the runner's life)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return uid, lock
    raise SandboxError(f"all sandbox user ids {SANDBOX_UIDS.start}-{SANDBOX_UIDS.stop - 1} are in use")


class _Runner:
    """One runner process and the user id its children run as."""

    def __init__(self) -> None:
        uid, self._uid_lock = _claim_uid()
        self._base = tempfile.mkdtemp(prefix="hrm_sandbox_")
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115  (closed in close())
        self._buffer = b""
        self._stopping = False
        self._proc = subprocess.Popen(
            [sys.executable, "-S", "-s", "-B", str(RUNNER), self._base, str(-1 if uid is None else uid)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=RUNNER_ENV,
            cwd=self._base,
            start_new_session=True,
        )
        try:
            line = self._read_line(time.monotonic() + STARTUP_TIMEOUT_S)
        except EOFError:
            line = None
        if line is None:
            reason = self._stderr_tail()
            self.close()
            raise SandboxError(f"the sandbox runner did not start: {reason}")
        self.info: dict = json.loads(line)

    def run(self, program: str, limits: SandboxLimits) -> ExecResult:
        """Run one program; a runner that dies or hangs is closed and the program reported killed.

        Raises SandboxClosedError when the runner was told to stop (`stop`) before the program's reply came.
        """
        nonce = secrets.token_hex(16)
        request = json.dumps({"program": program, "nonce": nonce, **limits.request()}) + "\n"
        start = time.monotonic()
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(request.encode())
            self._proc.stdin.flush()
        except OSError:
            return self._lost("died", start)
        try:
            line = self._read_line(start + limits.timeout_s + REPLY_GRACE_S)
        except EOFError:
            return self._lost("died", start)
        if line is None:
            return self._lost("stuck", start)
        return classify(json.loads(line), nonce)

    def _lost(self, how: str, start: float) -> ExecResult:
        """Close a runner that died or got stuck during a program; that program counts as killed/timeout."""
        if self._stopping:
            raise SandboxClosedError("the sandbox was stopped before the program finished")
        logger.warning("a sandbox runner %s during a program (restarting it): %s", how, self._stderr_tail())
        self.close()
        status = "killed" if how == "died" else "timeout"
        return ExecResult(status, f"sandbox runner {how}", time.monotonic() - start)

    def stop(self) -> None:
        """Ask the runner to kill its running program (and what it left behind) and exit, without waiting.

        SIGTERM goes to the runner alone, not its process group: a child not yet in its own session would
        otherwise get it too.
        """
        self._stopping = True
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGTERM)

    @property
    def alive(self) -> bool:
        """True while the runner process serves requests."""
        return self._proc.poll() is None

    def _read_line(self, deadline: float) -> str | None:
        """The runner's next reply line; None past the deadline, EOFError when the runner has gone."""
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise EOFError("the sandbox runner closed its output")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def _stderr_tail(self) -> str:
        """The end of the runner's own stderr, for error messages."""
        self._stderr.seek(0)
        return self._stderr.read()[-2000:].decode("utf-8", "replace").strip() or "no output"

    def close(self) -> None:
        """Stop the runner (closing its stdin ends it; a stuck one is killed) and remove its directory."""
        if self._proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self._proc.stdin is not None
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=REPLY_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout, self._stderr):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        shutil.rmtree(self._base, ignore_errors=True)
        if self._uid_lock is not None:
            self._uid_lock.close()


class Sandbox:
    """A pool of sandbox runners (one per worker thread) executing programs in parallel.

    Used as a context manager, it waits for the queued programs on a normal exit and aborts on an
    exception (see `close`).
    """

    def __init__(self, limits: SandboxLimits | None = None, workers: int | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self.workers = workers or os.cpu_count() or 1
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")
        self._local = threading.local()
        self._runners: list[_Runner] = []
        self._lock = threading.Lock()
        self._aborted = False

    def info(self) -> dict:
        """Which isolation the runners achieved (user switch, network, read-only file system) and limits."""
        isolation = self._executor.submit(lambda: self._runner().info).result()
        return {**isolation, "limits": asdict(self.limits), "workers": self.workers}

    def submit(self, program: str) -> Future[ExecResult]:
        """Queue one program; the future holds its ExecResult."""
        return self._executor.submit(self._execute, program)

    def _execute(self, program: str) -> ExecResult:
        """Run one program in this worker thread's runner (none once the sandbox is aborted)."""
        if self._aborted:
            raise SandboxClosedError("the sandbox was stopped before the program started")
        return self._runner().run(program, self.limits)

    def run(self, programs: Iterable[str], progress: bool = True) -> Iterator[tuple[int, ExecResult]]:
        """Run programs in parallel, yielding (index, result) as each finishes, with a progress bar."""
        futures = {self.submit(program): index for index, program in enumerate(programs)}
        try:
            with tqdm(total=len(futures), desc="execute", unit="prog", disable=not progress) as bar:
                for future in as_completed(futures):
                    bar.update()
                    yield futures[future], future.result()
        finally:
            for future in futures:
                future.cancel()

    def _runner(self) -> _Runner:
        """This worker thread's runner, (re)started when missing or dead."""
        runner: _Runner | None = getattr(self._local, "runner", None)
        if runner is not None and runner.alive:
            return runner
        if runner is not None:
            runner.close()
            with self._lock:
                self._runners.remove(runner)
        runner = self._local.runner = _Runner()
        with self._lock:
            self._runners.append(runner)
            if self._aborted:  # started while `close(abort=True)` was stopping the others
                runner.stop()
        return runner

    def close(self, abort: bool = False) -> None:
        """Stop every runner: after the queued programs, or with `abort` at once.

        Aborting cancels the queued programs and has each runner kill its running one and exit, so it
        returns within moments, whatever the programs' timeouts; their futures fail with SandboxClosedError.
        """
        if abort:
            self._executor.shutdown(wait=False, cancel_futures=True)
            with self._lock:
                self._aborted = True
                for runner in self._runners:
                    runner.stop()
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for runner in self._runners:
                runner.close()
            self._runners.clear()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.close(abort=exc_type is not None)


def run_programs(
    programs: list[str],
    limits: SandboxLimits | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Iterator[tuple[int, ExecResult]]:
    """Run programs in parallel sandboxes, yielding (index, result) as each finishes."""
    with Sandbox(limits, workers) as sandbox:
        yield from sandbox.run(programs, progress)


def run_program(program: str, limits: SandboxLimits | None = None) -> ExecResult:
    """Run one program in a sandbox and return how it ended."""
    with Sandbox(limits, workers=1) as sandbox:
        return sandbox.submit(program).result()
