"""Fetch (Hugging Face Hub) or copy (local file) MBPP, validate every task, and write data/mbpp/mbpp.jsonl."""

from __future__ import annotations

import argparse
import sys

from hrm_codegen.datasets.mbpp import DEFAULT_PATH, prepare_mbpp


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--source",
        required=True,
        help="'hub' to download google-research-datasets/mbpp (config 'full'), or a local MBPP jsonl file",
    )
    parser.add_argument(
        "--output", default=str(DEFAULT_PATH), help=f"where to write (default {DEFAULT_PATH})"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Validate and write MBPP; expected mistakes end with a one-line message and exit status 1."""
    args = parse_args(argv)
    try:
        count, changed = prepare_mbpp(args.source, args.output)
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    state = "wrote" if changed else "up to date:"
    print(f"{state} {args.output} ({count} MBPP tasks)")


if __name__ == "__main__":
    main()
