"""Build a pre-training corpus of Python code: filter, de-duplicate, decontaminate and tokenise into a memmap.

    python scripts/build_corpus.py --out data/corpus/pylib --python-lib --max-tokens 50000000
    python scripts/build_corpus.py --out data/corpus/mine --local path/to/src another/dir
    python scripts/build_corpus.py --out data/corpus/codeparrot --hub codeparrot/codeparrot-clean-valid
    python scripts/build_corpus.py --out data/corpus/permissive --requirements data/corpus_requirements.txt

Writes <out>/tokens.bin and <out>/manifest.json (see hrm_codegen/datasets/corpus.py). Files of installed
distributions are kept only under a permissive licence (their metadata; the standard library is PSF);
near duplicates are dropped with MinHash LSH. `--requirements FILE` pip-installs the listed projects
(without dependencies) into a throwaway virtual environment and reads their sources.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from hrm_codegen.datasets.corpus import (
    CorpusFilters,
    SourceFile,
    benchmark_index,
    build_corpus,
    python_files,
    read_hub_files,
    read_local_files,
)
from hrm_codegen.datasets.corpus_sources import install_requirements, licence_index, python_lib_dirs
from hrm_codegen.datasets.dedup import DuplicateIndex
from hrm_codegen.datasets.mbpp import DEFAULT_PATH
from hrm_codegen.tokenization import load_tokenizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--tokenizer", default="gpt2", help="tokenizer directory or Hub name (default gpt2)")
    p.add_argument(
        "--local", nargs="+", default=[], metavar="DIR", help="directories (or files) of .py files"
    )
    p.add_argument(
        "--python-lib",
        action="store_true",
        help="add this Python's standard library and site-packages directories",
    )
    p.add_argument(
        "--hub",
        default=None,
        metavar="NAME",
        help="a Hub dataset to stream, e.g. codeparrot/codeparrot-clean-valid",
    )
    p.add_argument(
        "--requirements",
        default=None,
        metavar="FILE",
        help="pip-install these projects (no dependencies) into a throwaway venv and read their sources",
    )
    p.add_argument("--hub-config", default=None)
    p.add_argument("--hub-split", default="train")
    p.add_argument("--hub-field", default="content", help="the field holding the code (default content)")
    p.add_argument(
        "--mbpp",
        default=str(DEFAULT_PATH),
        help=f"MBPP jsonl (or 'hub') whose test+validation tasks are decontaminated (default {DEFAULT_PATH})",
    )
    p.add_argument("--no-humaneval", action="store_true", help="do not decontaminate against HumanEval")
    p.add_argument("--ngram", type=int, default=10, help="words in a contamination n-gram (default 10)")
    p.add_argument("--min-bytes", type=int, default=64)
    p.add_argument("--max-bytes", type=int, default=1_000_000)
    p.add_argument("--max-tokens", type=int, default=None, help="stop once this many tokens are written")
    p.add_argument("--no-licence-filter", action="store_true", help="keep files whatever their licence")
    p.add_argument(
        "--near-dup-threshold",
        type=float,
        default=0.85,
        help="MinHash Jaccard similarity from which a file is a near duplicate (default 0.85; 0 disables)",
    )
    p.add_argument("--no-dropped-tokens", action="store_true", help="do not tokenise dropped files")
    args = p.parse_args(argv)
    args.stdlib = []
    if args.python_lib:
        stdlib, site_dirs = python_lib_dirs()
        args.local += [stdlib, *site_dirs]
        args.stdlib.append(stdlib)
    if not args.local and not args.hub and not args.requirements:
        p.error("give a source: --local DIR..., --python-lib, --requirements FILE or --hub NAME")
    return args


def main(argv: list[str] | None = None) -> None:
    """Build the corpus and print what was kept and dropped; expected mistakes exit with a one-line message."""
    args = parse_args(argv)
    start = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="corpus_venv_") as venv:
            roots, extra = list(args.local), {}
            if args.requirements:
                site = install_requirements(args.requirements, Path(venv) / "env")
                roots.append(str(site))
                extra["requirements"] = {"file": args.requirements, "installed": installed(site)}
            manifest = _build(args, roots, extra)
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    dropped = ", ".join(f"{reason} {count}" for reason, count in manifest["dropped"].items())
    print(
        f"wrote {args.out}: {manifest['num_files']} files, {manifest['num_tokens']} tokens "
        f"({manifest['dtype']}); dropped: {dropped} ({time.monotonic() - start:.0f} s)"
    )
    for stage in manifest["token_filters"] or []:
        print(f"  {stage['filter']:>15}: {stage['tokens_before']} -> {stage['tokens_after']} tokens")


def installed(site: Path) -> list[str]:
    """name==version of each distribution installed in a site directory."""
    import importlib.metadata

    return sorted(
        f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions(path=[str(site)])
    )


def _build(args: argparse.Namespace, roots: list[str], extra: dict) -> dict:
    """Read, filter and tokenise the sources; return the manifest."""
    paths = python_files(roots)
    tokenizer = load_tokenizer(args.tokenizer)
    index = benchmark_index(args.mbpp, humaneval=not args.no_humaneval, ngram=args.ngram)
    licences = None if args.no_licence_filter else licence_index(roots, args.stdlib)
    near = DuplicateIndex(args.near_dup_threshold) if args.near_dup_threshold > 0 else None
    files: list[Iterator[SourceFile]] = [read_local_files(paths)]
    if args.hub:
        files.append(read_hub_files(args.hub, args.hub_split, args.hub_field, args.hub_config))
    sources = [*roots, *([f"hub:{args.hub}[{args.hub_split}].{args.hub_field}"] if args.hub else [])]
    return build_corpus(
        (source for stream in files for source in stream),
        tokenizer,
        args.out,
        CorpusFilters(args.min_bytes, args.max_bytes, index, licences, near),
        sources=sources,
        max_tokens=args.max_tokens,
        total=None if args.hub else len(paths),
        count_dropped_tokens=not args.no_dropped_tokens,
        extra=extra,
    )


if __name__ == "__main__":
    main()
