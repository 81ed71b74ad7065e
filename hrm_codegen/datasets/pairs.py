"""(task text, code, asserts) pairs mined from Python source, and reading a pairs.jsonl.

From a module, every top-level function with a docstring is a candidate (parsed with `ast`, scopes read
with `symtable`, examples with `doctest.DocTestParser`):
- text: the docstring's summary (its first paragraph before any example) on one line, with reST/Sphinx
  inline markup (:func:`x`, ``x``, `x`, *x*, **x**, `x`_) reduced to its text;
- code: the function's source (decorators included) without its docstring, preceded by the module-level
  imports and constants (simple `NAME = value` assignments, resolved transitively) it uses;
- test_list: its doctest examples in order: `>>> expr` with an expected output that is a Python literal
  becomes `assert expr == literal`, `>>> print(x)` becomes `assert str(x) == 'output'`, an example
  without output stays as a statement (setup); examples expecting an exception or another output, and
  setup that rebinds the function's name, are left out.
A candidate is dropped (and the reason counted) when it has no docstring or summary, no body beyond the
docstring (a stub), uses a module-level name that is not an import or constant (or a relative import),
or has examples of which none becomes an assert calling the function (`non_literal_output`).
"""

from __future__ import annotations

import ast
import builtins
import doctest
import re
import symtable
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hrm_codegen.datasets.batching import EncodedDataset, encode_pairs
from hrm_codegen.datasets.mbpp import build_prompt, normalize_code
from hrm_codegen.jsonl import read_jsonl

if TYPE_CHECKING:
    from hrm_codegen.tokenization import CodeTokenizer

MODULE_NAMES = frozenset(dir(builtins)) | {"__name__"}
PAIR_FIELDS = {"task_id": str, "text": str, "code": str, "test_list": list, "source": str, "verified": bool}
_ROLE = re.compile(r"(?::[\w.-]+)+:`~?([^`<]*?)\s*(?:<[^>]*>)?`")  # :func:`x`, :py:meth:`~a.b`, :ref:`t <l>`
_LITERAL = re.compile(r"``(.+?)``")
_INTERPRETED = re.compile(r"`([^`]+?)`_{0,2}")
_EMPHASIS = re.compile(r"(?<![\w*])\*{1,2}(?=\S)([^*]+?)(?<=\S)\*{1,2}(?![\w*])")


# Expressions that need no parentheses on the left of `==` in an assert.
_ATOMS = (ast.Call, ast.Name, ast.Attribute, ast.Subscript, ast.Constant, ast.List, ast.Dict, ast.Set)


class PairsFormatError(ValueError):
    """A pairs.jsonl file or record does not have the expected format; the message starts with file:line."""


@dataclass
class Candidate:
    """One mined function: its name, task text, self-contained code and converted doctest lines."""

    name: str
    lineno: int
    text: str
    code: str
    test_list: list[str] = field(default_factory=list)
    modules: set[str] = field(default_factory=set)  # top-level modules the code imports


def clean_summary(text: str) -> str:
    """A docstring paragraph on one line, with reST/Sphinx inline markup reduced to its text."""
    text = _ROLE.sub(lambda m: m.group(1).split(".")[-1] if "~" in m.group(0) else m.group(1), text)
    text = _LITERAL.sub(r"\1", text)
    text = _INTERPRETED.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\1", text)
    text = " ".join(text.split())
    return text[:-1] if text.endswith("::") else text


def summary(docstring: str) -> str:
    """The first paragraph of a (cleaned) docstring before any doctest example, markup removed."""
    prose = doctest.DocTestParser().parse(docstring)[0]
    assert isinstance(prose, str)
    paragraph = re.split(r"\n\s*\n", prose.strip(), maxsplit=1)[0]
    return clean_summary(paragraph)


def _binds(tree: ast.AST, name: str) -> bool:
    """True when code (re)binds `name`: assignment, import, def or class."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id == name:
            return True
        if isinstance(node, ast.alias) and (node.asname or node.name.split(".")[0]) == name:
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
    return False


def example_line(example: doctest.Example, function: str) -> tuple[str | None, bool]:
    """A doctest example as a test line (None: left out) and whether it is an assert calling `function`."""
    source, want = example.source.strip(), example.want
    if example.options.get(doctest.SKIP) or example.exc_msg is not None:
        return None, False
    if not want:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            return None, False
        return (None if _binds(tree, function) else source), False
    try:
        expr = ast.parse(source, mode="eval").body
    except SyntaxError:
        return None, False
    calls = any(isinstance(n, ast.Name) and n.id == function for n in ast.walk(expr))
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "print":
        if len(expr.args) == 1 and not expr.keywords and not isinstance(expr.args[0], ast.Starred):
            return f"assert str({ast.get_source_segment(source, expr.args[0])}) == {want[:-1]!r}", calls
        return None, False
    if example.options.get(doctest.ELLIPSIS) and "..." in want:
        return None, False
    try:
        value = ast.literal_eval(want.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None, False
    operand = source if isinstance(expr, _ATOMS) else f"({source})"
    return f"assert {operand} == {value!r}", calls


def _is_constant(stmt: ast.stmt) -> bool:
    """True for `NAME = value` and `NAME: type = value` at module level."""
    if isinstance(stmt, ast.Assign):
        return len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
    return isinstance(stmt, ast.AnnAssign) and stmt.value is not None and isinstance(stmt.target, ast.Name)


class _Module:
    """A module's top-level bindings: which statement binds each name, and how to reproduce it."""

    def __init__(self, tree: ast.Module, source: str) -> None:
        self.source = source
        self.future = [s for s in tree.body if isinstance(s, ast.ImportFrom) and s.module == "__future__"]
        self.lazy_annotations = any(a.name == "annotations" for s in self.future for a in s.names)
        self.bindings: dict[str, list[tuple[ast.stmt, ast.alias | None]]] = {}
        for stmt in tree.body:
            for name, alias in self._bound(stmt):
                self.bindings.setdefault(name, []).append((stmt, alias))

    @staticmethod
    def _bound(stmt: ast.stmt):
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for alias in stmt.names:
                yield (alias.asname or alias.name.split(".")[0]), alias
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield stmt.name, None
        else:
            for node in ast.walk(stmt):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    yield node.id, None
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    yield node.name, None

    def _constant_names(self, stmt: ast.Assign | ast.AnnAssign) -> set[str]:
        """The names a module-level assignment's value (and evaluated annotation) reads from the module."""
        parts: list[ast.AST] = [stmt.value] if stmt.value is not None else []
        if isinstance(stmt, ast.AnnAssign) and not self.lazy_annotations:
            parts.append(stmt.annotation)
        loaded, local = set(), set()
        for node in (n for part in parts for n in ast.walk(part)):
            if isinstance(node, ast.Name):
                (local if isinstance(node.ctx, ast.Store) else loaded).add(node.id)
            elif isinstance(node, ast.arg):
                local.add(node.arg)
        return loaded - local

    def resolve(self, names: set[str]) -> tuple[list[str], set[str]] | None:
        """Source lines (in module order) providing `names`, and the modules imported; None if impossible."""
        needed: dict[int, tuple[ast.stmt, list[ast.alias]]] = {}
        pending = sorted(n for n in names if n not in MODULE_NAMES or n in self.bindings)  # shadowed builtins
        done: set[str] = set()
        while pending:
            name = pending.pop()
            if name in done:
                continue
            done.add(name)
            bound = self.bindings.get(name, [])
            if len(bound) != 1:
                return None
            stmt, alias = bound[0]
            if isinstance(stmt, ast.ImportFrom) and (stmt.level or alias is None or alias.name == "*"):
                return None
            if alias is not None:
                needed.setdefault(id(stmt), (stmt, []))[1].append(alias)
            elif _is_constant(stmt):
                assert isinstance(stmt, (ast.Assign, ast.AnnAssign))
                needed[id(stmt)] = (stmt, [])
                pending.extend(
                    n
                    for n in self._constant_names(stmt) - done
                    if n not in MODULE_NAMES or n in self.bindings
                )
            else:
                return None
        lines, modules = [], set()
        for stmt, used in sorted(needed.values(), key=lambda item: item[0].lineno):
            aliases = [a for a in getattr(stmt, "names", []) if any(a is u for u in used)]  # in source order
            if isinstance(stmt, ast.Import):
                lines.extend(ast.unparse(ast.Import(names=[a])) for a in aliases)
                modules.update(a.name.split(".")[0] for a in aliases)
            elif isinstance(stmt, ast.ImportFrom):
                lines.append(ast.unparse(ast.ImportFrom(module=stmt.module, names=aliases, level=0)))
                modules.add((stmt.module or "").split(".")[0])
            else:
                lines.append(ast.get_source_segment(self.source, stmt) or ast.unparse(stmt))
        return lines, modules


def _global_names(table: symtable.SymbolTable) -> set[str]:
    """Names a function's scope (and the scopes nested in it) read from the module or builtins."""
    names = {s.get_name() for s in table.get_symbols() if s.is_global() and s.is_referenced()}
    for child in table.get_children():
        names |= _global_names(child)
    return names


def _def_time_names(node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[set[str], set[str]]:
    """Names the module provides to the `def` statement: in decorators and defaults, and in annotations."""
    args = node.args
    parts: list[ast.AST] = [*node.decorator_list, *args.defaults, *(d for d in args.kw_defaults if d)]
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    notes = [a.annotation for a in every if a is not None and a.annotation is not None]
    notes += [node.returns] if node.returns is not None else []

    def names(nodes: list[ast.AST]) -> set[str]:
        return {n.id for part in nodes for n in ast.walk(part) if isinstance(n, ast.Name)}

    return names(parts), names(notes)


def _annotated(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """True when the signature has an annotation."""
    args = node.args
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    return node.returns is not None or any(a is not None and a.annotation is not None for a in every)


def _is_stub(body: list[ast.stmt]) -> bool:
    """True for an empty body, `pass`, `...` or `raise NotImplementedError`."""
    if len(body) != 1:
        return not body
    stmt = body[0]
    if isinstance(stmt, ast.Pass):
        return True
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and stmt.value.value is Ellipsis:
        return True
    return isinstance(stmt, ast.Raise) and "NotImplementedError" in ast.unparse(stmt)


def function_source(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> str:
    """The function's source with decorators and without its docstring (unparsed when they share a line)."""
    doc = node.body[0]
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    assert doc.end_lineno is not None and node.end_lineno is not None
    before, after = lines[doc.lineno - 1][: doc.col_offset], lines[doc.end_lineno - 1][doc.end_col_offset :]
    rest = after.strip()
    if before.strip() or (rest and not rest.startswith("#")):
        copy = ast.parse(ast.unparse(node)).body[0]
        assert isinstance(copy, (ast.FunctionDef, ast.AsyncFunctionDef))
        copy.body = copy.body[1:]
        return ast.unparse(copy) + "\n"
    kept = lines[start - 1 : doc.lineno - 1] + lines[doc.end_lineno : node.end_lineno]
    return "".join(line if line.endswith("\n") else line + "\n" for line in kept)


def extract_candidates(source: str, filename: str = "<module>") -> tuple[list[Candidate], Counter[str]]:
    """The candidate pairs of a module and the count of top-level functions dropped, by reason.

    Raises SyntaxError (or ValueError for null bytes) when the module does not parse.
    """
    tree = ast.parse(source, filename)
    module = _Module(tree, source)
    tables = [
        t for t in symtable.symtable(source, filename, "exec").get_children() if t.get_type() == "function"
    ]
    lines = source.splitlines(keepends=True)
    candidates: list[Candidate] = []
    dropped: Counter[str] = Counter()
    parser = doctest.DocTestParser()
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        docstring = ast.get_docstring(node, clean=True)
        if not docstring:
            dropped["no_docstring"] += 1
            continue
        if _is_stub(node.body[1:]):
            dropped["no_body"] += 1
            continue
        try:
            text = summary(docstring)
            examples = parser.get_examples(docstring, node.name)
        except ValueError:  # inconsistent doctest indentation or prompts
            dropped["bad_doctest"] += 1
            continue
        if not text:
            dropped["no_summary"] += 1
            continue
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        table = next(
            (t for t in tables if t.get_name() == node.name and first <= t.get_lineno() <= node.lineno), None
        )
        if table is None:
            dropped["not_self_contained"] += 1
            continue
        evaluated, annotations = _def_time_names(node)
        names = _global_names(table) | evaluated
        # Annotations are needed unless lazy (`from __future__ import annotations`); then only when available.
        resolved = module.resolve(names | annotations)
        if resolved is None and module.lazy_annotations:
            resolved = module.resolve(names)
        if resolved is None:
            dropped["not_self_contained"] += 1
            continue
        header, modules = resolved
        code = function_source(node, lines)
        if module.lazy_annotations and _annotated(node):
            header.insert(0, "from __future__ import annotations")
        if header:
            code = "\n".join(header) + "\n\n\n" + code
        test_list, calls = [], False
        for example in examples:
            line, calls_function = example_line(example, node.name)
            if line is not None:
                test_list.append(line)
                calls = calls or calls_function
        if examples and not calls:
            dropped["non_literal_output"] += 1
            continue
        candidates.append(
            Candidate(node.name, node.lineno, text, code, test_list if examples else [], modules)
        )
    return candidates, dropped


def validate_pair(row: object, where: str) -> dict:
    """Check one pairs.jsonl record's fields and types; return it."""
    if not isinstance(row, dict):
        raise PairsFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name, kind in PAIR_FIELDS.items():
        if name not in row:
            raise PairsFormatError(f"{where}: missing field {name!r}")
        if not isinstance(row[name], kind):
            raise PairsFormatError(f"{where}: field {name!r} must be {kind.__name__}, got {row[name]!r:.60}")
    if not all(isinstance(line, str) for line in row["test_list"]):
        raise PairsFormatError(f"{where}: field 'test_list' must hold strings only")
    if not row["text"].strip() or not row["code"].strip():
        raise PairsFormatError(f"{where}: empty 'text' or 'code'")
    if row["verified"] and not row["test_list"]:
        raise PairsFormatError(f"{where}: a verified pair needs a non-empty 'test_list'")
    return row


def load_pairs(path: str | Path, verified: bool | None = None) -> list[dict]:
    """Read and validate a pairs.jsonl (see `validate_pair`); `verified` keeps only those pairs.

    Raises PairsFormatError naming file:line on a bad row or a repeated task_id.
    """
    rows, first_line = [], {}
    for number, raw in read_jsonl(
        path, error=PairsFormatError, what="pairs file (build it with scripts/build_pairs.py)"
    ):
        where = f"{path}:{number}"
        row = validate_pair(raw, where)
        if row["task_id"] in first_line:
            raise PairsFormatError(
                f"{where}: duplicate task_id {row['task_id']!r} (first on line {first_line[row['task_id']]})"
            )
        first_line[row["task_id"]] = number
        if verified is None or row["verified"] == verified:
            rows.append(row)
    return rows


class PairsDataset(EncodedDataset):
    """Mined pairs for training (`data=pairs`) in MBPP's own prompt format (`mbpp.build_prompt`: the task text
    and its asserts; none for an unverified pair), loss on the code only; pairs over `seq_len` are dropped."""

    def __init__(self, rows: Sequence[dict], tokenizer: CodeTokenizer, seq_len: int) -> None:
        examples = [(build_prompt(row), normalize_code(row["code"])) for row in rows]
        encoded = encode_pairs(tokenizer, examples, seq_len, desc="encoding pairs")
        super().__init__(encoded["input_ids"], encoded["prompt_lengths"], len(encoded["dropped"]))
        self.task_ids = [rows[i]["task_id"] for i in encoded["kept"]]
