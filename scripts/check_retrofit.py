"""Check a retrofit on real prompts: max |HRM logits - source logits| over the MBPP validation prompts.

    python scripts/check_retrofit.py --source sources/smollm2-135m-instruct                 # identity split
    python scripts/check_retrofit.py --source SRC --l-layers 0:15 --h-layers 15:30 --L-cycles 2   # closed gates

Converts SRC in memory (nothing is written) as scripts/retrofit.py would, runs every MBPP validation prompt
(this project's native format, each prompt alone, no padding) through both models in float32 and prints the
largest absolute logit difference per prompt and over all of them. Exit status 1 when the conversion must equal
its source (every layer kept in order; one cycle each or closed gates) and the difference exceeds 1e-4.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from hrm_codegen.datasets.mbpp import build_prompt, load_mbpp, split_tasks
from hrm_codegen.pretrained_sources import SourceError, load_source
from hrm_codegen.retrofit import (
    IDENTITY_TOLERANCE,
    LayerSplit,
    RetrofitError,
    check_source,
    convert,
    default_split,
    max_logit_difference,
    parse_range,
    preserves_function,
)


def main(argv: list[str] | None = None) -> None:
    """Convert, compare on the validation prompts, print the table's summary line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", required=True, help="transformers directory, Hub id or .gguf file")
    parser.add_argument("--l-layers", help="source layers of the L stack, START:STOP (default: first half)")
    parser.add_argument("--h-layers", help="source layers of the H stack, START:STOP (default: second half)")
    parser.add_argument("--H-cycles", type=int, default=1, dest="h_cycles")
    parser.add_argument("--L-cycles", type=int, default=1, dest="l_cycles")
    parser.add_argument("--mbpp", default="data/mbpp/mbpp.jsonl", help="MBPP jsonl")
    parser.add_argument("--limit", type=int, help="only the first N validation prompts")
    args = parser.parse_args(argv)
    try:
        model, tokenizer, _ = load_source(args.source)
        layers = check_source(model).num_hidden_layers
        half = default_split(layers)
        l_range = parse_range(args.l_layers, "--l-layers") if args.l_layers else (half.l_start, half.l_stop)
        h_range = parse_range(args.h_layers, "--h-layers") if args.h_layers else (half.h_start, half.h_stop)
        split = LayerSplit(*l_range, *h_range, args.h_cycles, args.l_cycles)
        hrm, config = convert(model, split)
    except (SourceError, RetrofitError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    tasks = split_tasks(load_mbpp(args.mbpp), "validation")[: args.limit]
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    start, worst = time.perf_counter(), []
    for task in tasks:
        ids = torch.tensor([[bos, *tokenizer.encode(build_prompt(task), add_special_tokens=False)]])
        worst.append(max_logit_difference(hrm, model, ids))
    exact = preserves_function(config, split, layers)
    print(
        f"{len(tasks)} MBPP validation prompts, L = {l_range[0]}:{l_range[1]} x {split.L_cycles}, "
        f"H = {h_range[0]}:{h_range[1]} x {split.H_cycles}, gates {'on' if config.recurrence_gates else 'off'}: "
        f"max |logit difference| = {max(worst):.3g} (median per prompt {sorted(worst)[len(worst) // 2]:.3g}); "
        f"{time.perf_counter() - start:.0f} s"
    )
    if exact:
        verdict = "equal to the source" if max(worst) <= IDENTITY_TOLERANCE else "NOT equal to the source"
        print(f"function-preserving conversion: {verdict} (tolerance {IDENTITY_TOLERANCE})")
        if max(worst) > IDENTITY_TOLERANCE:
            sys.exit(1)


if __name__ == "__main__":
    main()
