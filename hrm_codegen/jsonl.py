"""The one JSON-lines reader: metrics.jsonl, samples.jsonl, MBPP and pairs files all read through it."""

from __future__ import annotations

from pathlib import Path


class JsonlError(ValueError):
    """A JSON-lines file has a bad line; the message names file:line."""


def read_jsonl(
    path: str | Path,
    *,
    error: type[ValueError] = JsonlError,
    blank_lines: bool = True,
    what: str = "JSON-lines file",
) -> list[tuple[int, dict]]:
    """(line number, object) for each line of a JSON-lines file.

    Every line must be a JSON object in UTF-8; a bad one raises `error` naming `file:line` and what is wrong.
    Blank lines are skipped, or refused with `blank_lines=False` (MBPP's stricter rule: one task a line, an
    empty file is an error too). A missing file raises FileNotFoundError naming `what`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist (or is not a file)")
    raw = path.read_bytes()
    if not blank_lines and not raw.strip():
        raise error(f"{path}:1: file is empty; expected one JSON object per line")
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    rows: list[tuple[int, dict]] = []
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise error(
                f"{where}: not valid UTF-8 (byte 0x{line[err.start]:02x} at column {err.start + 1})"
            ) from None
        if not text.strip():
            if blank_lines:
                continue
            raise error(f"{where}: blank line; expected one JSON object per line")
        try:
            row = json_loads(text)
        except ValueError as err:
            raise error(f"{where}: not valid JSON ({err})") from None
        if not isinstance(row, dict):
            raise error(f"{where}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    return rows


def json_loads(text: str) -> object:
    """json.loads with a short message: '<reason> at column N'."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{err.msg} at column {err.colno}") from None
