"""Quality of int8 weight quantization: MBPP validation loss and greedy agreement, with and without int8.

    python scripts/bench_quantization.py --checkpoint checkpoints/<run>            # a trained model, any family
    python scripts/bench_quantization.py --random-tiny --tokenizer ../shared/tokenizers/gpt2 \\
        --data ../shared/data/mbpp/mbpp.jsonl --limit 4                            # smoke run (what the test does)

Prints (and with --output writes as JSON): the validation loss (mean over target tokens) of the model and of
its `quantize_weights(model, METHOD)` copy and their relative change; and on the first --limit validation
prompts, greedy completions of both: the share of prompts whose completions are identical, and the mean
share of the reference completion's tokens before the first disagreement. Also the weight bytes of both.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hrm_codegen.datasets.batching import collate_batch, encode_prompt
from hrm_codegen.datasets.mbpp import MBPPDataset, build_prompt, load_mbpp, split_tasks
from hrm_codegen.families import GenerationRequest, get_family
from hrm_codegen.quantization import METHODS, quantize_weights, weight_bytes
from hrm_codegen.smoothing import DEFAULT_ALPHA
from hrm_codegen.tokenization import load_tokenizer

TINY = dict(
    seq_len=512, H_cycles=2, L_cycles=2, H_layers=1, L_layers=1, hidden_size=64, num_heads=4, expansion=2.0
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a step or run directory of this launcher")
    source.add_argument("--random-tiny", action="store_true", help="a randomly initialised tiny HRM")
    parser.add_argument("--tokenizer", default="gpt2", help="with --random-tiny")
    parser.add_argument("--data", default="data/mbpp/mbpp.jsonl")
    parser.add_argument("--method", default="int8", choices=METHODS)
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="int8_smooth's migration strength")
    parser.add_argument("--limit", type=int, default=90, help="validation tasks (the split has 90)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    return parser.parse_args(argv)


@torch.no_grad()
def validation_loss(
    family: Any, model: torch.nn.Module, dataset: MBPPDataset, pad_id: int, batch: int
) -> float:
    """Mean next-token cross-entropy over the target tokens of `dataset`."""
    total, count = 0.0, 0
    for start in range(0, len(dataset), batch):
        items = [dataset[i] for i in range(start, min(start + batch, len(dataset)))]
        data = collate_batch(items, pad_id)
        logits = family.lm_logits(model, data).float()
        labels = data["labels"]
        total += F.cross_entropy(
            logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"
        ).item()
        count += int((labels != -100).sum())
    return total / max(count, 1)


def greedy(
    family: Any, model: torch.nn.Module, prompts: list[list[int]], tokenizer: Any, args
) -> list[list[int]]:
    """Greedy completions of left-padded prompt batches."""
    request = GenerationRequest(
        max_new_tokens=args.new_tokens, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id
    )
    out: list[list[int]] = []
    for start in range(0, len(prompts), args.batch_size):
        chunk = prompts[start : start + args.batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([[tokenizer.pad_id] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        out += family.generate(model, ids, mask, request).completion_ids
    return out


def agreement(reference: list[list[int]], other: list[list[int]]) -> tuple[float, float]:
    """(share of identical completions, mean share of reference tokens before the first disagreement)."""
    same, prefix = 0, 0.0
    for ref, oth in zip(reference, other, strict=True):
        same += ref == oth
        common = next(
            (i for i, (a, b) in enumerate(zip(ref, oth, strict=False)) if a != b), min(len(ref), len(oth))
        )
        prefix += common / len(ref) if ref else float(not oth)
    return same / max(len(reference), 1), prefix / max(len(reference), 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure both models; returns the results."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        from hrm_codegen.inference import load_checkpoint

        loaded = load_checkpoint(args.checkpoint)
        model, tokenizer, family = loaded.model, loaded.tokenizer, loaded.family
    else:
        tokenizer = load_tokenizer(args.tokenizer)
        family = get_family("hrm")
        torch.manual_seed(0)
        model = family.build({**TINY, "vocab_size": tokenizer.vocab_size}).eval()
    seq_len = family.max_length(model) or 512
    rows = load_mbpp(args.data)
    dataset = MBPPDataset(rows, "validation", tokenizer, seq_len)
    dataset_limited = torch.utils.data.Subset(dataset, range(min(args.limit, len(dataset))))
    prompts = [
        encode_prompt(tokenizer, build_prompt(t)) for t in split_tasks(rows, "validation")[: args.limit]
    ]
    prompts = [p[-(seq_len - args.new_tokens) :] for p in prompts]

    quantized = quantize_weights(
        copy.deepcopy(model), args.method, tokenizer=tokenizer, smooth_alpha=args.alpha
    )
    results: dict[str, Any] = {
        "method": args.method,
        "smoothing": quantized.__dict__.get("smoothing"),
        "tasks": len(dataset_limited),
        "prompts": len(prompts),
    }
    completions = {}
    for name, net in (("fp32", model), (args.method, quantized)):
        start = time.perf_counter()
        loss = validation_loss(family, net, dataset_limited, tokenizer.pad_id, args.batch_size)  # type: ignore[arg-type]
        completions[name] = greedy(family, net, prompts, tokenizer, args)
        results[name] = {
            "val_loss": loss,
            "weight_bytes": weight_bytes(net),
            "seconds": time.perf_counter() - start,
        }
    base, quant = results["fp32"]["val_loss"], results[args.method]["val_loss"]
    results["val_loss_relative_change"] = (quant - base) / base
    results["greedy_identical"], results["greedy_prefix_agreement"] = agreement(
        completions["fp32"], completions[args.method]
    )
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    results = run(args)
    m = args.method
    print(f"| model | MBPP val loss ({results['tasks']} tasks) | weight MB |")
    print("|---|---|---|")
    for name in ("fp32", m):
        print(f"| {name} | {results[name]['val_loss']:.4f} | {results[name]['weight_bytes'] / 1e6:.1f} |")
    print(
        f"relative loss change {results['val_loss_relative_change']:+.3%}; greedy on {results['prompts']} "
        f"prompts: identical {results['greedy_identical']:.0%}, "
        f"prefix agreement {results['greedy_prefix_agreement']:.0%}"
    )
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
