"""Build pairs.jsonl + manifest.json from corpus sources: mine, filter, verify by execution.

Per file: unreadable, licence (as in the corpus) and syntax_error drop the whole file. Per function (see
`pairs.extract_candidates`): no_docstring, no_body, bad_doctest, no_summary, not_self_contained,
non_literal_output, then too_large (code over `max_code_chars`), contaminated (the corpus's benchmark
index on text + code + tests), duplicate / near_duplicate (on the code, `dedup.DuplicateIndex`). A pair
with asserts then runs in the project's sandbox (code then test lines, `run_programs`): passing pairs are
kept with `verified: true`, the others dropped as failed or timed_out. Pairs without doctest examples are
kept with `verified: false` (text + code, for training only). The manifest counts every drop by reason,
overall and per source (a distribution, "stdlib", a local directory or a Hub dataset).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from hrm_codegen.datasets.corpus import ContaminationIndex, SourceFile, file_licence
from hrm_codegen.datasets.dedup import DuplicateIndex
from hrm_codegen.datasets.licences import LicenceIndex
from hrm_codegen.datasets.pairs import Candidate, extract_candidates
from hrm_codegen.execution import SandboxLimits, run_programs

PAIRS_FILE = "pairs.jsonl"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
FILE_DROPS = ("unreadable", "licence", "syntax_error")
FUNCTION_DROPS = (
    "no_docstring",
    "no_body",
    "bad_doctest",
    "no_summary",
    "not_self_contained",
    "non_literal_output",
    "too_large",
    "contaminated",
    "duplicate",
    "near_duplicate",
    "failed",
    "timed_out",
)


@dataclass
class PairFilters:
    """The filters and verification settings of a pair build."""

    index: ContaminationIndex | None = None
    licences: LicenceIndex | None = None
    dedup: DuplicateIndex = field(default_factory=DuplicateIndex)
    max_code_chars: int = 8000
    limits: SandboxLimits = field(default_factory=lambda: SandboxLimits(timeout_s=5.0))
    workers: int | None = None
    import_paths: list[str] = field(default_factory=list)  # added to sys.path of verification programs


@dataclass
class _Source:
    """Counts of one source."""

    verified: int = 0
    unverified: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


@dataclass
class _Pending:
    """A candidate that passed the static filters, waiting for verification (or kept unverified)."""

    record: dict[str, Any]
    group: str
    modules: set[str]


def module_label(name: str, root: str | None) -> str:
    """A file's dotted module name relative to its root (the name itself when outside it)."""
    if root:
        relative = os.path.relpath(name, root)
        name = name if relative.startswith("..") else relative
    stem = name[:-3] if name.endswith(".py") else name
    return stem.replace(os.sep, ".").removesuffix(".__init__")


def verification_program(record: dict[str, Any], modules: set[str], import_paths: list[str]) -> str:
    """The program the sandbox runs: the code, then the test lines; third-party imports get `import_paths`."""
    code = record["code"]
    future, rest = [], code.splitlines(keepends=True)
    while rest and rest[0].startswith("from __future__ import"):
        future.append(rest.pop(0))
    preamble = ""
    if import_paths and not modules <= sys.stdlib_module_names:
        preamble = f"import sys as _sys\n_sys.path.extend({import_paths!r})\n"
    return "".join(future) + preamble + "".join(rest) + "\n\n" + "\n".join(record["test_list"]) + "\n"


class PairBuilder:
    """Accumulates candidates from source files, then verifies and writes them (`finish`)."""

    def __init__(self, filters: PairFilters) -> None:
        self.filters = filters
        self.files: Counter[str] = Counter()
        self.files_dropped: Counter[str] = Counter()
        self.sources: dict[str, _Source] = {}
        self.licences_dropped: dict[str, dict[str, Any]] = {}
        self.contaminated: list[dict[str, str]] = []
        self.failures: Counter[str] = Counter()
        self.functions = 0
        self.pending: list[_Pending] = []
        self._ids: set[str] = set()

    def _drop(self, group: str, reason: str, count: int = 1) -> None:
        self.sources.setdefault(group, _Source()).dropped[reason] += count

    def add_file(self, source: SourceFile, label: str, root: str | None = None) -> None:
        """Mine one file; `label` names its source when no licence owner does, `root` its module names."""
        self.files["read"] += 1
        licence = file_licence(source, self.filters.licences)
        group = licence.owner if licence is not None else label
        if source.data is None:
            self.files_dropped["unreadable"] += 1
            return
        if licence is not None and not licence.permissive:
            self.files_dropped["licence"] += 1
            entry = self.licences_dropped.setdefault(
                licence.owner, {"licence": licence.name, "verdict": licence.verdict, "files": 0}
            )
            entry["files"] += 1
            return
        try:
            candidates, dropped = extract_candidates(source.data.decode("utf-8"), source.name)
        except UnicodeDecodeError:
            self.files_dropped["unreadable"] += 1
            return
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            self.files_dropped["syntax_error"] += 1
            return
        self.functions += len(candidates) + sum(dropped.values())
        for reason, count in dropped.items():
            self._drop(group, reason, count)
        module = module_label(source.name, root)
        for candidate in candidates:
            self._add_candidate(candidate, source.name, group, f"{group}:{module}.{candidate.name}")

    def _add_candidate(self, candidate: Candidate, name: str, group: str, task_id: str) -> None:
        if task_id in self._ids:
            task_id = f"{task_id}@{candidate.lineno}"
        self._ids.add(task_id)
        if len(candidate.code) > self.filters.max_code_chars:
            return self._drop(group, "too_large")
        if self.filters.index is not None:
            match = self.filters.index.match(
                "\n".join([candidate.text, candidate.code, *candidate.test_list])
            )
            if match is not None:
                self.contaminated.append({"task_id": task_id, "benchmark": match})
                return self._drop(group, "contaminated")
        duplicate = self.filters.dedup.add(task_id, candidate.code)
        if duplicate is not None:
            return self._drop(group, duplicate.kind)
        record = {
            "task_id": task_id,
            "text": candidate.text,
            "code": candidate.code,
            "test_list": candidate.test_list,
            "source": f"{name}:{candidate.lineno}",
            "verified": False,
        }
        self.pending.append(_Pending(record, group, candidate.modules))

    def verify(self, progress: bool = True) -> None:
        """Run every pending pair with asserts in the sandbox; mark the passing ones, drop the others."""
        tested = [p for p in self.pending if p.record["test_list"]]
        programs = [verification_program(p.record, p.modules, self.filters.import_paths) for p in tested]
        failed: set[int] = set()
        if programs:
            for index, result in run_programs(programs, self.filters.limits, self.filters.workers, progress):
                if result.passed:
                    tested[index].record["verified"] = True
                    continue
                failed.add(id(tested[index]))
                reason = "timed_out" if result.status == "timeout" else "failed"
                self._drop(tested[index].group, reason)
                self.failures[f"{result.status}: {result.detail}" if result.detail else result.status] += 1
        self.pending = [p for p in self.pending if id(p) not in failed]

    def write(self, out_dir: str | Path, sources: list[str], extra: dict[str, Any] | None = None) -> dict:
        """Write pairs.jsonl (verified pairs first) and manifest.json; return the manifest."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        ordered = sorted(self.pending, key=lambda p: not p.record["verified"])
        temporary = out_dir / f".{PAIRS_FILE}.tmp"
        with open(temporary, "w", encoding="utf-8") as out:
            for pending in ordered:
                out.write(json.dumps(pending.record, ensure_ascii=False) + "\n")
                counts = self.sources.setdefault(pending.group, _Source())
                if pending.record["verified"]:
                    counts.verified += 1
                else:
                    counts.unverified += 1
        os.replace(temporary, out_dir / PAIRS_FILE)
        dropped = Counter()
        for counts in self.sources.values():
            dropped.update(counts.dropped)
        manifest = {
            "format": MANIFEST_FORMAT,
            "sources": sources,
            "pairs": {
                "verified": sum(s.verified for s in self.sources.values()),
                "unverified": sum(s.unverified for s in self.sources.values()),
            },
            "files": {"read": self.files["read"], "dropped": {r: self.files_dropped[r] for r in FILE_DROPS}},
            "functions": self.functions,
            "dropped": {reason: dropped[reason] for reason in FUNCTION_DROPS},
            "by_source": {
                group: {"verified": s.verified, "unverified": s.unverified, "dropped": dict(s.dropped)}
                for group, s in sorted(self.sources.items())
            },
            "licences_dropped": self.licences_dropped,
            "contaminated": self.contaminated,
            "failures": dict(self.failures.most_common()),
            "settings": {
                "max_code_chars": self.filters.max_code_chars,
                "timeout_s": self.filters.limits.timeout_s,
                "memory_mb": self.filters.limits.memory_mb,
                "contamination_ngram": self.filters.index.ngram if self.filters.index else None,
                "licence_filter": self.filters.licences is not None,
                "dedup": self.filters.dedup.settings(),
            },
            **(extra or {}),
        }
        (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        return manifest


def build_pairs(
    files: Iterable[tuple[str, str | None, SourceFile]],
    out_dir: str | Path,
    filters: PairFilters | None = None,
    sources: list[str] | None = None,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict:
    """Mine, filter, verify and write the pairs of `files` ((label, root, file) triples); return the manifest."""
    builder = PairBuilder(filters or PairFilters())
    for label, root, source in tqdm(files, desc="mine files", unit="file", disable=not progress):
        builder.add_file(source, label, root)
    builder.verify(progress)
    return builder.write(out_dir, sources or [], extra)
