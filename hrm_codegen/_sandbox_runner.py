"""The sandbox's runner process: isolates itself once, then forks one confined child per untrusted program.

Started by `hrm_codegen.execution` as `python -S -s -B _sandbox_runner.py BASE_DIR UID` with a clean
environment. It is standard-library only and never imports the package, so it starts fast. Protocol: one
JSON line out at start (the isolation that took effect), then per request one JSON line in (program,
nonce, limits) and one JSON line out (exit status, the child's report lines, captured output, seconds).

Set up once, each step where the OS allows it and recorded in the first line:
- as root: a private mount namespace where every mount is read-only except a small tmpfs over BASE_DIR
  (the work directories), and a new network namespace with no interface up; not root: a new user +
  network namespace (no network);
- the guard: process, file-removal, permission, environment and network calls of `os`/`posix`,
  `shutil`, `subprocess`, `socket` and `signal` are replaced by stand-ins raising PermissionError (the
  runner keeps its own references); the common modules of benchmark programs are imported; `gc.freeze`
  keeps the forked children from touching the shared heap.
Per program, in a forked child: a new session (its whole group is killed at the deadline), rlimits
(CPU time, address space, file size, processes, open files, no core dumps), stdin from /dev/null,
stdout and stderr into one file read back truncated, a fresh work directory as cwd, then as root the
switch to the sandbox's own user id so that RLIMIT_NPROC and file permissions bind. The runner is a
child subreaper: any process the program leaves behind is re-parented to it and killed after the run.
SIGTERM (the evaluator stopping early) makes the runner kill the running program and whatever it left,
remove the work directory and exit at once, without a reply.
The child reports `NONCE PID kind name` on a private pipe once the program's last line has run (name:
the exception type, with the errno name for OSError); the nonce comes with the request, never in the
program text, so ending early (`sys.exit`, `os._exit`) is never a pass. (Like the guard, the nonce is
no defence against a program written to inspect the interpreter it runs in; the OS-level limits are.)
Linux only (namespaces, prctl, /proc).
"""

import builtins
import contextlib
import ctypes
import errno
import gc
import importlib
import importlib.abc
import io
import json
import os
import resource
import select
import signal
import sys
import time
import types
from collections.abc import Iterator
from os import chmod, chown, kill, killpg, rmdir, setgid, setgroups, setuid, unlink
from os import fork as os_fork

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
MNT_DETACH = 2
WORK_TMPFS = "size=128m,mode=0755"
LIBC = ctypes.CDLL(None, use_errno=True)

# Imported once here so that every forked child finds them ready.
PRELOADED = "array bisect cmath collections copy functools heapq itertools math operator re string typing"
# The guard's targets per module; `os` re-exports `posix`, so both are patched (`_socket` is not: `socket`
# subclasses it on import; the network namespace is what keeps programs off the network).
DISABLED = {
    ("os", "posix"): """kill killpg system popen fork forkpty execv execve execl execle execlp execlpe
        execvp execvpe spawnv spawnve spawnvp spawnvpe spawnl spawnle spawnlp spawnlpe posix_spawn
        posix_spawnp removedirs renames fchmod lchmod chown fchown lchown chroot chflags lchflags setuid
        setgid seteuid setegid setreuid setregid setresuid setresgid setgroups putenv unsetenv link
        symlink mknod mkfifo""",
    ("shutil",): "rmtree move chown",
    ("subprocess",): "Popen call run check_call check_output getoutput getstatusoutput",
    ("socket",): "socket SocketType create_connection create_server socketpair fromfd",
    ("signal", "_signal"): "pidfd_send_signal",
}
# File calls of `os`/`posix` allowed on paths inside the work directory only (so are writes through
# `open`, `io.open` and `os.open`); the count is how many leading arguments are paths.
INSIDE_WORK_ONLY = {
    "remove": 1,
    "unlink": 1,
    "rmdir": 1,
    "truncate": 1,
    "chmod": 1,
    "rename": 2,
    "replace": 2,
}


def _libc_call(name: str, *args) -> bool:
    """Call a libc function; True when it returned 0."""
    return getattr(LIBC, name)(*args) == 0


def _unescape_mount_point(field: str) -> str:
    """Decode the octal escapes (\\040 for a space) of a mount point in /proc/self/mountinfo."""
    parts = field.split("\\")
    return parts[0] + "".join(chr(int(part[:3], 8)) + part[3:] for part in parts[1:])


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> bool:
    """mount(2); True on success."""
    encode = lambda value: None if value is None else value.encode()  # noqa: E731
    return _libc_call("mount", encode(source), encode(target), encode(fstype), flags, encode(data))


def _closed_ancestor(path: str) -> str | None:
    """The outermost directory on the way to `path` that other users may not enter, if any."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    for depth in range(len(parts) + 1):
        directory = os.sep + os.sep.join(parts[:depth])
        if not os.stat(directory).st_mode & 0o001:
            return directory
    return None


def _expose_library(base: str) -> bool:
    """Make the standard library reachable for the sandbox user when a directory above it is closed.

    (A pyenv install under /root, say.) That directory is covered by an empty tmpfs into which the
    library alone is bound back at its own path, which also hides the rest of the directory.
    """
    library = os.path.dirname(os.__file__)
    closed = _closed_ancestor(library)
    if closed is None:
        return True
    if closed == library:
        return False
    stash = os.path.join(base, ".library")
    os.mkdir(stash)
    ok = _mount(library, stash, None, MS_BIND | MS_REC) and _mount(
        "tmpfs", closed, "tmpfs", MS_NOSUID, "mode=0755"
    )
    if ok:
        os.makedirs(library, mode=0o755)
        ok = _mount(stash, library, None, MS_BIND | MS_REC)
    LIBC.umount2(stash.encode(), MNT_DETACH)
    os.rmdir(stash)
    return ok


def _readonly_mounts(base: str) -> bool:
    """In a fresh private mount namespace, put a tmpfs over `base` and make every other mount read-only."""
    if not _mount("none", "/", None, MS_REC | MS_PRIVATE):
        return False
    if not _mount("tmpfs", base, "tmpfs", MS_NOSUID | MS_NODEV, WORK_TMPFS):
        return False
    all_ok = _expose_library(base)
    with open("/proc/self/mountinfo") as mountinfo:
        entries = [line.split() for line in mountinfo]
    for fields in entries:
        point, options = _unescape_mount_point(fields[4]), fields[5].split(",")
        if point == base:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        flags |= MS_NOSUID if "nosuid" in options else 0
        flags |= MS_NODEV if "nodev" in options else 0
        flags |= MS_NOEXEC if "noexec" in options else 0
        all_ok = _mount(None, point, None, flags) and all_ok
    return all_ok


def _library_readable_as(uid: int) -> bool:
    """True when a process running as `uid` can read the standard library (so imports work)."""
    checker = os_fork()
    if checker == 0:
        code = 1
        try:
            setgroups([])
            setgid(uid)
            setuid(uid)
            os.listdir(os.path.dirname(os.__file__))
            with open(os.__file__, "rb"):
                code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(checker, 0)[1]) == 0


def isolate(base: str, uid: int | None) -> tuple[dict, int | None]:
    """Enter the namespaces this process may create; return which isolation took effect and the uid to use.

    The user id switch is dropped (and the reason noted) when that user could not read the library.
    """
    info: dict = {"uid_switch": uid is not None, "network_isolated": False, "readonly_fs": False}
    if os.geteuid() == 0:
        if _libc_call("unshare", CLONE_NEWNS):
            info["readonly_fs"] = _readonly_mounts(base)
        info["network_isolated"] = _libc_call("unshare", CLONE_NEWNET)
    else:
        info["network_isolated"] = _libc_call("unshare", CLONE_NEWUSER | CLONE_NEWNET)
    LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if uid is not None and not _library_readable_as(uid):
        info["uid_switch"] = False
        info["note"] = f"user {uid} cannot read {os.path.dirname(os.__file__)}; programs run as root"
        uid = None
    return info, uid


def _refuse(label: str, original: object) -> object:
    """A stand-in raising PermissionError: a function, or for a class a subclass that cannot be created."""

    def refused(*args, **kwargs):
        raise PermissionError(f"{label} is disabled in the sandbox")

    if isinstance(original, type):
        with contextlib.suppress(TypeError):  # a class that cannot be subclassed gets the function
            namespace = {"__init__": refused, "__module__": original.__module__, "__doc__": original.__doc__}
            return type(original.__name__, (original,), namespace)
    return refused


def _disable(module: types.ModuleType, label: str, names: str) -> None:
    """Replace the named callables of a module by stand-ins that raise PermissionError."""
    for name in names.split():
        if hasattr(module, name):
            setattr(module, name, _refuse(f"{label}.{name}", getattr(module, name)))


class _GuardingLoader(importlib.abc.Loader):
    """Loads a module as its own loader would, then disables its DISABLED callables."""

    def __init__(self, loader: importlib.abc.Loader, label: str, names: str) -> None:
        self.loader, self.label, self.names = loader, label, names

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self.loader.exec_module(module)
        _disable(module, self.label, self.names)


class _GuardOnImport(importlib.abc.MetaPathFinder):
    """Guards a DISABLED module that is not loaded yet when the program imports it.

    (Importing `subprocess` up front would load `threading`, whose fork hook makes every fork slower.)
    """

    def __init__(self, pending: dict[str, tuple[str, str]]) -> None:
        self.pending = pending

    def find_spec(self, name, path=None, target=None):
        if name not in self.pending:
            return None
        for finder in sys.meta_path:
            found = None if finder is self else finder.find_spec(name, path, target)
            if found is not None and found.loader is not None:
                found.loader = _GuardingLoader(found.loader, *self.pending[name])
                return found
        return None


def _guard_files(work: str) -> None:
    """Confine writing, removing, renaming and chmod through Python's file calls to the work directory."""
    io_open, os_open, realpath, fsdecode = io.open, os.open, os.path.realpath, os.fsdecode
    prefix = realpath(work) + os.sep
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def require_inside(label: str, paths: list, dir_fd=None) -> None:
        for path in paths:
            if dir_fd is not None or isinstance(path, int) or not realpath(fsdecode(path)).startswith(prefix):
                raise PermissionError(f"{label} on {path!r} outside the sandbox's work directory is disabled")

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+") and not isinstance(file, int) and "opener" not in kwargs:
            require_inside("open for writing", [file])  # an opener opens through os.open, checked too
        return io_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & write_flags:
            require_inside("os.open for writing", [path], dir_fd)
        return os_open(path, flags, mode, dir_fd=dir_fd)

    def inside_only(name: str, count: int):
        function = getattr(os, name)

        def checked(*args, **kwargs):
            paths = [*args[:count], *(kwargs[key] for key in ("path", "src", "dst") if key in kwargs)]
            dir_fds = [kwargs.get(key) for key in ("dir_fd", "src_dir_fd", "dst_dir_fd")]
            require_inside(f"os.{name}", paths, next((fd for fd in dir_fds if fd is not None), None))
            return function(*args, **kwargs)

        return checked

    builtins.open = io.open = guarded_open
    for module in (os, sys.modules["posix"]):
        setattr(module, "open", guarded_os_open)  # noqa: B010  (a module attribute type checkers do not know)
        for name, count in INSIDE_WORK_ONLY.items():
            setattr(module, name, inside_only(name, count))


def guard(work: str) -> None:
    """Disable the DISABLED callables (now in loaded modules, on import in the others); confine file calls."""
    _guard_files(work)
    pending = {}
    for module_names, names in DISABLED.items():
        for module_name in module_names:
            if module_name in sys.modules:
                _disable(sys.modules[module_name], module_names[0], names)
            else:
                pending[module_name] = (module_names[0], names)
    sys.meta_path.insert(0, _GuardOnImport(pending))


def _limit(kind: int, soft: int, hard: int | None = None) -> None:
    """Set an rlimit (hard defaults to soft), never above the current hard limit."""
    hard = soft if hard is None else hard
    _, current = resource.getrlimit(kind)
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(kind, (soft, hard))


def _child(request: dict, work: str, uid: int | None, fds: tuple[int, int, int]) -> None:
    """In the forked child: confine this process, run the program, report how it ended; never returns.

    `fds` are /dev/null, the output file and the report pipe: they become fds 0, 1 (and 2) and 3, under
    the runner's own sys.stdin/stdout/stderr objects, whose buffers are empty (requests are read from
    fd 0 directly and replies flushed before the fork).
    """
    exit_now, write, pid = os._exit, os.write, os.getpid()
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the runner's stop handler
        os.setsid()
        for target, fd in zip((0, 1, 2, 3), (fds[0], fds[1], fds[1], fds[2]), strict=True):
            os.dup2(fd, target)
        os.closerange(4, 65536)
        _limit(resource.RLIMIT_CPU, request["cpu_s"], request["cpu_s"] + 1)
        _limit(resource.RLIMIT_AS, request["memory_bytes"])
        _limit(resource.RLIMIT_FSIZE, request["file_size_bytes"])
        _limit(resource.RLIMIT_NPROC, request["max_processes"])
        _limit(resource.RLIMIT_NOFILE, 256)
        _limit(resource.RLIMIT_CORE, 0)
        os.chdir(work)
        if uid is not None:
            setgroups([])
            setgid(uid)
            setuid(uid)
        LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        main = type(sys)("__main__")
        sys.modules["__main__"] = main
        program = request.pop("program")
        report = _reporter(request.pop("nonce"), pid, write, exit_now, sys.stdout, sys.stderr)
    except BaseException as exc:
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        write(3, f"SETUP {pid} error {message}\n".encode())
        exit_now(70)
    try:
        exec(compile(program, "<program>", "exec"), main.__dict__)
    except BaseException as exc:  # the program's own failure, whatever it is
        report(exc)
    report(None)


def _reporter(
    nonce, pid, write, exit_now, stdout, stderr, isinstance=isinstance, type=type, str=str, getattr=getattr
):
    """Build the closure that writes the child's one report line and ends the child."""
    assertion, os_error, errno_names = AssertionError, OSError, errno.errorcode

    def report(exc: BaseException | None) -> None:
        try:
            if exc is None:
                line = f"{nonce} {pid} passed -"
            else:
                kind = "failed" if isinstance(exc, assertion) else "error"
                name = "_".join(str(type(exc).__name__).split()) or "-"
                symbol = errno_names.get(getattr(exc, "errno", -1), "") if isinstance(exc, os_error) else ""
                name += f"[{symbol}]" if symbol else ""
                line = f"{nonce} {pid} {kind} {name}"
            write(3, (line + "\n").encode())
            stdout.flush()
            stderr.flush()
        finally:
            exit_now(0)

    return report


def _wait(pid: int, timeout: float) -> tuple[int, bool]:
    """Wait for the child up to `timeout` seconds, killing its process group past it; (status, timed_out)."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # before Linux 5.3: poll with growing sleeps
        deadline, delay = time.monotonic() + timeout, 0.0005
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status, False
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        timed_out = True
    else:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        timed_out = not poller.poll(timeout * 1000)
        os.close(pidfd)
    if timed_out:
        _killpg(pid)
    return os.waitpid(pid, 0)[1], timed_out


def _killpg(pgid: int) -> None:
    """SIGKILL a process group, ignoring a group that is already gone."""
    with contextlib.suppress(ProcessLookupError):
        killpg(pgid, signal.SIGKILL)


def _children_left() -> bool:
    """Reap finished children; True while any child (a process the program left behind) still runs."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def _kill_user(uid: int) -> None:
    """Kill every process running as `uid` at once, from a forked process that takes that user id."""
    sweeper = os_fork()
    if sweeper == 0:
        try:
            setgid(uid)
            setuid(uid)
            kill(-1, signal.SIGKILL)  # all processes this user may signal: the sandbox user's, atomically
        finally:
            os._exit(0)
    os.waitpid(sweeper, 0)


def _child_pids() -> list[int]:
    """The pids of this process's children."""
    me = os.getpid()
    with contextlib.suppress(OSError), open(f"/proc/self/task/{me}/children") as children:
        return [int(pid) for pid in children.read().split()]
    pids = []
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{entry.name}/stat", "rb") as stat:
            if int(stat.read().rsplit(b")", 1)[1].split()[1]) == me:
                pids.append(int(entry.name))
    return pids


def _kill_leftovers(uid: int | None) -> None:
    """Kill every process the program left behind (they are all this subreaper's descendants)."""
    for _ in range(100):
        if not _children_left():
            return
        if uid is not None:
            _kill_user(uid)
        else:
            for child in _child_pids():
                _killpg(child)
                with contextlib.suppress(ProcessLookupError):
                    kill(child, signal.SIGKILL)
        time.sleep(0.001)


def _stop_on_sigterm(work: str, uid: int | None) -> None:
    """Make SIGTERM kill the running program (set up or not) and what it left, clean up, and end the runner."""
    exit_now = os._exit

    def stop(signum, frame) -> None:
        for child in _child_pids():
            _killpg(child)
            with contextlib.suppress(ProcessLookupError):
                kill(child, signal.SIGKILL)
        _kill_leftovers(uid)
        _remove_tree(work)
        exit_now(0)

    signal.signal(signal.SIGTERM, stop)


def _remove_tree(path: str) -> None:
    """Remove a work directory whatever the program did to its permissions (with the runner's own calls)."""
    with contextlib.suppress(OSError):
        chmod(path, 0o700)
    with contextlib.suppress(FileNotFoundError), os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(entry.path)
            else:
                with contextlib.suppress(OSError):
                    unlink(entry.path)
    with contextlib.suppress(OSError):
        rmdir(path)


def _read_report(report_fd: int) -> str:
    """What the child wrote on its report pipe (bounded; non-blocking, as a leftover may hold it open)."""
    os.set_blocking(report_fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while len(chunks) < 16 and (chunk := os.read(report_fd, 65536)):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def run_one(request: dict, base: str, uid: int | None, devnull: int, out_fd: int) -> dict:
    """Run one program in a forked, confined child; return its exit status, report and output."""
    work = os.path.join(base, "work")
    _remove_tree(work)
    os.mkdir(work, 0o700)
    if uid is not None:
        chown(work, uid, uid)
    os.ftruncate(out_fd, 0)
    os.lseek(out_fd, 0, os.SEEK_SET)
    report_r, report_w = os.pipe()
    sys.stdout.flush()
    start = time.perf_counter()
    pid = os_fork()
    if pid == 0:
        os.close(report_r)
        _child(request, work, uid, (devnull, out_fd, report_w))
    os.close(report_w)
    status, timed_out = _wait(pid, request["timeout_s"])
    seconds = time.perf_counter() - start
    _killpg(pid)
    _kill_leftovers(uid)
    report = _read_report(report_r)
    os.close(report_r)
    limit = request["max_output_bytes"]
    output = os.pread(out_fd, limit, 0).decode("utf-8", "replace")
    _remove_tree(work)
    return {
        "pid": pid,
        "returncode": os.waitstatus_to_exitcode(status),
        "timed_out": timed_out,
        "report": report,
        "output": output,
        "output_truncated": os.fstat(out_fd).st_size > limit,
        "seconds": seconds,
    }


def _anonymous_file(directory: str) -> int:
    """A read-write file descriptor of a file without a name (for the children's stdout and stderr)."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
    except (AttributeError, OSError):  # no O_TMPFILE here: create a file, then unlink it
        path = os.path.join(directory, ".output")
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.unlink(path)
        return fd


def _requests() -> Iterator[dict]:
    """The requests, one JSON object per line, read from fd 0 itself (sys.stdin's buffer stays empty)."""
    buffer = b""
    while chunk := os.read(0, 1 << 20):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        yield from (json.loads(line) for line in lines)


def main() -> None:
    """Set up once, then serve requests from stdin until it closes."""
    base, uid_arg = sys.argv[1], int(sys.argv[2])
    uid = uid_arg if uid_arg >= 0 and os.geteuid() == 0 else None
    script_dir = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != script_dir]
    for name in PRELOADED.split():
        importlib.import_module(name)
    os.umask(0o022)
    info, uid = isolate(base, uid)
    if uid is not None:
        _kill_user(uid)  # whatever an earlier runner with this user id may have left
    devnull = os.open(os.devnull, os.O_RDONLY)
    out_fd = _anonymous_file(base)
    work = os.path.join(base, "work")
    os.environ.update(HOME=work, TMPDIR=work)
    guard(work)
    _stop_on_sigterm(work, uid)
    gc.collect()
    gc.freeze()
    print(json.dumps(info), flush=True)
    for request in _requests():
        print(json.dumps(run_one(request, base, uid, devnull, out_fd)), flush=True)


if __name__ == "__main__":
    main()
