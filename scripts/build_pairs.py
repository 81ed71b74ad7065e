"""Mine (task text, code, asserts) pairs from Python sources, verify them by execution, write pairs.jsonl.

    python scripts/build_pairs.py --python-lib --out data/pairs/pylib
    python scripts/build_pairs.py path/to/src another/dir --out data/pairs/mine
    python scripts/build_pairs.py --hub codeparrot/codeparrot-clean-valid --hub-limit 20000 --out data/pairs/cp

Writes <out>/pairs.jsonl (MBPP's fields text, code, test_list, plus task_id, source and verified) and
<out>/manifest.json (counts by source and every drop by reason); see hrm_codegen/datasets/pairs_build.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Iterator

from hrm_codegen.datasets.corpus import (
    SourceFile,
    benchmark_index,
    python_files,
    read_hub_files,
    read_local_files,
)
from hrm_codegen.datasets.corpus_sources import licence_index, python_lib_dirs
from hrm_codegen.datasets.dedup import DuplicateIndex
from hrm_codegen.datasets.mbpp import DEFAULT_PATH
from hrm_codegen.datasets.pairs import load_pairs
from hrm_codegen.datasets.pairs_build import MANIFEST_FILE, PAIRS_FILE, PairFilters, build_pairs
from hrm_codegen.execution import SandboxLimits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="*", metavar="DIR", help="directories (or files) of .py files")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--python-lib", action="store_true", help="add the standard library and site-packages")
    p.add_argument("--hub", default=None, metavar="NAME", help="a Hub dataset to stream")
    p.add_argument("--hub-config", default=None)
    p.add_argument("--hub-split", default="train")
    p.add_argument("--hub-field", default="content")
    p.add_argument("--hub-limit", type=int, default=None, help="read at most this many Hub rows")
    p.add_argument(
        "--mbpp", default=str(DEFAULT_PATH), help=f"MBPP jsonl to decontaminate against ({DEFAULT_PATH})"
    )
    p.add_argument("--no-humaneval", action="store_true", help="do not decontaminate against HumanEval")
    p.add_argument("--ngram", type=int, default=10, help="words in a contamination n-gram (default 10)")
    p.add_argument("--no-licence-filter", action="store_true", help="keep files whatever their licence")
    p.add_argument("--near-dup-threshold", type=float, default=0.85, help="MinHash Jaccard threshold")
    p.add_argument("--max-code-chars", type=int, default=8000)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per verification program")
    p.add_argument("--workers", type=int, default=None, help="sandbox workers (default: the CPU count)")
    p.add_argument("--tokenizer", default=None, help="count the pairs' tokens with this tokenizer")
    args = p.parse_args(argv)
    if not args.dirs and not args.python_lib and not args.hub:
        p.error("give a source: DIR..., --python-lib or --hub NAME")
    return args


def local_files(root: str) -> Iterator[tuple[str, str | None, SourceFile]]:
    """(label, root, file) for each .py file under a directory (its label and root: the directory).

    The directory is listed at once, so that a missing one fails before any work."""
    paths = python_files([root])
    return ((root, root, source) for source in read_local_files(paths))


def count_tokens(path: str, tokenizer_name: str) -> dict[str, int]:
    """GPT-2 (or other) tokens of the pairs, as text + code + test lines, verified and unverified."""
    from hrm_codegen.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_name)
    counts = {"verified": 0, "unverified": 0}
    rows = load_pairs(path)
    for start in range(0, len(rows), 512):
        batch = rows[start : start + 512]
        texts = ["\n".join([row["text"], row["code"], *row["test_list"]]) for row in batch]
        encoded = tokenizer.hf(texts, add_special_tokens=False, verbose=False)["input_ids"]
        for row, ids in zip(batch, encoded, strict=True):
            counts["verified" if row["verified"] else "unverified"] += len(ids)
    return counts


def main(argv: list[str] | None = None) -> None:
    """Build the pairs and print the counts; expected mistakes exit with a one-line message."""
    args = parse_args(argv)
    start = time.monotonic()
    roots, stdlib_dirs = list(args.dirs), []
    if args.python_lib:
        stdlib, site_dirs = python_lib_dirs()
        roots += [stdlib, *site_dirs]
        stdlib_dirs.append(stdlib)
    try:
        streams: list[Iterator[tuple[str, str | None, SourceFile]]] = [local_files(root) for root in roots]
        if args.hub:
            rows = read_hub_files(args.hub, args.hub_split, args.hub_field, args.hub_config)
            streams.append((f"hub:{args.hub}", None, f) for f in itertools.islice(rows, args.hub_limit))
        licences = None if args.no_licence_filter else licence_index(roots, stdlib_dirs)
        filters = PairFilters(
            index=benchmark_index(args.mbpp, humaneval=not args.no_humaneval, ngram=args.ngram),
            licences=licences,
            dedup=DuplicateIndex(threshold=args.near_dup_threshold),
            max_code_chars=args.max_code_chars,
            limits=SandboxLimits(timeout_s=args.timeout),
            workers=args.workers,
            import_paths=sorted(str(d) for d in licences.site_dirs) if licences else [],
        )
        sources = [*roots, *([f"hub:{args.hub}[{args.hub_split}].{args.hub_field}"] if args.hub else [])]
        manifest = build_pairs(itertools.chain(*streams), args.out, filters, sources)
        if args.tokenizer:
            manifest["tokens"] = count_tokens(f"{args.out}/{PAIRS_FILE}", args.tokenizer)
        manifest["wall_s"] = round(time.monotonic() - start, 1)
        with open(f"{args.out}/{MANIFEST_FILE}", "w", encoding="utf-8") as out:
            out.write(json.dumps(manifest, indent=1) + "\n")
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    dropped = ", ".join(f"{reason} {count}" for reason, count in manifest["dropped"].items() if count)
    files = ", ".join(f"{reason} {count}" for reason, count in manifest["files"]["dropped"].items() if count)
    print(
        f"wrote {args.out}/{PAIRS_FILE}: {manifest['pairs']['verified']} verified, "
        f"{manifest['pairs']['unverified']} unverified pairs from {manifest['functions']} functions in "
        f"{manifest['files']['read']} files ({time.monotonic() - start:.0f} s)\n"
        f"dropped functions: {dropped or 'none'}\ndropped files: {files or 'none'}"
        + (f"\ntokens: {manifest['tokens']}" if "tokens" in manifest else "")
    )


if __name__ == "__main__":
    main()
