"""Retrofit a pretrained transformer into the HRM: write a step directory of family `hrm` from its layers.

    python scripts/retrofit.py --source sources/smollm2-135m-instruct --out checkpoints/retro_identity
    python scripts/retrofit.py --source SRC --out RUN_DIR --l-layers 0:15 --h-layers 15:30 --L-cycles 2
    python scripts/retrofit.py --source model.gguf --out RUN_DIR --l-layers 0:10 --h-layers 20:30 --L-cycles 2

SRC is a transformers directory, a Hub id or a .gguf file of a Llama-architecture causal LM (Llama, SmolLM2,
Mistral-style) or Qwen2. The L stack takes source layers A:B, the H stack C:D (default: the first and the second
half); layers in neither are dropped. Cycles beyond the first are gated (closed at the start) unless --no-gates.
RUN_DIR/step_0 then works wherever a run does: `scripts/evaluate.py --ckpt`, `train.init_from` (with
`experiment=retrofit_mbpp`), `scripts/export_hf.py`, `hrm_codegen.inference.load_checkpoint`.
"""

from __future__ import annotations

import argparse
import sys

from hrm_codegen.pretrained_sources import SourceError, load_source
from hrm_codegen.retrofit import LayerSplit, RetrofitError, check_source, default_split, parse_range, retrofit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", required=True, help="transformers directory, Hub id or .gguf file")
    parser.add_argument("--out", required=True, help="the run directory to write (new or empty)")
    parser.add_argument("--l-layers", help="source layers of the L stack, START:STOP (default: first half)")
    parser.add_argument("--h-layers", help="source layers of the H stack, START:STOP (default: second half)")
    parser.add_argument("--H-cycles", type=int, default=1, dest="h_cycles", help="H cycles (default 1)")
    parser.add_argument("--L-cycles", type=int, default=1, dest="l_cycles", help="L cycles (default 1)")
    parser.add_argument(
        "--no-gates", action="store_true", help="plain loops: no closed gates on the cycles beyond the first"
    )
    parser.add_argument("--seq-len", type=int, help="RoPE positions (default: the source's maximum)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Convert; expected mistakes end with a one-line message and exit status 1, writing nothing."""
    args = parse_args(argv)
    try:
        for key, value in (("--H-cycles", args.h_cycles), ("--L-cycles", args.l_cycles)):
            if value < 1:
                raise RetrofitError(f"{key} must be >= 1, got {value}")
        model, tokenizer, info = load_source(args.source)
        num_layers = check_source(model).num_hidden_layers
        split = default_split(num_layers, args.h_cycles, args.l_cycles)
        l_range = parse_range(args.l_layers, "--l-layers") if args.l_layers else (split.l_start, split.l_stop)
        h_range = parse_range(args.h_layers, "--h-layers") if args.h_layers else (split.h_start, split.h_stop)
        split = LayerSplit(*l_range, *h_range, args.h_cycles, args.l_cycles)
        split.check(num_layers)
        step_dir = retrofit(
            model, tokenizer, split, args.out, info, gates=not args.no_gates, seq_len=args.seq_len
        )
    except (SourceError, RetrofitError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {step_dir}: L = source layers {l_range[0]}:{l_range[1]} x {args.l_cycles} cycles, ", end="")
    print(f"H = {h_range[0]}:{h_range[1]} x {args.h_cycles}; {split.layer_evals} layer evaluations per token")


if __name__ == "__main__":
    main()
