"""Build a pre-training corpus of Python code: filter, de-duplicate, decontaminate and tokenise into a memmap.

    python scripts/build_corpus.py --out data/corpus/pylib --python-lib --max-tokens 50000000
    python scripts/build_corpus.py --out data/corpus/mine --local path/to/src another/dir
    python scripts/build_corpus.py --out data/corpus/codeparrot --hub codeparrot/codeparrot-clean-valid

Writes <out>/tokens.bin and <out>/manifest.json (see hrm_codegen/datasets/corpus.py).
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
from collections.abc import Iterator

from hrm_codegen.datasets.corpus import (
    CorpusFilters,
    SourceFile,
    benchmark_index,
    build_corpus,
    python_files,
    read_hub_files,
    read_local_files,
)
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
    args = p.parse_args(argv)
    if args.python_lib:
        paths = sysconfig.get_paths()
        args.local += sorted({paths["stdlib"], paths["purelib"]})
    if not args.local and not args.hub:
        p.error("give a source: --local DIR..., --python-lib or --hub NAME")
    return args


def main(argv: list[str] | None = None) -> None:
    """Build the corpus and print what was kept and dropped; expected mistakes exit with a one-line message."""
    args = parse_args(argv)
    try:
        paths = python_files(args.local)
        tokenizer = load_tokenizer(args.tokenizer)
        index = benchmark_index(args.mbpp, humaneval=not args.no_humaneval, ngram=args.ngram)
        files: list[Iterator[SourceFile]] = [read_local_files(paths)]
        if args.hub:
            files.append(read_hub_files(args.hub, args.hub_split, args.hub_field, args.hub_config))
        sources = [*args.local, *([f"hub:{args.hub}[{args.hub_split}].{args.hub_field}"] if args.hub else [])]
        manifest = build_corpus(
            (source for stream in files for source in stream),
            tokenizer,
            args.out,
            CorpusFilters(args.min_bytes, args.max_bytes, index),
            sources=sources,
            max_tokens=args.max_tokens,
            total=None if args.hub else len(paths),
        )
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    dropped = ", ".join(f"{reason} {count}" for reason, count in manifest["dropped"].items())
    print(
        f"wrote {args.out}: {manifest['num_files']} files, {manifest['num_tokens']} tokens "
        f"({manifest['dtype']}); dropped: {dropped}"
    )


if __name__ == "__main__":
    main()
