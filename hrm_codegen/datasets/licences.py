"""Licences of corpus files, read from the installed distributions' metadata (`importlib.metadata`).

A distribution's licence comes from its `License-Expression` (SPDX), else its `License ::` classifiers,
else its free-text `License` field (an SPDX expression, a name such as "BSD" or "Apache 2.0", or the
licence text itself). It is *permissive* only when every licence it names is (an SPDX `A OR B` counts as
both: conservative), *copyleft* when one of them is GPL-like (GPL, LGPL, AGPL, MPL, EPL, EUPL, CDDL, ...),
else *unknown*. Only permissive files enter a corpus.

`LicenceIndex` maps a file to its licence: a file listed in a distribution's RECORD (of any site directory
given) has that distribution's licence; another file inside a site directory is unknown; a file of the
standard library is PSF-2.0; any other file (a local source tree) is not checked (`None`).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from packaging.licenses import InvalidLicenseExpression, canonicalize_license_expression

VERDICTS = ("permissive", "copyleft", "unknown")
PERMISSIVE_SPDX = frozenset(
    [
        "MIT",
        "MIT-0",
        "MIT-CMU",
        "X11",
        "BSD-1-Clause",
        "BSD-2-Clause",
        "BSD-3-Clause",
        "BSD-3-Clause-Clear",
        "0BSD",
        "Apache-1.1",
        "Apache-2.0",
        "PSF-2.0",
        "Python-2.0",
        "Python-2.0.1",
        "CNRI-Python",
        "ISC",
        "Unlicense",
        "Zlib",
        "BSL-1.0",
        "CC0-1.0",
        "HPND",
        "NCSA",
        "UPL-1.0",
        "ZPL-2.1",
        "PostgreSQL",
        "WTFPL",
        "BlueOak-1.0.0",
    ]
)
COPYLEFT_SPDX = re.compile(r"^(A?GPL|LGPL|MPL|EPL|EUPL|CDDL|OSL|CPL|CECILL|SSPL|CC-BY-SA|RPL|QPL)\b", re.I)
_SPDX_OPERATORS = frozenset({"AND", "OR", "WITH"})
_SPDX_TOKEN = re.compile(r"[^\s()]+")
# Names and phrases of free-text licence fields and classifiers (lowercased); copyleft is checked first.
COPYLEFT_TEXT = re.compile(
    r"\b(a?gpl|lgpl|general public licen[cs]e|mozilla public|mpl|eclipse public|european union public"
    r"|eupl|common development and distribution|cddl)\b"
)
PERMISSIVE_TEXT = re.compile(
    r"\b(mit|bsd|apache|psf|python software foundation|isc|iscl|unlicense|zlib|public domain|cc0|hpnd"
    r"|historical permission notice|boost software|zope public|universal permissive|mit-cmu"
    r"|permission is hereby granted, free of charge|redistribution and use in source and binary forms)\b"
)


@dataclass(frozen=True)
class Licence:
    """A licence name as the metadata states it, its verdict (one of VERDICTS) and whose it is."""

    name: str
    verdict: str
    owner: str  # the distribution's name, or "stdlib"

    @property
    def permissive(self) -> bool:
        """True when the licence lets the file into the corpus."""
        return self.verdict == "permissive"


STDLIB = Licence("PSF-2.0", "permissive", "stdlib")


def spdx_verdict(expression: str) -> str | None:
    """The verdict for an SPDX licence expression, or None when it is not one."""
    try:
        canonical = canonicalize_license_expression(expression)
    except InvalidLicenseExpression:
        return None
    tokens = _SPDX_TOKEN.findall(canonical)
    names = [
        t for i, t in enumerate(tokens) if t not in _SPDX_OPERATORS and (i == 0 or tokens[i - 1] != "WITH")
    ]
    if any(COPYLEFT_SPDX.match(name) for name in names):
        return "copyleft"
    return "permissive" if names and all(name in PERMISSIVE_SPDX for name in names) else "unknown"


def text_verdict(text: str) -> str:
    """The verdict for a free-text licence name or licence text (copyleft wins over permissive)."""
    lowered = " ".join(text.lower().split())
    if COPYLEFT_TEXT.search(lowered):
        return "copyleft"
    return "permissive" if PERMISSIVE_TEXT.search(lowered) else "unknown"


def classify_licence(
    expression: str | None = None, classifiers: Iterable[str] = (), text: str | None = None, owner: str = ""
) -> Licence:
    """A distribution's licence from its License-Expression, else `License ::` classifiers, else License text."""
    if expression and expression.strip():
        return Licence(expression.strip(), spdx_verdict(expression) or text_verdict(expression), owner)
    named = [c.split("::")[-1].strip() for c in classifiers if c.startswith("License ::")]
    named = [name for name in named if name not in ("OSI Approved", "")]
    if named:
        verdicts = {text_verdict(name) for name in named}
        verdict = (
            "copyleft" if "copyleft" in verdicts else "unknown" if "unknown" in verdicts else "permissive"
        )
        return Licence(" AND ".join(named), verdict, owner)
    text = (text or "").strip()
    if not text or text.upper() in ("UNKNOWN", "NONE"):
        return Licence("", "unknown", owner)
    first_line = text.splitlines()[0].strip()[:80]
    return Licence(first_line, spdx_verdict(text) or text_verdict(text), owner)


def distribution_licence(dist: importlib.metadata.Distribution) -> Licence:
    """The licence a distribution's metadata declares (see `classify_licence`)."""
    meta = dist.metadata

    def first(field: str) -> str | None:
        values = meta.get_all(field)
        return str(values[0]) if values else None

    return classify_licence(
        first("License-Expression"),
        meta.get_all("Classifier") or [],
        first("License"),
        owner=first("Name") or "unnamed distribution",
    )


def find_site_dirs(roots: Iterable[str | Path]) -> list[Path]:
    """Directories under `roots` (the roots included) that hold installed distributions (`*.dist-info`)."""
    found: list[Path] = []
    for root in map(Path, roots):
        if not root.is_dir():
            continue
        for directory, subdirs, _ in os.walk(root):
            if any(name.endswith((".dist-info", ".egg-info")) for name in subdirs):
                found.append(Path(directory))
            subdirs[:] = sorted(
                d for d in subdirs if not d.endswith((".dist-info", ".egg-info", "__pycache__"))
            )
    return found


def _key(path: str | Path) -> str:
    return os.path.normcase(os.path.abspath(path))


class LicenceIndex:
    """File path -> Licence, from the distributions installed in `site_dirs` and the `stdlib_dirs`."""

    def __init__(self, site_dirs: Iterable[str | Path] = (), stdlib_dirs: Iterable[str | Path] = ()) -> None:
        self.site_dirs = [_key(d) for d in site_dirs]
        self.stdlib_dirs = [_key(d) for d in stdlib_dirs]
        self.files: dict[str, Licence] = {}
        self.distributions: dict[str, Licence] = {}
        for dist in importlib.metadata.distributions(path=self.site_dirs):
            licence = distribution_licence(dist)
            self.distributions.setdefault(licence.owner, licence)
            for file in dist.files or []:
                self.files.setdefault(_key(str(dist.locate_file(file))), licence)

    def licence_of(self, path: str | Path) -> Licence | None:
        """The licence of the file at `path`; None for a file outside every site and stdlib directory."""
        key = _key(path)
        if key in self.files:
            return self.files[key]
        inside = [d for d in [*self.site_dirs, *self.stdlib_dirs] if key.startswith(d + os.sep)]
        if not inside:
            return None
        deepest = max(inside, key=len)
        return Licence("", "unknown", "unlisted") if deepest in self.site_dirs else STDLIB
