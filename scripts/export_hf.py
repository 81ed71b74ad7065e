"""Export a checkpoint as a directory that plain transformers loads (lm-evaluation-harness, bigcode-evaluation-harness).

    python scripts/export_hf.py --ckpt checkpoints/<run> --out exports/<run>        # latest step of a run
    python scripts/export_hf.py --ckpt checkpoints/<run>/step_200 --out DIR --force

An HRM checkpoint becomes its save_pretrained directory (config.json with auto_map, the package's model files as they
are, model.safetensors, tokenizer), loaded with
`AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` where hrm_codegen is not installed; the
export is loaded back and its logits checked against the checkpoint's (skip with --no-verify). A transformers
-family checkpoint (the Llama baseline) is copied from its step's hf/ directory.
"""

from __future__ import annotations

import argparse
import sys

from hrm_codegen.hf_export import ExportError, export_hf
from hrm_codegen.runs import CheckpointError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ckpt", required=True, help="a run directory (its latest step), a step directory or weights file"
    )
    parser.add_argument("--out", required=True, help="the directory to write (must be empty unless --force)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out, replacing files")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip loading the export back to compare logits"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Export; expected mistakes end with a one-line message and exit status 1."""
    args = parse_args(argv)
    try:
        result = export_hf(args.ckpt, args.out, force=args.force, verify=not args.no_verify)
    except (CheckpointError, ExportError, FileExistsError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    checked = (
        ""
        if result.max_abs_diff is None
        else f"; logits match the checkpoint (max |diff| {result.max_abs_diff:.2g})"
    )
    print(f"exported {result.family} {result.source} -> {result.out}{checked}")


if __name__ == "__main__":
    main()
