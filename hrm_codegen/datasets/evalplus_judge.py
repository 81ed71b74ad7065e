"""MBPP+ judging by EvalPlus's rules, run inside the sandbox: this module's source is embedded in the programs.

It imports the standard library only and nothing of the package, and has no `from __future__` line, because
`evalplus_source` puts its text, as it is, into the programs the sandbox runs:

- the ground-truth program runs a task's canonical solution on every input (a deep copy of each, as EvalPlus's
  `trusted_exec` does), timing each call, and prints the outputs in this module's encoding (`encode`): a
  JSON text in which every value keeps its type (tuple, set, dict keys, complex, Counter, float bits);
  an expected output whose encoding is longer than `DIGEST_ABOVE_CHARS` (Mbpp/255's and /630's largest),
  compared by `==` alone and free of NaN, is stored as a fingerprint (`fingerprint`, `Digest`);
- the judging program receives the solution's source as a string and judges it as EvalPlus 0.3.1 does
  (`evalplus/eval/__init__.py` `unsafe_execute` and `evalplus/evaluate.py` `check_correctness`): the base inputs
  (MBPP's shown tests) and then the plus inputs each run in a fresh namespace (`exec(solution, {})`, so
  `__name__` is not `"__main__"`), with input and output swallowed, EvalPlus's guard (exit, quit, open and the
  destructive `os` calls set to None), a per-input time limit and a per-stage time budget; outputs are compared
  by `outputs_match`, EvalPlus's exact equality, special oracles, set and not-None tasks and float tolerance.
  A failed base stage raises `BaseTestsFailed`; a passed base stage and a failed plus stage `PlusTestsFailed`
  (both AssertionError subclasses, so the sample's result is `failed` and its detail names the stage); a plus
  stage that will not stop ends the process with exit code `PLUS_HUNG_EXIT` once the base stage has passed.
"""

import builtins
import collections
import contextlib
import copy
import faulthandler
import hashlib
import io
import json
import marshal
import math
import os
import reprlib
import signal
import sys
import time
from typing import Any, cast

# EvalPlus's special oracles (evalplus/eval/_special_oracle.py and unsafe_execute), by entry point.
ORACLES = {
    "are_equivalent": "always",  # Mbpp/164: any output passes
    "sum_div": "sum_div",  # Mbpp/295: the expected output or 0
    "surface_Area": "surface_area",  # Mbpp/581: the pyramid's area with the slant height, within atol
    "digit_distance_nums": "digit_distance",  # Mbpp/558: digits compared after zero padding
    "similar_elements": "set_eq",  # Mbpp/2
    "find_char_long": "set_eq",  # Mbpp/7
    "common_in_nested_lists": "set_eq",  # Mbpp/111
    "extract_singly": "set_eq",  # Mbpp/140
    "larg_nnum": "set_eq",  # Mbpp/232
    "intersection_array": "set_eq",  # Mbpp/249
    "find_dissimilar": "set_eq",  # Mbpp/579
    "Diff": "set_eq",  # Mbpp/769
    "check_str": "not_none",  # Mbpp/737: outputs are regex matches; only "is it not None" is compared
    "text_match_three": "not_none",  # Mbpp/787
    "text_starta_endb": "not_none",  # Mbpp/794
}
DEFAULT_FLOAT_ATOL = 1e-6  # EvalPlus's tolerance when the task's atol is 0 and the expected output is floats
RTOL = 1e-7  # np.allclose's rtol as EvalPlus sets it (np.testing.assert_allclose's default)
MIN_TIME_LIMIT_S = 1.0  # evalplus.config DEFAULT_MIN_TIME_LIMIT
TIME_LIMIT_FACTOR = 4.0  # evalplus.config DEFAULT_GT_TIME_LIMIT_FACTOR
STAGE_CAP_S = 60.0  # EVALPLUS_TIMEOUT_PER_TASK's default: a stage's inputs get at most this much in all
STAGE_SLACK_S = 2.0  # untrusted_check: the process is given timeout + 1 and joined for 1 s more
HUNG_GRACE_S = 2.0  # past its budget, a stage that ignores the time-out exceptions ends the process
PLUS_HUNG_EXIT = 86  # exit status: the base stage passed, the plus stage overran its budget
DIGEST_ABOVE_CHARS = 1 << 20  # expected outputs whose encoding is longer are stored as fingerprints
RESULT_MARK = "@@MBPP+ground-truth@@ "
_TAG = "~"


class BaseTestsFailed(AssertionError):
    """The solution failed an input of the base stage (MBPP's shown tests)."""


class PlusTestsFailed(AssertionError):
    """The solution passed every base input and failed an input of the plus stage."""


class TimeLimitExceeded(Exception):
    """An input's time limit (or the stage's budget) ran out."""


# ---------------------------------------------------------------------------------------------- encoding


def _tagged(value):
    """`value` as plain JSON data: lists stay arrays, every other container or non-JSON type is a tagged object."""
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list:
        return [_tagged(item) for item in value]
    if kind in (tuple, set, frozenset, collections.deque):
        return {_TAG: kind.__name__, "v": [_tagged(item) for item in value]}
    if kind in (dict, collections.Counter, collections.OrderedDict):
        return {_TAG: kind.__name__, "v": [[_tagged(k), _tagged(v)] for k, v in value.items()]}
    if kind is complex:
        return {_TAG: "complex", "v": [value.real, value.imag]}
    if kind is bytes:
        return {_TAG: "bytes", "v": value.hex()}
    raise TypeError(f"cannot store a value of type {kind.__name__}")


_UNTAG = {
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
    "deque": collections.deque,
    "dict": dict,
    "Counter": collections.Counter,
    "OrderedDict": collections.OrderedDict,
    "complex": lambda parts: complex(parts[0], parts[1]),
    "bytes": bytes.fromhex,
}


def _untag(obj):
    """json.loads object hook: rebuild a tagged value (a digest stays a Digest)."""
    kind = obj[_TAG]
    if kind == "digest":
        return Digest(obj["v"])
    if kind in ("dict", "Counter", "OrderedDict"):
        return _UNTAG[kind](dict((k, v) for k, v in obj["v"]))
    return _UNTAG[kind](obj["v"])


@contextlib.contextmanager
def _unlimited_int_digits():
    """Lift the int <-> decimal string digit limit (outputs may be huge ints), restoring it afterwards."""
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        yield
    finally:
        sys.set_int_max_str_digits(limit)


def encode(value) -> str:
    """The JSON text of `value` with its types kept (TypeError for a type this encoding does not hold)."""
    with _unlimited_int_digits():
        return json.dumps(_tagged(value), separators=(",", ":"))


def decode(text: str):
    """The value `encode` wrote (fingerprints come back as `Digest`)."""
    with _unlimited_int_digits():
        return json.loads(text, object_hook=_untag)


# ------------------------------------------------------------------------------------------- fingerprints


def _normal(value, emit) -> None:
    """Emit a text that is equal for two values exactly when `==` holds between them (for the built-in types:
    numbers compare by value across bool/int/float/complex, sets and dicts whatever their order)."""
    if isinstance(value, bool | int) or (isinstance(value, float) and value.is_integer()):
        emit(f"i{int(value):x};")
    elif isinstance(value, float):
        emit("f" + value.hex() + ";" if value == value else f"N{id(value)};")  # NaN equals nothing
    elif isinstance(value, complex):
        if value.imag == 0:
            _normal(value.real, emit)
        else:
            emit("c")
            _normal(value.real, emit)
            _normal(value.imag, emit)
    elif isinstance(value, str):
        emit(f"s{len(value)}:{value}")
    elif isinstance(value, bytes):
        emit(f"b{len(value)}:{value.hex()}")
    elif value is None:
        emit("n")
    elif isinstance(value, list | tuple):
        emit("[" if isinstance(value, list) else "(")
        for item in value:
            _normal(item, emit)
        emit("]")
    elif isinstance(value, set | frozenset):
        emit("{" + "".join(sorted(_normal_text(item) for item in value)) + "}")
    elif isinstance(value, dict):
        emit("<" + "".join(sorted(_normal_text(k) + "=" + _normal_text(v) for k, v in value.items())) + ">")
    else:
        emit(f"?{id(value)};")  # a type this form does not model: equal to nothing


def _normal_text(value) -> str:
    parts: list = []
    _normal(value, parts.append)
    return "".join(parts)


def _normal_hash(value) -> str:
    """Sha256 of the normal text of `value`, hashed as it is produced."""
    digest, parts = hashlib.sha256(), []

    def emit(text: str) -> None:
        parts.append(text)
        if len(parts) >= 4096:
            digest.update("".join(parts).encode("utf-8", "surrogatepass"))
            parts.clear()

    _normal(value, emit)
    digest.update("".join(parts).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _marshal_hash(value) -> str | None:
    """Sha256 of marshal's version-0 bytes of `value` (no shared references: equal bytes for equal built-in
    values of equal types and order), None for a value marshal does not take (a subclass, another type)."""
    try:
        return hashlib.sha256(marshal.dumps(value, 0)).hexdigest()
    except ValueError:
        return None


def _has_nan(value) -> bool:
    """True when a NaN is anywhere in `value` (a NaN equals nothing, not even the same bits)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float | complex):
            if item != item:
                return True
        elif isinstance(item, list | tuple | set | frozenset | collections.deque):
            if not all(type(v) is str or type(v) is int for v in item):
                stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return False


def _shape(value):
    """(kind, length) of a built-in container or string, None for anything else."""
    for kind in (list, tuple, str, dict, set, frozenset):
        if type(value) is kind:
            return [kind.__name__ if kind is not frozenset else "set", len(value)]
    return None


def fingerprint(value) -> list:
    """What stands for a large expected output: the sha256 of its marshal bytes (the fast check), of its normal
    text (equal exactly when `==` holds) and its container kind and length."""
    return [_marshal_hash(value), _normal_hash(value), _shape(value)]


class Digest:
    """A fingerprinted expected output; `matches(out)` is `out == expected` for the types `_normal` models."""

    def __init__(self, prints: list) -> None:
        self.marshal_hash, self.normal_hash, self.shape = prints

    def matches(self, out) -> bool:
        """True when `out` equals the value fingerprinted (the marshal bytes first, then the normal form)."""
        shape = _shape(out)
        if shape is not None and self.shape is not None and shape != self.shape:
            return False
        fast = _marshal_hash(out)
        return (fast is not None and fast == self.marshal_hash) or _normal_hash(out) == self.normal_hash


def encode_expected(value, exact: bool) -> str:
    """An expected output's encoding, or its fingerprint when the encoding is longer than DIGEST_ABOVE_CHARS,
    `exact` (EvalPlus compares it by `==` alone: no oracle, an atol of 0) and it holds no NaN."""
    text = encode(value)
    if len(text) <= DIGEST_ABOVE_CHARS or not exact or _has_nan(value):
        return text
    return json.dumps({_TAG: "digest", "v": fingerprint(value)}, separators=(",", ":"))


# ------------------------------------------------------------------------------------------- comparison


def is_floats(value) -> bool:
    """EvalPlus's `is_floats`: a float, or a non-empty list or tuple of floats only."""
    if isinstance(value, float):
        return True
    if isinstance(value, list | tuple) and value:
        return all(isinstance(item, float) for item in value)
    return False


def _surface_area(base_edge, height):
    """Mbpp/581's oracle: a square pyramid's total area with `height` the apex's height, rounded."""
    slant = math.sqrt((base_edge / 2) ** 2 + height**2)
    return round(base_edge**2 + 4 * (base_edge * slant) / 2)


def _digit_distance(first, second):
    """Mbpp/558's oracle: the sum of per-digit distances after zero-padding both numbers to one width."""
    left, right = str(first), str(second)
    width = max(len(left), len(right))
    return sum(abs(int(a) - int(b)) for a, b in zip(left.zfill(width), right.zfill(width), strict=True))


_NUMERIC_INTS = (-(2**63), 2**64 - 1)  # ints numpy stores in int64 / uint64; others make object arrays


def _leaf_kind(leaf) -> str:
    if isinstance(leaf, bool | float | complex) or (
        isinstance(leaf, int) and _NUMERIC_INTS[0] <= leaf <= _NUMERIC_INTS[1]
    ):
        return "number"
    return "text" if isinstance(leaf, str | bytes) else "object"


def _array(value) -> tuple[tuple, list, str]:
    """(shape, leaves, dtype) of `value` as np.asanyarray reads it: nested lists and tuples make the dimensions,
    the rest are leaves; the dtype is "number" (numbers only), "text" (strings and numbers) or "object";
    ValueError for a ragged nest."""
    if not isinstance(value, list | tuple):
        shape: tuple = ()
        leaves = [value]
    else:
        shapes, leaves = [], []
        for item in value:
            item_shape, item_leaves, _ = _array(item)
            shapes.append(item_shape)
            leaves.extend(item_leaves)
        if any(s != shapes[0] for s in shapes):
            raise ValueError("setting an array element with a sequence: inhomogeneous shape")
        shape = (len(value),) + (shapes[0] if shapes else ())
    kinds = {_leaf_kind(leaf) for leaf in leaves}
    dtype = "object" if "object" in kinds else "text" if "text" in kinds else "number"
    return shape, leaves, dtype


def _broadcast(left: tuple, right: tuple) -> tuple:
    """numpy's broadcast shape of two shapes (ValueError when they do not broadcast)."""
    size = max(len(left), len(right))
    left, right = (1,) * (size - len(left)) + left, (1,) * (size - len(right)) + right
    shape = []
    for a, b in zip(left, right, strict=True):
        if a != b and 1 not in (a, b):
            raise ValueError("operands could not be broadcast together")
        shape.append(b if a == 1 else a)
    return tuple(shape)


def _index(shape: tuple, full: tuple, flat: int) -> int:
    """The flat index into an array of `shape` broadcast to `full`, for flat position `flat` of `full`."""
    padded = (1,) * (len(full) - len(shape)) + shape
    index, stride = 0, 1
    for dim, size in zip(reversed(padded), reversed(full), strict=True):
        position = flat % size if size else 0
        flat = flat // size if size else 0
        index += (position if dim != 1 else 0) * stride
        stride *= dim
    return index


def _close(x, y, rtol: float, atol: float) -> bool:
    """One element of np.isclose: |x - y| <= atol + rtol * |y| where y is finite, or x == y."""
    difference = abs(x - y)
    finite = math.isfinite(y.real) and math.isfinite(y.imag) if isinstance(y, complex) else math.isfinite(y)
    return (difference <= atol + rtol * abs(y) and finite) or x == y


def allclose(out: Any, expected: Any, rtol: float, atol: float) -> bool:
    """np.allclose(out, expected, rtol, atol) (numpy 2) for numbers and nested lists / tuples of them, raising
    where numpy raises: a ragged nest, shapes that do not broadcast, strings, an expected value that is not all
    numbers, an element of `out` that is not a number (only where an element is compared, as numpy does)."""
    scalar = (bool, int, float, complex)
    if isinstance(out, scalar):  # numpy keeps a Python scalar as it is
        x_shape, xs = (), [out]
    else:
        x_shape, xs, x_dtype = _array(out)
        if x_dtype == "text":
            raise TypeError("ufunc 'subtract' did not contain a loop with signature matching types")
    if isinstance(expected, scalar):  # an int becomes a float
        y_shape, ys = (), [float(expected) if isinstance(expected, int) else expected]
    else:
        y_shape, ys, y_dtype = _array(expected)
        if y_dtype != "number":
            raise TypeError("ufunc 'isfinite' not supported for the input types")
        cast: Any = complex if any(isinstance(v, complex) for v in ys) else float
        ys = [cast(v) for v in ys]  # the expected array is cast to float64 (complex128)
    full = _broadcast(x_shape, y_shape)
    pairs = [(xs[_index(x_shape, full, i)], ys[_index(y_shape, full, i)]) for i in range(math.prod(full))]
    if not all(isinstance(x, scalar) for x, _ in pairs):
        raise TypeError("unsupported operand type(s) for -")
    to: Any = complex if any(isinstance(v, complex) for v in xs + ys) else float
    return all(_close(to(x), y, rtol, atol) for x, y in pairs)


class _Stage:
    """The tolerance state of one EvalPlus stage: a task's atol, raised to 1e-6 for good at the first
    expected output that is floats (EvalPlus rebinds `atol` inside its loop)."""

    def __init__(self, atol) -> None:
        self.atol = atol


def outputs_match(out: Any, expected: Any, inp: Any, oracle: str | None, stage: _Stage) -> bool:
    """EvalPlus's verdict on one output: exact equality, the task's special oracle, then float tolerance
    (np.allclose after a type and length check); False where EvalPlus's check raises."""
    try:
        exact = expected.matches(out) if isinstance(expected, Digest) else out == expected
        if oracle == "always":
            exact = exact or True
        elif oracle == "sum_div":
            exact = exact or out == 0
        elif oracle == "surface_area":
            exact = exact or abs(out - _surface_area(*inp)) <= stage.atol
        elif oracle == "digit_distance":
            exact = exact or out == _digit_distance(*inp)
        elif oracle == "set_eq":
            exact = set(out) == set(cast(Any, expected))
        elif oracle == "not_none":
            exact = out == expected if isinstance(out, bool) else expected == (out is not None)
        if stage.atol == 0 and is_floats(expected):
            stage.atol = DEFAULT_FLOAT_ATOL
        if not exact and stage.atol != 0:
            if type(out) is not type(expected):
                return False
            if isinstance(expected, list | tuple) and len(cast(Any, out)) != len(expected):
                return False
            return bool(allclose(out, expected, RTOL, stage.atol))
        return bool(exact)
    except BaseException:  # EvalPlus counts any exception in the check as a failed input
        return False


# ---------------------------------------------------------------------------------------------- running


class _Swallowed(io.StringIO):
    """EvalPlus's swallowed I/O: writes vanish, reads raise OSError."""

    def write(self, text):
        return len(text)

    def read(self, *args, **kwargs):
        raise OSError

    def readline(self, *args, **kwargs):
        raise OSError

    def readlines(self, *args, **kwargs):
        raise OSError

    def readable(self, *args, **kwargs):
        return False


@contextlib.contextmanager
def _swallow_io():
    saved = sys.stdin, sys.stdout, sys.stderr
    sink = _Swallowed()
    sys.stdin = sys.stdout = sys.stderr = sink
    try:
        yield
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved


def time_limits(seconds) -> list:
    """EvalPlus's per-input limits from the canonical solution's times: max(1 s, 4 x its time)."""
    return [max(MIN_TIME_LIMIT_S, TIME_LIMIT_FACTOR * s) for s in seconds]


def stage_budget(limits) -> float:
    """The wall-clock budget of a stage: EvalPlus waits min(60 s, the sum of the limits) + 2 s for it."""
    return min(STAGE_CAP_S, sum(limits)) + STAGE_SLACK_S


class _Clock:
    """SIGALRM-based limits: one per input (once, as EvalPlus's `time_limit`), then the stage's deadline, at
    which the time-out is raised again every 50 ms, and past `HUNG_GRACE_S` more the process ends."""

    def __init__(self, deadline: float, hung_exit: int, exit_now=os._exit, now=time.monotonic) -> None:
        self.deadline, self.hung_exit, self.exit_now, self.now = deadline, hung_exit, exit_now, now

    def _ring(self, signum, frame):
        now = self.now()
        if now >= self.deadline + HUNG_GRACE_S:
            self.exit_now(self.hung_exit)
        if now >= self.deadline:
            signal.setitimer(signal.ITIMER_REAL, 0.05)
        else:
            signal.setitimer(signal.ITIMER_REAL, self.deadline - now)
        raise TimeLimitExceeded("time limit")

    def arm(self, seconds: float) -> None:
        """Interrupt after `seconds` (never later than the stage's deadline)."""
        signal.signal(signal.SIGALRM, self._ring)
        signal.setitimer(signal.ITIMER_REAL, max(1e-6, min(seconds, self.deadline - self.now())))

    def disarm(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)

    def overrun(self) -> bool:
        return self.now() >= self.deadline


_GUARDED_OS = (
    *("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty"),
    *("killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown"),
    *("chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"),
)


def _evalplus_guard() -> None:
    """What EvalPlus's `reliability_guard` takes away from a solution (set to None), and its 4 GiB stack."""
    with contextlib.suppress(Exception):
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_STACK)
        stack = 4 << 30 if hard == resource.RLIM_INFINITY else min(4 << 30, hard)
        resource.setrlimit(resource.RLIMIT_STACK, (stack, hard))
    faulthandler.disable()
    builtins.exit = builtins.quit = builtins.open = builtins.help = None  # type: ignore[assignment]
    for name in _GUARDED_OS:
        setattr(os, name, None)
    import shutil
    import subprocess

    shutil.rmtree = shutil.move = shutil.chown = None  # type: ignore[assignment]
    subprocess.Popen = None  # type: ignore[assignment,misc]
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None  # type: ignore[assignment]


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80


def _short(value) -> str:
    """A short repr for a failure message."""
    with contextlib.suppress(BaseException):
        return _SHORT.repr(value)
    return "<unprintable>"


def run_stage(solution: str, entry_point: str, stage: list, atol, hung_exit: int) -> str | None:
    """Run one stage as EvalPlus's `untrusted_check` with fast_check: None when every input passes, else why
    the first one failed. `stage`: the decoded inputs, expected outputs, per-input limits and the budget."""
    inputs, expected_outputs, limits, budget = stage
    clock = _Clock(time.monotonic() + budget, hung_exit)
    state = _Stage(atol)
    oracle = ORACLES.get(entry_point)
    where = "loading the solution"
    try:
        namespace: dict = {}
        clock.arm(budget)
        with _swallow_io():
            exec(solution, namespace)
        fn = namespace[entry_point]
        for number, (inp, expected, limit) in enumerate(zip(inputs, expected_outputs, limits, strict=True)):
            where = f"input {number} {_short(inp)}"
            clock.arm(limit)
            with _swallow_io():
                out = fn(*inp)
            clock.arm(budget)  # the comparison runs under the stage's deadline only
            if not outputs_match(out, expected, inp, oracle, state):
                return f"{where}: expected {_short(expected)}, got {_short(out)}"
        clock.disarm()
        return "the stage ran past its time budget" if clock.overrun() else None
    except BaseException as err:  # the solution's own failure, a time limit included
        clock.disarm()
        return f"{where}: {type(err).__name__}"


def judge(solution: str, spec_text: str) -> None:
    """Judge `solution` on a task and raise BaseTestsFailed or PlusTestsFailed when it fails. `spec_text`: the
    JSON array [entry_point, atol, base stage, plus stage], a stage being [inputs, expected outputs, per-input
    limits, budget] in this module's encoding."""
    entry_point, atol, *stages = decode(spec_text)
    _evalplus_guard()
    for name, stage, failure_type, hung_exit in zip(
        ("base", "plus"), stages, (BaseTestsFailed, PlusTestsFailed), (1, PLUS_HUNG_EXIT), strict=True
    ):
        failure = run_stage(solution, entry_point, stage, atol, hung_exit)
        if failure is not None:
            print(f"MBPP+ {name} tests failed: {failure}", file=sys.stderr)
            raise failure_type(failure)


def ground_truth(solution: str, entry_point: str, inputs_text: str, base_count: int, atol) -> None:
    """Run the canonical solution on every input (a deep copy of each; the first `base_count` are the base stage)
    and print RESULT_MARK and the JSON of the encoded outputs (`encode_expected`) and each call's seconds."""
    namespace: dict = {}
    with _swallow_io():
        exec(solution, namespace)
    fn = namespace[entry_point]
    oracle, stage_atol = ORACLES.get(entry_point), atol
    outputs, seconds = [], []
    for index, inp in enumerate(decode(inputs_text)):
        inp = copy.deepcopy(inp)
        with _swallow_io():
            start = time.perf_counter()
            out = fn(*inp)
            seconds.append(time.perf_counter() - start)
        if oracle == "not_none":
            out = out is not None
        if index in (0, base_count):  # a stage starts with the task's atol
            stage_atol = atol
        if stage_atol == 0 and is_floats(out):
            stage_atol = DEFAULT_FLOAT_ATOL
        outputs.append(encode_expected(out, exact=oracle is None and stage_atol == 0))
    print(RESULT_MARK + json.dumps({"outputs": outputs, "seconds": seconds}), flush=True)


# How `hrm_codegen.execution.classify` names a program that ended with PLUS_HUNG_EXIT.
PLUS_HUNG_DETAIL = f"exited with code {PLUS_HUNG_EXIT} before the end"


def base_passed(record: dict) -> bool:
    """Whether a judged sample (a samples.jsonl record) passed the base stage: it passed, or only plus failed."""
    return bool(
        record["passed"]
        or (record["result"] == "failed" and record["detail"] == PlusTestsFailed.__name__)
        or (record["result"] == "error" and record["detail"] == PLUS_HUNG_DETAIL)
    )
