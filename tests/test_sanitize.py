"""The EvalPlus-style sanitizer: longest parseable prefix, then the imports and definitions the entry point needs."""

from __future__ import annotations

from hrm_codegen.sanitize import extract_code, parseable_prefix, sanitize

SOLUTION = '''import math
from collections import Counter

SCALE = 2

def helper(x):
    return math.sqrt(x) * SCALE

def solve(values):
    """Sum of scaled roots."""
    return sum(helper(v) for v in values)

def unrelated():
    return Counter()

print(solve([4]))
assert solve([1]) == 2
if __name__ == "__main__":
    solve([9])
'''


def test_keeps_what_the_entry_point_reaches():
    assert sanitize(SOLUTION, "solve") == (
        "import math\n"
        "from collections import Counter\n"
        "SCALE = 2\n"
        "def helper(x):\n"
        "    return math.sqrt(x) * SCALE\n"
        "def solve(values):\n"
        '    """Sum of scaled roots."""\n'
        "    return sum(helper(v) for v in values)\n"
    )


def test_without_entry_point_keeps_every_definition_and_drops_top_level_code():
    kept = sanitize(SOLUTION)
    assert "def unrelated():\n    return Counter()\n" in kept
    assert "print(" not in kept and "assert" not in kept and "__main__" not in kept
    assert sanitize(SOLUTION, "not_defined_here") == kept


def test_cut_off_tail_is_dropped():
    cut = SOLUTION.split("print(")[0] + "def extra(a):\n    return [a,\n        a +"
    assert parseable_prefix(cut).endswith("return Counter()\n")
    assert sanitize(cut, "solve") == sanitize(SOLUTION, "solve")
    # a body cut mid-statement keeps the complete statements before the cut
    half = "def f(x):\n    y = x + 1\n    return (y *\n"
    assert sanitize(half, "f") == "def f(x):\n    y = x + 1\n"


def test_cut_inside_a_string_or_bracket():
    code = 'def f():\n    return 1\n\ndef g():\n    s = """unterminated\n    more'
    assert sanitize(code) == "def f():\n    return 1\n"
    assert sanitize("x = [1, 2,\n") == ""
    assert sanitize("") == ""


def test_first_definition_wins_and_decorators_stay():
    code = (
        "import functools\n"
        "@functools.lru_cache(maxsize=None)\n"
        "def fib(n):\n"
        "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
        "def fib(n):\n"
        "    return 0\n"
    )
    assert sanitize(code, "fib") == (
        "import functools\n"
        "@functools.lru_cache(maxsize=None)\n"
        "def fib(n):\n"
        "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
    )


def test_classes_and_tuple_assignments_are_dependencies():
    code = (
        "LOW, HIGH = 0, 10\n"
        "class Box:\n"
        "    def clamp(self, v):\n"
        "        return max(LOW, min(HIGH, v))\n"
        "def clamp(v):\n"
        "    return Box().clamp(v)\n"
        "OTHER = 5\n"
    )
    assert sanitize(code, "clamp") == code.replace("OTHER = 5\n", "")


def test_fenced_answers_are_extracted_first():
    answer = "Sure:\n```python\nimport os\ndef f():\n    return os.sep\nf()\n```\nDone."
    assert sanitize(answer, "f") == "import os\ndef f():\n    return os.sep\n"
    assert extract_code("```\ncode = 1\n```") == "code = 1\n"


def test_only_top_level_code_returns_the_parseable_prefix():
    assert sanitize("print(1)\nx.y = 2\n") == "print(1)\nx.y = 2\n"
