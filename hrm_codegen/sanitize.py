"""Post-processing of generated code: the first fenced block of a chat answer, and an EvalPlus-style sanitizer.

`extract_code` takes the code out of a markdown answer. `sanitize` follows the idea of EvalPlus's
`evalplus/sanitize.py` (which uses tree-sitter and searches every line range) with the standard `ast`
module: keep the longest prefix of the code that parses (so a completion cut off mid-statement by the
token limit loses only its unfinished tail), then keep only its top-level imports and the definitions
(functions, classes, assignments) that the entry point needs, in their original order. Top-level calls,
prints, asserts and `if __name__ == "__main__":` blocks are dropped, as in EvalPlus.
"""

from __future__ import annotations

import ast
import re
import warnings
from collections.abc import Iterable

_FENCE = re.compile(r"^[ \t]*```[^\n]*$", re.MULTILINE)

_Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Assign | ast.AnnAssign


def _parses(code: str) -> bool:
    """True when `code` is valid Python syntax (never runs it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. invalid escape sequences: still valid syntax
            ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def extract_code(completion: str) -> str:
    """The code of a chat completion: the contents of its first fenced (```) block.

    The `chat` prompts end inside an opened ```python block (EvalPlus's response prefix), so a completion
    usually starts with code and ends at the closing fence, or has no fence at all when generation stopped
    there. Rule: text before the first fence line that parses as Python is that opened block's code;
    otherwise (prose first) the code is the contents of the first fenced block, up to its closing fence
    or the end of the text. Without any fence the whole completion is code.
    """
    text = completion.replace("\r\n", "\n")
    first = _FENCE.search(text)
    if first is None:
        return text
    before = text[: first.start()]
    if before.strip() and _parses(before):
        return before
    start = first.end() + 1  # the line after the opening fence
    closing = _FENCE.search(text, start)
    return text[start : closing.start()] if closing else text[start:]


def parseable_prefix(code: str) -> str:
    """The longest prefix of whole lines of `code` that parses ("" when none does)."""
    lines = code.replace("\r\n", "\n").split("\n")
    for end in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:end])
        if _parses(candidate):
            return candidate
    return ""


def _target_names(targets: Iterable[ast.expr]) -> list[str]:
    """Plain names bound by assignment targets (`a = ...`, `a, b = ...`); attributes and subscripts bind none."""
    names: list[str] = []
    for target in targets:
        if isinstance(target, ast.Name):
            names.append(target.id)
        elif isinstance(target, ast.Tuple | ast.List):
            names.extend(_target_names(target.elts))
    return names


def _defined_names(node: ast.stmt) -> list[str]:
    """Top-level names a definition statement binds (none for other statements)."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign):
        return _target_names(node.targets)
    if isinstance(node, ast.AnnAssign) and node.value is not None:
        return _target_names([node.target])
    return []


def _used_names(node: ast.AST) -> set[str]:
    """Every plain name a statement reads or writes (its dependencies on other top-level definitions)."""
    return {child.id for child in ast.walk(node) if isinstance(child, ast.Name)}


def _reachable(entry_point: str, uses: dict[str, set[str]]) -> set[str]:
    """Names reachable from `entry_point` through the definitions' name uses."""
    seen, queue = {entry_point}, [entry_point]
    while queue:
        for name in uses.get(queue.pop(), ()):
            if name not in seen:
                seen.add(name)
                queue.append(name)
    return seen


def sanitize(code: str, entry_point: str | None = None) -> str:
    """Code reduced to what the tests need: imports plus the definitions the entry point reaches.

    Markdown fences are removed first (`extract_code`), then the code is cut to its longest parseable
    prefix. Kept, in their original order: every top-level `import`/`from ... import`, and each function,
    class or assignment the first time its name is defined (later redefinitions are dropped, as EvalPlus
    does). With `entry_point`, only definitions reachable from it by name are kept; when the code does not
    define `entry_point`, every definition is kept. When nothing is kept, the parseable prefix is returned.
    """
    if "```" in code:
        code = extract_code(code)
    prefix = parseable_prefix(code)
    if not prefix.strip():
        return ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = ast.parse(prefix)
    lines = prefix.split("\n")
    kept: list[ast.stmt] = []
    definitions: list[tuple[list[str], ast.stmt]] = []
    bound: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            kept.append(node)
            continue
        names = _defined_names(node)
        if not names or any(name in bound for name in names):
            continue
        bound.update(names)
        definitions.append((names, node))
    if entry_point and entry_point in bound:
        uses: dict[str, set[str]] = {}
        for names, node in definitions:
            for name in names:
                uses.setdefault(name, set()).update(_used_names(node))
        needed = _reachable(entry_point, uses)
        definitions = [(names, node) for names, node in definitions if needed.intersection(names)]
    kept.extend(node for _, node in definitions)
    if not kept:
        return prefix.strip("\n") + "\n"
    kept.sort(key=lambda node: node.lineno)
    chunks = []
    for node in kept:
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        end = node.end_lineno or node.lineno
        chunks.append("\n".join(lines[first - 1 : end]))
    return "\n".join(chunks) + "\n"
